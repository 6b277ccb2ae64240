"""The facts of a supervised run's report (task metrics, verdict, data, losses, confusion, examples, probes), as
plain data. Every input is optional: a missing one turns into a note that says how to get it (build.py).
Preference and RL runs add their own facts (preference.py)."""

from __future__ import annotations

from typing import Any

from ..eval.metrics import classification_metrics
from ..runs import layout as files
from .numbers import (
    LOWER_IS_BETTER,
    METRIC_NAMES,
    METRIC_ORDER,
    digits,
    fmt_diff,
    fmt_value,
    is_share,
    num,
    paired_bootstrap,
    pct,
)
from .source import Run, is_evaluation, task_level

MAX_EXAMPLES = 12


def hint_eval(run: Run) -> str:
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


def task_metrics(run: Run) -> dict[str, Any]:
    """Tuned and base metrics from the first of the headline evaluation, predictions.json, summary.json that
    scores the task; an evaluation's loss alone gives way to a classification run's own accuracy."""
    ev, s = run.eval or {}, run.summary
    found: list[dict[str, Any]] = []
    if isinstance(ev.get("model"), dict) and ev["model"]:
        base = ev.get("base") if isinstance(ev.get("base"), dict) else {}
        skipped = ev.get("skipped_rows")
        found.append({"source": run.eval_source, "rows": ev.get("rows"), "data": ev.get("data"),
                      "tuned": ev["model"], "base": base,
                      "skipped_rows": len(skipped) if isinstance(skipped, list) else skipped})
        if task_level(run.classification, ev["model"]):
            return found[0]
    base_acc = {"accuracy": s["base_accuracy"]} if num(s.get("base_accuracy")) is not None else {}
    if run.classification and run.predictions:
        scores = _prediction_scores(run.predictions)
        if "tuned" in scores:  # a resumed run keeps its first base accuracy but has no base predictions
            return {"source": files.PREDICTIONS, "rows": len(run.predictions), "data": "the validation split",
                    "tuned": scores["tuned"], "base": scores.get("base") or base_acc}
    if num(s.get("tuned_accuracy")) is not None:
        return {"source": files.SUMMARY, "rows": s.get("eval_rows"), "data": "the validation split",
                "tuned": {"accuracy": s["tuned_accuracy"]}, "base": base_acc}
    return found[0] if found else {"source": None, "tuned": {}, "base": {}}


def comparison(run: Run, metrics: dict[str, Any]) -> dict[str, Any] | None:
    """The one tuned-vs-base number the verdict is about, with its interval where one can be had."""
    ev = run.eval or {}
    comp = ev.get("comparison") if is_evaluation(metrics.get("source")) else None
    if isinstance(comp, dict) and num(comp.get("tuned")) is not None and num(comp.get("base")) is not None:
        t, b = float(comp["tuned"]), float(comp["base"])
        d = num(comp.get("diff"))
        ci = comp.get("ci95")
        ci = [float(x) for x in ci] if isinstance(ci, list | tuple) and len(ci) == 2 and all(
            num(x) is not None for x in ci) else None
        return {"metric": str(comp.get("metric") or "accuracy"), "tuned": t, "base": b,
                "diff": d if d is not None else t - b, "ci95": ci, "rows": ev.get("rows"),
                "wins": comp.get("wins"), "losses": comp.get("losses"), "ties": comp.get("ties"),
                "source": metrics["source"], "method": "bootstrap by tunelab eval"}
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
        if out["source"] != files.PREDICTIONS:  # summary and predictions score the same rows; keep one source
            acc_t, acc_b = sum(right_t) / len(preds), sum(right_b) / len(preds)
            out.update(tuned=acc_t, base=acc_b, diff=acc_t - acc_b, source=files.PREDICTIONS)
    return out


def verdict(run: Run, comp: dict[str, Any] | None, metrics: dict[str, Any]) -> dict[str, Any]:
    """A sentence a person can act on: better, worse, no clear difference, or what is missing."""
    hint = hint_eval(run)
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
    places = digits(t, b) if share else 0
    unit = " points" if share else ""
    detail = f"{fmt_diff(d, share, places)}{unit}"
    if ci is not None:
        detail += f", 95% CI {fmt_diff(ci[0], share, places)} to {fmt_diff(ci[1], share, places)}"
        better, worse = (ci[1] < 0, ci[0] > 0) if lower else (ci[0] > 0, ci[1] < 0)
        unclear = not better and not worse and not (d == 0 and ci[0] == ci[1] == 0)
    else:
        detail += ", no confidence interval"
        better, worse = (d < 0, d > 0) if lower else (d > 0, d < 0)
        unclear = False
    name = METRIC_NAMES.get(metric, metric)
    numbers = f"{name} {fmt_value(metric, b, share, places)} → {fmt_value(metric, t, share, places)} ({detail})"
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
    if not is_evaluation(comp["source"]):
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
    facts: list[tuple[str, str]] = []

    def add(name: str, value: Any) -> None:
        if value not in (None, "", [], {}):
            facts.append((name, str(value)))

    add("run", s.get("name") or run.path.name)
    add("status", s.get("status") or f"unknown (no {files.SUMMARY})")
    mode = f" ({c.classification.mode} mode)" if c is not None and run.classification else ""
    add("task", run.task + mode)
    add("base model", s.get("base_model") or (c.model.base if c is not None else None))
    if c is not None and c.peft.method in ("lora", "dora"):
        name = {"lora": "LoRA", "dora": "DoRA"}[c.peft.method]
        add("method", f"{c.method.upper()}, {name} r={c.peft.r} alpha={c.peft.alpha} on {c.peft.target_modules}")
    elif c is not None:
        add("method", f"{c.method.upper()}, full fine-tuning")
    if num(r.get("trainable_params")) and num(r.get("total_params")):
        add("trainable parameters", f"{r['trainable_params']:,} of {r['total_params']:,} "
                                    f"({r['trainable_params'] / r['total_params']:.2%})")
    unit = next((u for u in ("pairs", "prompts") if f"train_{u}" in s), "rows")  # what preference/RL runs count
    rows = [f"{s[k]:,} {w}" for k, w in ((f"train_{unit}", "train"), (f"validation_{unit}", "validation"),
                                          ("eval_rows", "scored")) if isinstance(s.get(k), int)]
    add(unit, " / ".join(rows))
    add("steps", s.get("steps"))
    fitted = s.get("fit") if isinstance(s.get("fit"), dict) else {}
    if fitted.get("changed"):  # train.fit: auto stepped down the memory ladder before training
        add("memory (train.fit)", f"changed to fit {fitted.get('limit_mib', 0):,.0f} MiB: "
            + "; ".join(map(str, fitted["changed"])) + f" (peak about {fitted.get('before_mib', 0):,.0f} MiB as "
            f"configured, {fitted.get('peak_memory_mib', 0):,.0f} MiB after)")
    add("training time", _duration(num(s.get("train_seconds"))) if num(s.get("train_seconds")) is not None else None)
    add("tokens/s", f"{s['tokens_per_s']:,.0f}" if num(s.get("tokens_per_s")) is not None else None)
    add("tokens seen", f"{s['tokens_seen']:,}" if isinstance(s.get("tokens_seen"), int) else None)
    add("precision", s.get("precision") or ("bf16" if r.get("bf16") else "fp32" if "bf16" in r else None))
    add("epochs", r.get("epochs"))
    add("learning rate", f"{r['learning_rate']:g}" if num(r.get("learning_rate")) is not None else None)
    if r.get("batch_size") is not None:
        add("batch size", f"{r['batch_size']} × {c.train.grad_accum if c is not None else 1} gradient accumulation")
    add("total / warmup steps", f"{r['total_steps']} / {r.get('warmup_steps', '–')}" if "total_steps" in r else None)
    add("scheduler", c.train.lr_scheduler if c is not None else None)
    add("max length", c.model.max_length if c is not None else None)
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
           "train_validation_leaks": d.get("train_validation_leaks"),
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


def confusion(run: Run) -> dict[str, Any] | None:
    conf = (run.eval or {}).get("confusion")
    if isinstance(conf, dict) and conf.get("labels") and conf.get("matrix"):
        labels, matrix = [str(x) for x in conf["labels"]], [[int(v) for v in row] for row in conf["matrix"]]
        if len(matrix) == len(labels) and all(len(row) == len(labels) for row in matrix):
            return _with_top({"source": run.eval_source, "labels": labels, "matrix": matrix})
    preds = [p for p in run.predictions or [] if "label" in p and "predicted" in p]
    if not preds:
        return None
    from sklearn.metrics import confusion_matrix

    gold, guess = [str(p["label"]) for p in preds], [str(p["predicted"]) for p in preds]
    known = [str(x) for x in run.summary.get("labels") or []]  # every label, even one never seen here
    labels = known + sorted((set(gold) | set(guess)) - set(known))
    matrix = confusion_matrix(gold, guess, labels=labels).tolist()
    return _with_top({"source": files.PREDICTIONS, "labels": labels, "matrix": matrix})


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
        return {"source": run.eval_source, "rows": _pick(rows, run.classification)}
    if run.predictions:
        rows = [{"input": str(p.get("text", "")), "reference": p.get("label"), "tuned": p.get("predicted"),
                 "base": p.get("base_predicted"), "where": p.get("where")} for p in run.predictions]
        return {"source": files.PREDICTIONS, "rows": _pick(rows, True)}
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


def weakest(tuned: dict[str, Any], base: dict[str, Any], k: int = 10) -> list[dict[str, Any]]:
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
