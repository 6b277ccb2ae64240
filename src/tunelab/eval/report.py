"""`tunelab report RUN`: one self-contained HTML page (and its facts as JSON) for a run directory.

report_facts gathers the facts, this module draws the charts, report_html lays out the page.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .report_facts import Run, build, load_run, loss_points
from .report_html import render_html

# --- charts ----------------------------------------------------------------------------------------

def charts(run: Run, facts: dict[str, Any]) -> dict[str, bytes]:
    from . import plots

    out: dict[str, bytes] = {}
    train, evals = loss_points(run)
    if train or evals:
        out["loss_curve"] = plots.loss_curve(train, evals)
    data = facts.get("data") or {}
    if data.get("length_histogram"):
        out["length_histogram"] = plots.length_histogram(data["length_histogram"])
    pref = facts.get("preference") or {}
    if pref.get("panels"):
        out["preference_curves"] = plots.metric_panels(pref["panels"], pref.get("chance"))
    conf = facts.get("confusion")
    if conf:
        out["confusion_matrix"] = plots.confusion_matrix(conf["labels"], conf["matrix"])
    bias = (facts.get("probes") or {}).get("bias") or {}
    attrs = {a: e for a, e in (bias.get("attributes") or {}).items() if isinstance(e, dict)}
    if attrs:
        key, label, pct = (("flip_rate", "label flip rate", True) if bias.get("kind") == "classification"
                           else ("sentiment_gap", "reply sentiment gap", False))
        out["bias_chart"] = plots.base_vs_tuned_bars(
            list(attrs), [(e.get("base") or {}).get(key) for e in attrs.values()],
            [(e.get("tuned") or {}).get(key) for e in attrs.values()], label, percent=pct)
    return out


def _clean(x: Any) -> Any:
    """Non-finite floats become null so report.json is strict JSON."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    return x


def write_report(run_dir: str | Path) -> tuple[Path, Path]:
    """Write report.html (self-contained: inline CSS, charts as data URIs) and report.json into the run."""
    run = load_run(run_dir)
    facts = build(run)
    imgs = charts(run, facts)
    facts["charts"] = sorted(imgs)
    html_path, json_path = run.path / "report.html", run.path / "report.json"
    for path, text in ((html_path, render_html(facts, imgs)),
                       (json_path, json.dumps(_clean(facts), indent=2, default=str, allow_nan=False) + "\n")):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return html_path, json_path


def report_completed(result: Any, console: Any) -> None:
    """The report of a run that has just completed, written beside it; its path is printed."""
    if result.status != "completed":
        return
    try:
        html, _ = write_report(result.run_dir)
    except Exception as exc:  # the run itself is complete and saved: a report problem must not undo that
        console.print(f"[yellow]The report could not be written ({type(exc).__name__}: {exc}); the run is "
                      f"complete. Try again with `tunelab report {result.run_dir}`[/]")
        return
    console.print(f"Report: {html}")


__all__ = ["load_run", "report_completed", "write_report"]
