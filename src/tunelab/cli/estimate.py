"""`tunelab estimate CONFIG [key=value ...] [--json] [--ladder]`."""

from __future__ import annotations

import json

import typer

from .common import console, out, user_errors


def estimate_cmd(
    config: str = typer.Argument(..., help="YAML config, as for `tunelab train`."),
    overrides: list[str] = typer.Argument(None, help="Dotted overrides, e.g. train.batch_size=8"),
    as_json: bool = typer.Option(False, "--json", help="Print the estimate as JSON on stdout."),
    show_ladder: bool = typer.Option(False, "--ladder", help="Estimate every rung of the memory ladder, "
                                     "even when the run fits as configured."),
) -> None:
    """How much memory and time the run will take on this machine: a few real steps on your rows, scaled to the
    whole run (evaluations, scoring, probes and report included); when it would not fit, what would."""
    from ..config import load_config
    from ..plan.estimate import describe, duration, estimate, mib
    from ..plan.fit import ADVICE, climb

    with user_errors():
        cfg = load_config(config, overrides or [])
        with console.status("Rehearsing: a few real training steps on your rows..."):
            est = estimate(cfg)
        if show_ladder or not est.fits:
            est.ladder = climb(cfg, est, None if as_json else console, stop_at_fit=not show_ladder)
    if as_json:
        out.print_json(json.dumps(est.to_dict()))
        return
    for line in describe(est):
        console.print(line, highlight=False)
    for rung in est.ladder:
        console.print(f"  {'fits' if rung.fits else 'too big'}: {rung.change}: peak {mib(rung.peak_memory_mib)}, "
                      f"{duration(rung.total_seconds)} in all", highlight=False)
    if not est.fits:
        fitting = next((r for r in est.ladder if r.fits), None)
        console.print(f"With train.fit: auto (the default), training applies {fitting.change} by itself."
                      if fitting else f"Nothing tunelab can change makes it fit here. {ADVICE}", highlight=False)
