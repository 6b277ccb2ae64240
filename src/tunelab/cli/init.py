"""`tunelab init [DATAFILE]`: a config chosen from your data (or a commented starter for a task)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import typer

from .common import console, user_errors


def init_cmd(
    data: str = typer.Argument(None, help="Your training data: the config is chosen from it (task, method, "
                               "length, labels, validation split), with the reason for each choice."),
    task: str = typer.Option(None, "--task", help="Without a data file: a starter config for chat | "
                             "classification | completion."),
    out: Path = typer.Option(Path("tunelab.yaml"), "--out", "-o", help="Where to write the config."),
    model: str = typer.Option(None, "--model", help="Base model (default: the embedded one)."),
    estimate: bool = typer.Option(True, "--estimate/--no-estimate", help="Print the run's estimate (memory, "
                                  "time) measured on this machine."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
) -> None:
    """Write a config: chosen from a data file, or a starter for a task; edit it and go."""
    if data is None and task is None:
        task = "chat"
    if task is not None and task not in ("chat", "classification", "completion"):
        raise typer.BadParameter(f"--task {task!r}: choose chat, classification or completion")
    if out.exists() and not force:
        console.print(f"[red bold]error:[/] {out} exists; pass --force to overwrite it")
        raise typer.Exit(2)
    if data is None:
        out.write_text(resources.files("tunelab.config").joinpath("starters", f"{task}.yaml").read_text())
        console.print(f"Wrote {out}. Next: set data.train, then\n  tunelab data check <your data>\n"
                      f"  tunelab train {out}")
        return
    from ..config import load_config
    from ..plan import init

    with user_errors():
        s = init.suggest(data, model)
        init.write(s, out)
        load_config(out)  # what was written reads back as a valid config
    console.print(f"[bold]{data}[/]: {s.kind}, {s.rows} rows. Wrote {out}:", highlight=False)
    for c in s.choices:
        console.print(f"  {c.key} = {c.value!r}: {c.why}", highlight=False, markup=False)
    for note in s.notes:
        console.print(f"  [yellow]note:[/] {note}", highlight=False)
    if estimate:
        from ..plan.estimate import describe
        from ..plan.estimate import estimate as measure

        with user_errors(), console.status("Estimating: a few real training steps on your rows..."):
            lines = describe(measure(load_config(out)))
        for line in lines:
            console.print("  " + line, highlight=False)
    console.print(f"Next: tunelab train {out}")
