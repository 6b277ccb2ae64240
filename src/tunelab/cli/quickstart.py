"""`tunelab quickstart`."""

from __future__ import annotations

import typer

from .common import console, user_errors


def quickstart_cmd(
    rows: int = typer.Option(None, "--rows", help="Training rows (more: better and slower); default: as many "
                             "as end the quickstart within --minutes on this machine (up to 3000)."),
    minutes: float = typer.Option(15, "--minutes", help="Time the whole quickstart should take, setup included "
                                  "(when started by `make quickstart`)."),
    output_dir: str = typer.Option("runs", "--output-dir", help="Where the run directory goes."),
    eval_rows: int = typer.Option(300, "--eval-rows", help="Held-out messages scored before and after."),
) -> None:
    """Fine-tune the embedded default model on customer-support intents and show base vs tuned."""
    from ..quickstart import quickstart

    with user_errors():
        result = quickstart(rows, output_dir, console, eval_rows, minutes)
    if result.status != "completed":
        raise typer.Exit(130)
