"""The sweep's page (sweep.html, self-contained like the run report) and sweep.json: every trial with its
settings, result and run; the optimisation history; which settings mattered; the best trial's report linked."""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

from .. import atomic
from ..config import TunelabConfig
from ..runs import RunDir


def trials_table(study: Any) -> list[dict[str, Any]]:
    out = []
    for t in study.get_trials(deepcopy=False):
        out.append({"number": t.number, "state": t.state.name.lower(), "value": t.value, "params": t.params,
                    "seconds": t.user_attrs.get("seconds"), "run_dir": t.user_attrs.get("run_dir"),
                    "evaluations": dict(sorted(t.intermediate_values.items()))})
    return out


def importances(study: Any) -> dict[str, float]:
    """Which settings explained the results (optuna's fANOVA), once enough trials have finished."""
    import optuna

    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(done) < 3:
        return {}
    try:
        return {k: round(float(v), 4) for k, v in optuna.importance.get_param_importances(study).items()}
    except (RuntimeError, ValueError, ZeroDivisionError):  # e.g. every trial with the same settings
        return {}


def _history_png(rows: list[dict[str, Any]], maximize: bool, metric: str) -> bytes | None:
    from matplotlib.figure import Figure

    from ..report.plots import BLUE, GREY, _png, _style

    done = [(r["number"], r["value"]) for r in rows if r["state"] == "complete" and r["value"] is not None]
    if not done:
        return None
    fig = Figure(figsize=(7.5, 3.4))
    ax = fig.add_subplot()
    _style(ax)
    xs, ys = zip(*done, strict=True)
    ax.scatter(xs, ys, color=GREY, label="trial", zorder=3)
    best, line = None, []
    for y in ys:
        best = y if best is None else (max(best, y) if maximize else min(best, y))
        line.append(best)
    ax.step(xs, line, where="post", color=BLUE, label="best so far")
    pruned = [r["number"] for r in rows if r["state"] == "pruned"]
    for x in pruned:
        ax.axvline(x, color="#fca5a5", linewidth=1, zorder=1)
    ax.set_xlabel("trial (red lines: pruned)")
    ax.set_ylabel(metric)
    ax.legend(frameon=False)
    return _png(fig)


def _importance_png(imp: dict[str, float]) -> bytes | None:
    from matplotlib.figure import Figure

    from ..report.plots import BLUE, _png, _style

    if not imp:
        return None
    fig = Figure(figsize=(7.5, 0.5 + 0.4 * len(imp)))
    ax = fig.add_subplot()
    _style(ax)
    names = list(imp)[::-1]
    ax.barh(names, [imp[n] for n in names], color=BLUE)
    ax.set_xlabel("importance (share of the variation in the result it explains)")
    return _png(fig)


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def write_sweep_report(cfg: TunelabConfig, study: Any, out_dir: Path) -> Path:
    """sweep.html and sweep.json in the sweep's directory."""
    from ..report.html import CSS, html_table, img_tag

    rows = trials_table(study)
    metric = study.user_attrs.get("objective", "value")
    maximize = study.user_attrs.get("direction") == "maximize"
    imp = importances(study)
    done = [r for r in rows if r["state"] == "complete" and r["value"] is not None]
    best = (max if maximize else min)(done, key=lambda r: r["value"]) if done else None
    facts = {"name": cfg.name, "metric": metric, "direction": study.user_attrs.get("direction"), "trials": rows,
             "importances": imp, "best": best, "space": study.user_attrs.get("space")}
    atomic.write_json(out_dir / "sweep.json", facts)

    def link(r: dict[str, Any]) -> str:
        if not r["run_dir"]:
            return ""
        page = RunDir(Path(r["run_dir"])).report_html
        return f'<a href="{html.escape(os.path.relpath(page, out_dir))}">report</a>' if page.is_file() else ""

    keys = sorted({k for r in rows for k in r["params"]})
    table = html_table([[str(r["number"]) + (" ★" if best and r["number"] == best["number"] else ""), r["state"],
                     _value(r["value"]) if r["value"] is not None else "–",
                     *[_value(r["params"].get(k, "–")) for k in keys],
                     f"{r['seconds']:.0f} s" if r["seconds"] else "–", link(r)] for r in rows],
                   ["trial", "state", html.escape(metric), *[html.escape(k) for k in keys], "time", "run"])
    parts = [f"<h1>Sweep: {html.escape(str(cfg.name))}</h1>",
             f'<div class="sub">{html.escape(str(out_dir))} · {len(rows)} trial(s) · '
             f"{'highest' if maximize else 'lowest'} {html.escape(metric)} wins</div>"]
    if best:
        settings = ", ".join(f"{html.escape(k)} = {_value(v)}" for k, v in best["params"].items())
        parts.append(f'<div class="verdict better">Best: trial {best["number"]}, {html.escape(metric)} '
                     f'{_value(best["value"])} with {settings}. {link(best)} · its settings as a config: '
                     "<code>best.yaml</code></div>")
    else:
        parts.append('<div class="verdict unclear">No trial has finished yet.</div>')
    hist = _history_png(rows, maximize, metric)
    if hist:
        parts += ["<h2>Optimisation history</h2>", img_tag(hist, "result of each trial, and the best so far")]
    parts.append("<h2>Trials</h2>" + table)
    imp_png = _importance_png(imp)
    parts.append("<h2>Which settings mattered</h2>")
    parts.append(img_tag(imp_png, "parameter importances") if imp_png else
                 '<p class="note">Shown once three trials have finished with different settings.</p>')
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" "
            f"content=\"width=device-width,initial-scale=1\"><title>tunelab sweep: {html.escape(str(cfg.name))}"
            f"</title><style>{CSS}</style></head><body><main>\n" + "\n".join(parts) + "\n</main></body></html>\n")
    path = out_dir / "sweep.html"
    atomic.write_text(path, page)
    return path


def load_facts(path: Path) -> dict[str, Any]:
    return json.loads((path / "sweep.json").read_text())
