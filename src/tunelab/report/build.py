"""`tunelab report RUN`: one self-contained HTML page (and its facts as JSON, report.json) for a run directory.

One direction: the run's files (source) -> facts per kind of run (facts: supervised; preference: reward, DPO
and relatives, RL) -> build (this module: everything the page shows, and its charts) -> html. The report runs no
model and imports no training code: what it shows was stored when the run trained or was evaluated.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..runs import RunDir
from ..runs import layout as files
from ..version import __version__
from . import plots
from .curation import body as curation_body
from .curation import curation_facts
from .facts import (
    comparison,
    confusion,
    data_facts,
    examples,
    hint_eval,
    probe_facts,
    run_facts,
    task_metrics,
    verdict,
    weakest,
)
from .html import render_html
from .numbers import num
from .preference import preference_facts
from .source import Run, is_evaluation, load_run, source_of, task_level


def evaluations(run: Run, metrics: dict[str, Any], comp: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Every evaluation kept in the run, oldest first, after the run's own scores from training when the verdict
    is about those: what data, how many rows, tuned (and base) on its main metric, and the interval."""
    out = []
    if metrics["source"] and not is_evaluation(metrics["source"]) and comp is not None:
        out.append({"name": "training", "source": metrics["source"], "data": metrics.get("data"),
                    "task": "classification" if run.classification else run.task, "rows": comp.get("rows"),
                    "metric": comp["metric"], "tuned": comp["tuned"], "base": comp["base"], "ci95": comp.get("ci95"),
                    "headline": True})
    for name, ev in run.evaluations.items():
        model = ev.get("model") if isinstance(ev.get("model"), dict) else {}
        base = ev.get("base") if isinstance(ev.get("base"), dict) else {}
        comp = ev.get("comparison") if isinstance(ev.get("comparison"), dict) else {}
        metric = comp.get("metric") or next((m for m in ("accuracy", "numeric_accuracy", "token_f1", "loss")
                                             if num(model.get(m)) is not None), None)
        out.append({"name": name, "source": source_of(name), "data": ev.get("data"), "task": ev.get("task"),
                    "rows": ev.get("rows"), "metric": metric,
                    "tuned": num(model.get(metric)) if metric else None,
                    "base": num(base.get(metric)) if metric else None,
                    "ci95": comp.get("ci95"), "headline": name == run.eval_name})
    return out


def charts(run: Run, facts: dict[str, Any]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    train, evals = run.loss_points()
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
    cur = facts.get("curation")
    sections = {"curation": curation_body(cur, level=3) + (
        f'<p class="sub">The first of {cur["total_findings"]:,} findings; all of them are in {files.CURATION}.</p>')
                } if cur else {}
    return RunDir(run.path).write_report(render_html(facts, imgs, sections),
                                         json.dumps(_clean(facts), indent=2, default=str, allow_nan=False) + "\n")


def build(run: Run) -> dict[str, Any]:
    """Everything the page shows, as plain data (this is report.json)."""
    metrics = task_metrics(run)
    comp = comparison(run, metrics)
    train, evals = run.loss_points()
    status = run.summary.get("status")
    missing: dict[str, str] = {}
    hint = hint_eval(run)
    if not run.summary:
        missing["summary"] = (f"No {files.SUMMARY}: the run never started, or this is not a complete run "
                              "directory.")
    if run.data is None:
        missing["data"] = (f"No {files.DATA_REPORT} in this run. Check a data file on its own with "
                           "`tunelab data check FILE --model MODEL`.")
    if not train and not evals:
        missing["loss"] = (f"No losses logged ({files.METRICS} is missing or empty): the run stopped before its "
                           "first logged step. Train it with `tunelab train CONFIG` (or `--resume`).")
    elif not evals:
        missing["validation_loss"] = ("No validation loss was logged: give data.validation or data.val_fraction "
                                      "> 0, and train.eval_every to evaluate during training.")
    if not metrics["tuned"]:
        missing["metrics"] = f"No task metrics for this run. Run `{hint}` to score it on your data."
    elif not metrics["base"]:
        missing["base"] = f"The base model was not scored. Run `{hint}` to compare with it."
    off_task = [(n, ev) for n, ev in run.evaluations.items() if not task_level(True, ev.get("model") or {})]
    if run.classification and off_task and not is_evaluation(metrics["source"]):
        name, ev = off_task[-1]
        missing["eval_task"] = (f"{source_of(name)} has no accuracy (it scored {ev.get('data', 'its data')} as "
                                f"{ev.get('task', '?')!r} rows), so the scores here come from "
                                f"{metrics['source']}. If your file names its columns differently, map them: "
                                f"`{hint} --text-column TEXT --label-column LABEL`.")
    conf = confusion(run) if run.classification else None
    if run.classification and conf is None:
        missing["confusion"] = (f"No predictions to draw a confusion matrix from (no evaluation or "
                                f"{files.PREDICTIONS}). Run `{hint}`.")
    ex = examples(run)
    if ex is None:
        missing["examples"] = f"No example outputs (no evaluation or {files.PREDICTIONS}). Run `{hint}`."
    elif not any(r.get("base") is not None for r in ex["rows"]):
        missing["example_base"] = f"The examples have no base-model outputs. Run `{hint}` to add them."
    pref = preference_facts(run)
    if pref is not None:
        rl_examples = pref.pop("examples", None)
        if rl_examples:  # RL predictions: prompt, reference answer, tuned and base answers, each marked
            ex = {"source": files.PREDICTIONS, "rows": rl_examples}
            missing.pop("examples", None)
            if any(r.get("base") is not None for r in rl_examples):
                missing.pop("example_base", None)
        _preference_missing(pref, metrics, missing)
    probes = probe_facts(run)
    if probes is None and not (pref and pref["kind"] == "reward"):
        missing["probes"] = (f"No forgetting or bias probes for this run (no {files.PROBES}). Run "
                             f"`tunelab probe {run.path}` to measure them.")
    warnings = []
    if status != "completed":
        warnings.append(_status_warning(run, status))
    if run.unreadable:
        warnings.append("Some files could not be read and are left out: " + "; ".join(run.unreadable))
    tuned_m, base_m = metrics["tuned"], metrics["base"]
    return {
        "tunelab_version": __version__, "run": str(run.path), "name": run.summary.get("name") or run.path.name,
        "status": status or "unknown", "task": run.task, "classification": run.classification,
        "warnings": warnings, "caveat": (run.summary.get("domain") or {}).get("caveat"),
        "verdict": _with_probes(pref["verdict"] if pref and comp is None else verdict(run, comp, metrics), probes),
        "comparison": comp, "preference": pref,
        "facts": dict(run_facts(run)), "resolved": run.resolved, "data": data_facts(run),
        "curation": curation_facts(run.curation),
        "loss": {"train_points": len(train), "eval": [list(p) for p in evals],
                 "first_train_loss": train[0][1] if train else None, "last_train_loss": train[-1][1] if train else None,
                 "best_eval_loss": min(v for _, v in evals) if evals else None},
        "metrics": {"source": metrics["source"], "rows": metrics.get("rows"), "data": metrics.get("data"),
                    "skipped_rows": metrics.get("skipped_rows"),
                    "tuned": {k: v for k, v in tuned_m.items() if k != "per_class"},
                    "base": {k: v for k, v in base_m.items() if k != "per_class"},
                    "weakest_classes": weakest(tuned_m, base_m)},
        "evaluations": evaluations(run, metrics, comp),
        "confusion": conf, "examples": ex, "missing": missing, "probes": probes,
    }


def _preference_missing(pref: dict[str, Any], metrics: dict[str, Any], missing: dict[str, str]) -> None:
    """A preference run's own numbers stand in for task metrics; a reward model has no outputs to show."""
    if not metrics["tuned"]:
        missing.pop("metrics", None)
        missing.pop("base", None)
    if pref["kind"] == "reward":
        for key in ("examples", "example_base", "probes"):
            missing.pop(key, None)
    if pref["kind"] == "online_rl":  # scored on held-out prompts after training; there is no validation loss
        missing.pop("validation_loss", None)


def _with_probes(v: dict[str, Any], probes: dict[str, Any] | None) -> dict[str, Any]:
    if probes and probes["sentences"]:
        v["task_text"] = v["text"]
        v["text"] = v["text"] + " " + " ".join(probes["sentences"])
        v["probe_warnings"] = bool(probes["warnings"])
    return v


def _status_warning(run: Run, status: str | None) -> str:
    if status is None:
        return (f"This run has no {files.SUMMARY}, so its status is unknown: the numbers below may be "
                "incomplete.")
    what = f"This run is {status}, not completed: the numbers below are from an unfinished run"
    if status in ("running", "interrupted"):
        what += (" (if it is not still training, continue it with `tunelab train CONFIG --resume`, using the "
                 f"run's {files.CONFIG})")
    if run.summary.get("error"):
        what += f". Error: {run.summary['error']}"
    return what + "."
