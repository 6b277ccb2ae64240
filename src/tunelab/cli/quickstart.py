"""`tunelab quickstart`."""

from __future__ import annotations

import typer

from .common import console, user_errors


def quickstart_cmd(
    rows: int = typer.Option(3000, "--rows", help="Training rows (more: better and slower)."),
    output_dir: str = typer.Option("runs", "--output-dir", help="Where the run directory goes."),
    eval_rows: int = typer.Option(300, "--eval-rows", help="Held-out messages scored before and after."),
) -> None:
    """Fine-tune the embedded default model on customer-support intents and show base vs tuned."""
    from ..quickstart import quickstart

    with user_errors():
        result = quickstart(rows, output_dir, console, eval_rows)
    if result.status != "completed":
        raise typer.Exit(130)
