"""`tunelab sweep CONFIG [key=value ...]`."""

from __future__ import annotations

import typer

from .common import console, user_errors


def sweep_cmd(
    config: str = typer.Argument(..., help="YAML config, as for `tunelab train`; its sweep section sets the "
                                 "search space and budget."),
    overrides: list[str] = typer.Argument(None, help="Dotted overrides, e.g. sweep.trials=8 sweep.minutes=45"),
) -> None:
    """Search settings that train better than the defaults (optuna TPE, bad trials pruned). Each trial is a run
    under <output_dir>/<name>-sweep/; run the same command again to resume, or in several terminals to share it.
    Writes sweep.html and best.yaml there."""
    from ..config import load_config
    from ..plan.sweep import run_sweep

    with user_errors():
        cfg = load_config(config, overrides or [])
        try:
            run_sweep(cfg, console)
        except KeyboardInterrupt:
            console.print("[yellow]Sweep stopped; run the same command again to resume it[/]")
            raise typer.Exit(130) from None
