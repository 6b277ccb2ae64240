"""The facts of a run's report, as plain data (report.json).

Reads what training and `tunelab eval` / `tunelab probe` left in runs/<name>/ (summary.json, config.yaml,
resolved.json, data_report.json, metrics.jsonl, predictions.json, eval.json, probes.json); every file is
optional, and a missing one turns into a note that says how to get it. Reads top to bottom: load -> facts.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..training.rundir import RunDirError
from .metrics import bootstrap_diff, classification_metrics

RUN_FILES = ("summary.json", "config.yaml", "metrics.jsonl", "resolved.json", "data_report.json", "probes.json")
LOWER_IS_BETTER = {"loss", "perplexity", "eval_loss"}
METRIC_ORDER = ("accuracy", "macro_f1", "exact_match", "numeric_accuracy", "token_f1", "rouge_l", "chrf", "bleu",
                "loss", "perplexity")
METRIC_NAMES = {"accuracy": "accuracy", "macro_f1": "macro F1", "exact_match": "exact match",
                "numeric_accuracy": "numeric accuracy", "token_f1": "token F1", "rouge_l": "ROUGE-L",
                "chrf": "chrF", "bleu": "BLEU", "loss": "loss", "perplexity": "perplexity",
                "eval_loss": "validation loss", "train_loss": "training loss"}
MAX_EXAMPLES = 12


# --- loading ---------------------------------------------------------------------------------------

@dataclass
class Run:
    path: Path
    summary: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    resolved: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] | None = None
    metrics: list[dict[str, Any]] | None = None
    predictions: list[dict[str, Any]] | None = None
    eval: dict[str, Any] | None = None
    probes: dict[str, Any] | None = None
    unreadable: list[str] = field(default_factory=list)

    @property
    def task(self) -> str:
        return str(self.summary.get("task") or self.config.get("task") or (self.eval or {}).get("task") or "chat")

    @property
    def classification(self) -> bool:
        return "classification" in (self.task, (self.eval or {}).get("task"))


def _read(path: Path, unreadable: list[str]) -> Any:
    if not path.is_file():
        return None
    try:
        if path.suffix == ".jsonl":  # a line cut short by a killed process costs that line only
            rows, bad = [], 0
            for ln in path.read_text().splitlines():
                if not ln.strip():
                    continue
                try:
                    rows.append(json.loads(ln))
                except ValueError:
                    bad += 1
            if bad:
                unreadable.append(f"{path.name}: {bad} damaged line(s) skipped")
            return rows
        if path.suffix in (".yaml", ".yml"):
            import yaml

            return yaml.safe_load(path.read_text())
        return json.loads(path.read_text())
    except Exception as exc:  # a damaged file (bad JSON or YAML, unreadable) must not stop the report
        unreadable.append(f"{path.name}: {type(exc).__name__}: {exc}")
        return None


def load_run(run_dir: str | Path) -> Run:
    path = Path(run_dir)
    if not path.is_dir():
        raise RunDirError(f"{path}: no such run directory (give the run's folder, e.g. runs/<name>)")
    if not any((path / f).is_file() for f in RUN_FILES + ("eval.json", "predictions.json")):
        raise RunDirError(f"{path} is not a tunelab run directory: it has no summary.json, config.yaml or "
                          "metrics.jsonl (give the folder `tunelab train` wrote, e.g. runs/<name>)")
    run = Run(path)
    bad = run.unreadable

    def dict_or_none(name: str) -> dict[str, Any] | None:
        got = _read(path / name, bad)
        if got is not None and not isinstance(got, dict):
            bad.append(f"{name}: expected a JSON object")
            return None
        return got

    def list_or_none(name: str) -> list[dict[str, Any]] | None:
        got = _read(path / name, bad)
        if got is not None and not (isinstance(got, list) and all(isinstance(x, dict) for x in got)):
            bad.append(f"{name}: expected a list of objects")
            return None
        return got

    run.summary = dict_or_none("summary.json") or {}
    run.config = dict_or_none("config.yaml") or {}
    run.resolved = dict_or_none("resolved.json") or {}
    run.data = dict_or_none("data_report.json")
    run.metrics = list_or_none("metrics.jsonl")
    run.predictions = list_or_none("predictions.json")
    run.eval = dict_or_none("eval.json")
    run.probes = dict_or_none("probes.json")
    return run


# --- numbers ---------------------------------------------------------------------------------------

def num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    return float(x) if math.isfinite(x) else None


def is_share(metric: str, *values: float | None) -> bool:
    """Accuracy-like metrics in [0, 1] are shown as percentages and their differences as points."""
    vals = [v for v in values if v is not None]
    return metric not in LOWER_IS_BETTER | {"chrf", "bleu"} and bool(vals) and all(0.0 <= v <= 1.0 for v in vals)


def fmt_value(metric: str, v: float | None, share: bool, digits: int = 0) -> str:
    if v is None:
        return "–"
    if share:
        return f"{v * 100:.{digits}f}%"
    return f"{v:.4g}" if metric in LOWER_IS_BETTER or abs(v) < 100 else f"{v:,.0f}"


def fmt_diff(d: float, share: bool, digits: int = 0) -> str:
    sign = "+" if d > 0 else "−" if d < 0 else ""
    if share:
        return f"{sign}{abs(d) * 100:.{digits}f}"
    return f"{sign}{abs(d):.3g}"


def _digits(*vals: float | None) -> int:
    """Whole percentages unless that would hide a difference smaller than one point."""
    xs = [v for v in vals if v is not None]
    return 1 if any(0 < abs(a - b) < 0.02 for a in xs for b in xs) else 0


def paired_bootstrap(tuned: list[bool], base: list[bool]) -> tuple[float, float]:
    """95% interval of accuracy(tuned) - accuracy(base) over resampled rows (the same rows for both)."""
    _, lo, hi = bootstrap_diff([float(x) for x in tuned], [float(x) for x in base])
    return lo, hi


# --- facts -----------------------------------------------------------------------------------------

def _hint_eval(run: Run) -> str:
    return f"tunelab eval {run.path} --data FILE --compare-base"


def _primary(run: Run, model: dict[str, Any]) -> str | None:
    if run.classification and num(model.get("accuracy")) is not None:
        return "accuracy"
    return next((m for m in METRIC_ORDER if num(model.get(m)) is not None), None)


def _prediction_scores(preds: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Accuracy, macro F1 and per-class scores of the tuned (and base) predictions."""
    gold = [str(p.get("label")) for p in preds]
    labels = sorted(set(gold))
    out: dict[str, dict[str, Any]] = {}
    for who, key in (("tuned", "predicted"), ("base", "base_predicted")):
        if not preds or not all(key in p for p in preds):
            continue
        scores = classification_metrics(gold, [str(p[key]) for p in preds], labels)
        scores.pop("confusion")
        out[who] = scores
    return out


def _task_level(run: Run, model: dict[str, Any]) -> bool:
    """Whether metrics say how well the task is done (accuracy, F1...), not only loss and perplexity."""
    if run.classification:
        return num(model.get("accuracy")) is not None
    return any(num(v) is not None for k, v in model.items() if k not in LOWER_IS_BETTER)


def task_metrics(run: Run) -> dict[str, Any]:
    """Tuned and base metrics from the first of eval.json, predictions.json, summary.json that scores the task;
    eval.json's loss alone gives way to a classification run's own accuracy."""
    ev, s = run.eval or {}, run.summary
    found: list[dict[str, Any]] = []
    if isinstance(ev.get("model"), dict) and ev["model"]:
        base = ev.get("base") if isinstance(ev.get("base"), dict) else {}
        skipped = ev.get("skipped_rows")
        found.append({"source": "eval.json", "rows": ev.get("rows"), "data": ev.get("data"), "tuned": ev["model"],
                      "base": base, "skipped_rows": len(skipped) if isinstance(skipped, list) else skipped})
        if _task_level(run, ev["model"]):
            return found[0]
    base_acc = {"accuracy": s["base_accuracy"]} if num(s.get("base_accuracy")) is not None else {}
    if run.classification and run.predictions:
        scores = _prediction_scores(run.predictions)
        if "tuned" in scores:  # a resumed run keeps its first base accuracy but has no base predictions
            return {"source": "predictions.json", "rows": len(run.predictions), "data": "the validation split",
                    "tuned": scores["tuned"], "base": scores.get("base") or base_acc}
    if num(s.get("tuned_accuracy")) is not None:
        return {"source": "summary.json", "rows": s.get("eval_rows"), "data": "the validation split",
                "tuned": {"accuracy": s["tuned_accuracy"]}, "base": base_acc}
    return found[0] if found else {"source": None, "tuned": {}, "base": {}}


def comparison(run: Run, metrics: dict[str, Any]) -> dict[str, Any] | None:
    """The one tuned-vs-base number the verdict is about, with its interval where one can be had."""
    ev = run.eval or {}
    comp = ev.get("comparison") if metrics.get("source") == "eval.json" else None
    if isinstance(comp, dict) and num(comp.get("tuned")) is not None and num(comp.get("base")) is not None:
        t, b = float(comp["tuned"]), float(comp["base"])
        d = num(comp.get("diff"))
        ci = comp.get("ci95")
        ci = [float(x) for x in ci] if isinstance(ci, list | tuple) and len(ci) == 2 and all(
            num(x) is not None for x in ci) else None
        return {"metric": str(comp.get("metric") or "accuracy"), "tuned": t, "base": b,
                "diff": d if d is not None else t - b, "ci95": ci, "rows": ev.get("rows"),
                "wins": comp.get("wins"), "losses": comp.get("losses"), "ties": comp.get("ties"),
                "source": "eval.json", "method": "bootstrap by tunelab eval"}
    tuned, base = metrics.get("tuned") or {}, metrics.get("base") or {}
    metric = _primary(run, tuned)
    if metric is None or num(base.get(metric)) is None:
        return None
    t, b = float(tuned[metric]), float(base[metric])
    out: dict[str, Any] = {"metric": metric, "tuned": t, "base": b, "diff": t - b, "ci95": None,
                           "rows": metrics.get("rows"), "source": metrics["source"]}
    preds = run.predictions or []
    if metric == "accuracy" and run.classification and preds and all("base_predicted" in p for p in preds):
        right_t = [p.get("predicted") == p.get("label") for p in preds]
        right_b = [p.get("base_predicted") == p.get("label") for p in preds]
        out.update(wins=sum(a and not b for a, b in zip(right_t, right_b, strict=True)),
                   losses=sum(b and not a for a, b in zip(right_t, right_b, strict=True)),
                   ties=sum(a == b for a, b in zip(right_t, right_b, strict=True)),
                   ci95=list(paired_bootstrap(right_t, right_b)), method="paired bootstrap over the scored rows",
                   rows=len(preds))
        if out["source"] != "predictions.json":  # summary and predictions score the same rows; keep one source
            acc_t, acc_b = sum(right_t) / len(preds), sum(right_b) / len(preds)
            out.update(tuned=acc_t, base=acc_b, diff=acc_t - acc_b, source="predictions.json")
    return out


def verdict(run: Run, comp: dict[str, Any] | None, metrics: dict[str, Any]) -> dict[str, Any]:
    """A sentence a person can act on: better, worse, no clear difference, or what is missing."""
    hint = _hint_eval(run)
    if comp is None:
        tuned = metrics.get("tuned") or {}
        metric = _primary(run, tuned)
        if metric is not None:
            v = float(tuned[metric])
            share = is_share(metric, v)
            rows = f" on {metrics['rows']} rows" if metrics.get("rows") else ""
            return {"kind": "no_comparison", "metric": metric, "tuned": v,
                    "text": f"No base comparison: tuned model {METRIC_NAMES.get(metric, metric)} "
                            f"{fmt_value(metric, v, share, 1)}{rows}. Run `{hint}` to see whether tuning helped.",
                    "hint": hint}
        loss = num(run.summary.get("eval_loss"))
        said = f" (validation loss {loss:.4g})" if loss is not None else ""
        return {"kind": "no_metrics", "text": f"No task metrics yet{said}: loss alone does not say whether the "
                f"model got better at your task. Run `{hint}` to measure the tuned model against the base model.",
                "hint": hint}
    metric, t, b, d, ci = comp["metric"], comp["tuned"], comp["base"], comp["diff"], comp["ci95"]
    share = is_share(metric, t, b)
    lower = metric in LOWER_IS_BETTER
    digits = _digits(t, b) if share else 0
    unit = " points" if share else ""
    detail = f"{fmt_diff(d, share, digits)}{unit}"
    if ci is not None:
        detail += f", 95% CI {fmt_diff(ci[0], share, digits)} to {fmt_diff(ci[1], share, digits)}"
        better, worse = (ci[1] < 0, ci[0] > 0) if lower else (ci[0] > 0, ci[1] < 0)
        unclear = not better and not worse and not (d == 0 and ci[0] == ci[1] == 0)
    else:
        detail += ", no confidence interval"
        better, worse = (d < 0, d > 0) if lower else (d > 0, d < 0)
        unclear = False
    name = METRIC_NAMES.get(metric, metric)
    numbers = f"{name} {fmt_value(metric, b, share, digits)} → {fmt_value(metric, t, share, digits)} ({detail})"
    if unclear:
        kind, head = "unclear", "No clear difference between the tuned and the base model"
        numbers += "; the interval includes zero"
    elif better:
        kind, head = "better", "Tuned model is better on your task"
    elif worse:
        kind, head = "worse", "Tuned model is worse than the base model on your task"
    else:
        kind, head = "same", "Tuned and base model score the same on your task"
    text = f"{head}: {numbers}."
    rows = comp.get("rows")
    if isinstance(rows, int) and rows:
        text += f" Measured on {rows} rows"
        text += " (few rows: treat this as a rough signal)." if rows < 30 else "."
    if comp["source"] != "eval.json":
        text += f" For a fuller comparison on your own test file run `{hint}`."
    return {"kind": kind, "metric": metric, "tuned": t, "base": b, "diff": d, "ci95": ci, "text": text,
            "source": comp["source"]}


def _duration(sec: float | None) -> str:
    if sec is None:
        return "–"
    if sec < 60:
        return f"{sec:.1f} s"
    if sec < 3600:
        return f"{int(sec // 60)} min {int(sec % 60)} s"
    return f"{int(sec // 3600)} h {int(sec % 3600 // 60)} min"


def run_facts(run: Run) -> list[tuple[str, str]]:
    s, c, r = run.summary, run.config, run.resolved
    peft = c.get("peft") if isinstance(c.get("peft"), dict) else {}
    model_cfg = c.get("model") if isinstance(c.get("model"), dict) else {}
    train_cfg = c.get("train") if isinstance(c.get("train"), dict) else {}
    cls_cfg = c.get("classification") if isinstance(c.get("classification"), dict) else {}
    facts: list[tuple[str, str]] = []

    def add(name: str, value: Any) -> None:
        if value not in (None, "", [], {}):
            facts.append((name, str(value)))

    add("run", s.get("name") or run.path.name)
    add("status", s.get("status") or "unknown (no summary.json)")
    add("task", run.task + (f" ({cls_cfg.get('mode')} mode)" if run.classification and cls_cfg.get("mode") else ""))
    add("base model", s.get("base_model") or model_cfg.get("base"))
    method = peft.get("method")
    if method in ("lora", "dora"):
        name = {"lora": "LoRA", "dora": "DoRA"}[method]
        add("method", f"{str(c.get('method') or 'sft').upper()}, {name} r={peft.get('r')} alpha={peft.get('alpha')} "
                      f"on {peft.get('target_modules')}")
    elif method == "full":
        add("method", f"{str(c.get('method') or 'sft').upper()}, full fine-tuning")
    if num(r.get("trainable_params")) and num(r.get("total_params")):
        add("trainable parameters", f"{r['trainable_params']:,} of {r['total_params']:,} "
                                    f"({r['trainable_params'] / r['total_params']:.2%})")
    unit = next((u for u in ("pairs", "prompts") if f"train_{u}" in s), "rows")  # what preference/RL runs count
    rows = [f"{s[k]:,} {w}" for k, w in ((f"train_{unit}", "train"), (f"validation_{unit}", "validation"),
                                          ("eval_rows", "scored")) if isinstance(s.get(k), int)]
    add(unit, " / ".join(rows))
    add("steps", s.get("steps"))
    add("training time", _duration(num(s.get("train_seconds"))) if num(s.get("train_seconds")) is not None else None)
    add("tokens/s", f"{s['tokens_per_s']:,.0f}" if num(s.get("tokens_per_s")) is not None else None)
    add("tokens seen", f"{s['tokens_seen']:,}" if isinstance(s.get("tokens_seen"), int) else None)
    add("precision", s.get("precision") or ("bf16" if r.get("bf16") else "fp32" if "bf16" in r else None))
    add("epochs", r.get("epochs"))
    add("learning rate", f"{r['learning_rate']:g}" if num(r.get("learning_rate")) is not None else None)
    if r.get("batch_size") is not None:
        add("batch size", f"{r['batch_size']} × {train_cfg.get('grad_accum', 1)} gradient accumulation")
    add("total / warmup steps", f"{r['total_steps']} / {r.get('warmup_steps', '–')}" if "total_steps" in r else None)
    add("scheduler", train_cfg.get("lr_scheduler"))
    add("max length", model_cfg.get("max_length"))
    for k in ("train_loss", "eval_loss"):
        if num(s.get(k)) is not None:
            add(METRIC_NAMES[k] + (" (best checkpoint)" if k == "eval_loss" else ""), f"{s[k]:.4f}")
    add("started", s.get("started"))
    add("updated", s.get("updated"))
    return facts


def data_facts(run: Run) -> dict[str, Any] | None:
    d = run.data
    if d is None:
        return None
    errs = d.get("errors") or []
    warns = d.get("warnings") or []
    labels = d.get("labels") or {}
    out = {"source": d.get("source"), "rows": d.get("rows"), "valid_rows": d.get("valid_rows"),
           "errors": len(errs) if isinstance(errs, list) else errs,
           "warnings": len(warns) if isinstance(warns, list) else warns,
           "duplicates": d.get("duplicates"), "truncated": d.get("truncated"),
           "dropped_too_long": d.get("dropped_too_long"), "max_length": d.get("max_length"),
           "train_rows": d.get("train_rows"), "validation_rows": d.get("validation_rows"),
           "train_validation_overlap": d.get("train_validation_overlap"),
           "tokens_per_epoch": d.get("est_tokens_per_epoch"),
           "length_histogram": [list(b) for b in d.get("length_histogram") or [] if len(b) == 3]}
    for unit in ("pairs", "prompts"):  # preference and RL runs count pairs or prompts, not rows
        if d.get(f"train_{unit}") is not None:
            out.update(unit=unit, train_rows=d[f"train_{unit}"], validation_rows=d.get(f"validation_{unit}"),
                       skipped=d.get("skipped"), too_long=d.get("too_long"))
            if isinstance(d.get("format"), dict):
                out["format"] = ", ".join(sorted(set(map(str, d["format"].values()))))
    if isinstance(labels, dict) and labels:
        out["labels"] = len(labels)
        out["smallest_label"] = min(labels.values())
        out["largest_label"] = max(labels.values())
    return out


def series(run: Run, key: str) -> list[tuple[float, float]]:
    """(step, value) of one logged metric, in logging order."""
    out = []
    for row in run.metrics or []:
        step, v = num(row.get("step")), num(row.get(key))
        if step is not None and v is not None:
            out.append((step, v))
    return out


def loss_points(run: Run) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    return series(run, "loss"), series(run, "eval_loss")


def confusion(run: Run) -> dict[str, Any] | None:
    conf = (run.eval or {}).get("confusion")
    if isinstance(conf, dict) and conf.get("labels") and conf.get("matrix"):
        labels, matrix = [str(x) for x in conf["labels"]], [[int(v) for v in row] for row in conf["matrix"]]
        if len(matrix) == len(labels) and all(len(row) == len(labels) for row in matrix):
            return _with_top({"source": "eval.json", "labels": labels, "matrix": matrix})
    preds = [p for p in run.predictions or [] if "label" in p and "predicted" in p]
    if not preds:
        return None
    from sklearn.metrics import confusion_matrix

    gold, guess = [str(p["label"]) for p in preds], [str(p["predicted"]) for p in preds]
    known = [str(x) for x in run.summary.get("labels") or []]  # every label, even one never seen here
    labels = known + sorted((set(gold) | set(guess)) - set(known))
    matrix = confusion_matrix(gold, guess, labels=labels).tolist()
    return _with_top({"source": "predictions.json", "labels": labels, "matrix": matrix})


def _with_top(conf: dict[str, Any], k: int = 10) -> dict[str, Any]:
    """The most frequent mistakes, as (true, predicted, count): what to read first with many labels."""
    labels, m = conf["labels"], conf["matrix"]
    pairs = [(labels[i], labels[j], m[i][j]) for i in range(len(labels)) for j in range(len(labels))
             if i != j and m[i][j] > 0]
    pairs.sort(key=lambda x: -x[2])
    conf["top_confusions"] = [{"true": a, "predicted": b, "count": n} for a, b, n in pairs[:k]]
    return conf


def examples(run: Run) -> dict[str, Any] | None:
    """At most MAX_EXAMPLES rows: tuned fixed, tuned broke, both wrong, both right, in turn."""
    ev = (run.eval or {}).get("examples")
    if isinstance(ev, list) and ev:
        rows = [{"input": str(e.get("input", "")), "reference": e.get("reference"), "tuned": e.get("tuned"),
                 "base": e.get("base")} for e in ev if isinstance(e, dict)]
        return {"source": "eval.json", "rows": _pick(rows, run.classification)}
    if run.predictions:
        rows = [{"input": str(p.get("text", "")), "reference": p.get("label"), "tuned": p.get("predicted"),
                 "base": p.get("base_predicted"), "where": p.get("where")} for p in run.predictions]
        return {"source": "predictions.json", "rows": _pick(rows, True)}
    return None


def _pick(rows: list[dict[str, Any]], exact: bool) -> list[dict[str, Any]]:
    if not exact or len(rows) <= MAX_EXAMPLES:
        return rows[:MAX_EXAMPLES]
    groups: dict[tuple[bool, bool], list[dict[str, Any]]] = {}
    for r in rows:
        key = (r["tuned"] == r["reference"], r["base"] == r["reference"])
        groups.setdefault(key, []).append(r)
    order = [groups.get(k, []) for k in ((True, False), (False, True), (False, False), (True, True))]
    picked: list[dict[str, Any]] = []
    while len(picked) < MAX_EXAMPLES and any(order):
        for g in order:
            if g and len(picked) < MAX_EXAMPLES:
                picked.append(g.pop(0))
    return picked


def pct(x: Any) -> str:
    v = num(x)
    return "–" if v is None else f"{v:.0%}"


def _named(attr: str) -> str:
    return attr.replace("_", " ")


def probe_sentences(p: dict[str, Any]) -> list[str]:
    """Forgetting and bias in a sentence each, for the verdict."""
    out = []
    f = p.get("forgetting") if isinstance(p.get("forgetting"), dict) else {}
    if isinstance(f.get("tuned"), dict):
        t, b = f["tuned"], f.get("base") if isinstance(f.get("base"), dict) else None
        if f.get("warnings"):
            out.append("Forgetting: " + "; ".join(map(str, f["warnings"])) + ".")
        elif b:
            ppl = (f", general-text perplexity {b['perplexity']:.1f} → {t['perplexity']:.1f}"
                   if num(b.get("perplexity")) and num(t.get("perplexity")) else "")
            out.append(f"No measurable forgetting (general questions {pct(b.get('qa_accuracy'))} → "
                       f"{pct(t.get('qa_accuracy'))}{ppl}).")
    bias = p.get("bias") if isinstance(p.get("bias"), dict) else {}
    attrs = {a: e for a, e in (bias.get("attributes") or {}).items() if isinstance(e, dict)
             and isinstance(e.get("tuned"), dict)}
    key = "flip_rate" if bias.get("kind") == "classification" else "sentiment_gap"
    scored = {a: e for a, e in attrs.items() if num(e["tuned"].get(key)) is not None}
    if scored:
        top = max(scored, key=lambda a: scored[a]["tuned"][key])
        t = scored[top]["tuned"][key]
        b = num((scored[top].get("base") or {}).get(key))
        if key == "flip_rate":
            if t == 0:
                out.append(f"No label flips under demographic swaps ({', '.join(map(_named, scored))}).")
            else:
                out.append(f"Label flips under {_named(top)} swaps {t:.0%}" + (f" (base {b:.0%})" if b is not None
                           else "") + "; the other attributes flip less.")
        else:
            out.append(f"Largest reply-sentiment gap between groups: {t:.2f} for {_named(top)}"
                       + (f" (base {b:.2f})" if b is not None else "") + " on a −1..1 scale.")
    if bias.get("warnings"):
        out.append("Bias warning: " + "; ".join(map(str, bias["warnings"])) + ".")
    return out


def probe_facts(run: Run) -> dict[str, Any] | None:
    p = run.probes
    if not p:
        return None
    forgetting = p.get("forgetting") if isinstance(p.get("forgetting"), dict) else None
    bias = p.get("bias") if isinstance(p.get("bias"), dict) else None
    return {"sentences": probe_sentences(p), "warnings": [str(w) for w in p.get("warnings") or []],
            "sides": p.get("sides"), "forgetting": forgetting, "bias": bias, "seconds": p.get("seconds")}


def build(run: Run) -> dict[str, Any]:
    """Everything the page shows, as plain data (this is report.json)."""
    metrics = task_metrics(run)
    comp = comparison(run, metrics)
    train, evals = loss_points(run)
    status = run.summary.get("status")
    missing: dict[str, str] = {}
    hint = _hint_eval(run)
    if not run.summary:
        missing["summary"] = "No summary.json: the run never started, or this is not a complete run directory."
    if run.data is None:
        missing["data"] = ("No data_report.json in this run. Check a data file on its own with "
                           "`tunelab data check FILE --model MODEL`.")
    if not train and not evals:
        missing["loss"] = ("No losses logged (metrics.jsonl is missing or empty): the run stopped before its "
                           "first logged step. Train it with `tunelab train CONFIG` (or `--resume`).")
    elif not evals:
        missing["validation_loss"] = ("No validation loss was logged: give data.validation or data.val_fraction "
                                      "> 0, and train.eval_every to evaluate during training.")
    if not metrics["tuned"]:
        missing["metrics"] = f"No task metrics for this run. Run `{hint}` to score it on your data."
    elif not metrics["base"]:
        missing["base"] = f"The base model was not scored. Run `{hint}` to compare with it."
    if run.eval is not None and metrics["source"] != "eval.json" and run.classification:
        missing["eval_task"] = (f"eval.json has no accuracy (it scored {run.eval.get('data', 'its data')} as "
                                f"{run.eval.get('task', '?')!r} rows), so the scores here come from "
                                f"{metrics['source']}. If your file names its columns differently, map them: "
                                f"`{hint} --text-column TEXT --label-column LABEL`.")
    conf = confusion(run) if run.classification else None
    if run.classification and conf is None:
        missing["confusion"] = (f"No predictions to draw a confusion matrix from (no eval.json or "
                                f"predictions.json). Run `{hint}`.")
    ex = examples(run)
    if ex is None:
        missing["examples"] = f"No example outputs (no eval.json or predictions.json). Run `{hint}`."
    elif not any(r.get("base") is not None for r in ex["rows"]):
        missing["example_base"] = f"The examples have no base-model outputs. Run `{hint}` to add them."
    from .report_preference import preference_facts  # it reads this module's helpers

    pref = preference_facts(run)
    if pref is not None:
        rl_examples = pref.pop("examples", None)
        if rl_examples:  # RL predictions: prompt, reference answer, tuned and base answers, each marked
            ex = {"source": "predictions.json", "rows": rl_examples}
            missing.pop("examples", None)
            if any(r.get("base") is not None for r in rl_examples):
                missing.pop("example_base", None)
        _preference_missing(pref, metrics, missing)
    probes = probe_facts(run)
    if probes is None and not (pref and pref["kind"] == "reward"):
        missing["probes"] = (f"No forgetting or bias probes for this run (no probes.json). Run "
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
        "warnings": warnings,
        "verdict": _with_probes(pref["verdict"] if pref and comp is None else verdict(run, comp, metrics), probes),
        "comparison": comp, "preference": pref,
        "facts": dict(run_facts(run)), "resolved": run.resolved, "data": data_facts(run),
        "loss": {"train_points": len(train), "eval": [list(p) for p in evals],
                 "first_train_loss": train[0][1] if train else None, "last_train_loss": train[-1][1] if train else None,
                 "best_eval_loss": min(v for _, v in evals) if evals else None},
        "metrics": {"source": metrics["source"], "rows": metrics.get("rows"), "data": metrics.get("data"),
                    "skipped_rows": metrics.get("skipped_rows"),
                    "tuned": {k: v for k, v in tuned_m.items() if k != "per_class"},
                    "base": {k: v for k, v in base_m.items() if k != "per_class"},
                    "weakest_classes": _weakest(tuned_m, base_m)},
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


def _with_probes(v: dict[str, Any], probes: dict[str, Any] | None) -> dict[str, Any]:
    if probes and probes["sentences"]:
        v["task_text"] = v["text"]
        v["text"] = v["text"] + " " + " ".join(probes["sentences"])
        v["probe_warnings"] = bool(probes["warnings"])
    return v


def _status_warning(run: Run, status: str | None) -> str:
    if status is None:
        return "This run has no summary.json, so its status is unknown: the numbers below may be incomplete."
    what = f"This run is {status}, not completed: the numbers below are from an unfinished run"
    if status in ("running", "interrupted"):
        what += (" (if it is not still training, continue it with `tunelab train CONFIG --resume`, using the "
                 "run's config.yaml)")
    if run.summary.get("error"):
        what += f". Error: {run.summary['error']}"
    return what + "."


def _weakest(tuned: dict[str, Any], base: dict[str, Any], k: int = 10) -> list[dict[str, Any]]:
    per = tuned.get("per_class")
    if not isinstance(per, dict) or not per:
        return []
    base_per = base.get("per_class") if isinstance(base.get("per_class"), dict) else {}
    rows = []
    for lab, sc in per.items():
        if not isinstance(sc, dict) or num(sc.get("f1")) is None:
            continue
        b = base_per.get(lab) if isinstance(base_per.get(lab), dict) else {}
        rows.append({"label": str(lab), "f1": sc["f1"], "precision": sc.get("precision"), "recall": sc.get("recall"),
                     "support": sc.get("support"), "base_f1": b.get("f1")})
    rows.sort(key=lambda r: (r["f1"], -(r["support"] or 0)))
    return rows[: k if len(rows) > 12 else len(rows)]
