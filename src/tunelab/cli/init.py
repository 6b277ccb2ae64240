"""`tunelab init`: write a commented starter config."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import typer

from .common import console


def init_cmd(
    task: str = typer.Option("chat", "--task", help="chat | classification | completion"),
    out: Path = typer.Option(Path("tunelab.yaml"), "--out", "-o", help="Where to write the config."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
) -> None:
    """Write a starter config for a task; edit data.train and go."""
    if task not in ("chat", "classification", "completion"):
        raise typer.BadParameter(f"--task {task!r}: choose chat, classification or completion")
    if out.exists() and not force:
        console.print(f"[red bold]error:[/] {out} exists; pass --force to overwrite it")
        raise typer.Exit(2)
    text = resources.files("tunelab.config").joinpath("starters", f"{task}.yaml").read_text()
    out.write_text(text)
    console.print(f"Wrote {out}. Next: set data.train, then\n  tunelab data check <your data>\n"
                  f"  tunelab train {out}")
