"""`tunelab status RUN [--follow] [--json]`: a run's status, progress and events, read from its directory alone
(from any process, while it trains or after)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from .common import console, out, run_path, user_errors


def _line(o: object) -> str:
    from ..runs import Observation

    assert isinstance(o, Observation)
    parts = [f"[bold]{o.status or 'not started'}[/]"]
    if o.status == "running" and o.alive is False:
        parts.append("[red](its process is gone: continue it with --resume)[/]")
    if o.phase:
        parts.append(f"phase {o.phase}")
    if o.step is not None and o.total_steps:
        parts.append(f"step {o.step}/{o.total_steps}")
    elif o.done is not None and o.total:
        parts.append(f"{o.done}/{o.total}")
    if o.loss is not None:
        parts.append(f"loss {o.loss:.4f}")
    if o.eval_loss is not None:
        parts.append(f"val {o.eval_loss:.4f}")
    if o.tokens_per_s:
        parts.append(f"{o.tokens_per_s:.0f} tok/s")
    if o.eta_seconds is not None and o.status == "running":
        parts.append(f"ETA {o.eta_seconds / 60:.1f} min")
    if o.error:
        parts.append(f"[red]{o.error}[/]")
    return "  ".join(parts)


def _event(e: dict[str, object]) -> str:
    when = time.strftime("%H:%M:%S", time.localtime(float(e.get("created") or 0)))  # type: ignore[arg-type]
    colour = {"warn": "yellow", "error": "red"}.get(str(e.get("level")), "dim")
    return f"[{colour}]{when}[/] {e.get('message')}"


def status_cmd(
    run: Path = typer.Argument(..., help="Run directory, e.g. runs/my-run (or a run name under ./runs)."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep watching until the run ends."),
    as_json: bool = typer.Option(False, "--json", help="Print the status, progress and events as JSON."),
    events: int = typer.Option(10, "--events", help="How many of the latest events to show."),
) -> None:
    """Status, progress (step, loss, ETA) and events of a run, as another process sees it."""
    from ..runs import RunDir, RunDirError, observe

    with user_errors():
        rd = RunDir(run_path(run))
        if not rd.looks_like_run():
            raise RunDirError(f"{run}: not a tunelab run directory (give the folder `tunelab train` writes)")
        seen = observe(rd)
    if as_json:
        out.print_json(json.dumps(seen.to_dict()))
        return
    for e in seen.events[-events:]:
        console.print(_event(e), highlight=False)
    shown = _line(seen)
    console.print(shown, highlight=False)
    last = int(seen.events[-1]["id"]) if seen.events else 0
    while follow and seen.status == "running" and seen.alive is not False:
        time.sleep(1.0)
        seen = observe(rd, events_after=last)
        for e in seen.events:
            console.print(_event(e), highlight=False)
            last = int(e["id"])
        if _line(seen) != shown:  # only what changed: a line per step at most
            shown = _line(seen)
            console.print(shown, highlight=False)
    if seen.status in ("failed",) or (seen.status == "running" and seen.alive is False):
        raise typer.Exit(1)
