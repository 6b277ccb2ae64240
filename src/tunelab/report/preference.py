"""Report facts of preference and online-RL runs (method reward, dpo and its relatives, grpo/rloo).

What a person wants to know from such a run is not a task score but: does the reward model rank the preferred
answer first more often than a coin toss, did DPO move the model toward the preferred answers on pairs it never
saw, did RL raise the reward on held-out prompts. Each comes with its interval and the curves from metrics.jsonl.
"""

from __future__ import annotations

from typing import Any

from ..config.schema import PAIR_METHODS, REFERENCE_FREE, RL_METHODS
from ..eval.metrics import bootstrap_diff, same_final_number
from .numbers import fmt_diff, num
from .source import Run

CHANCE = 0.5
MAX_EXAMPLES = 12


def wilson(share: float, n: int) -> tuple[float, float]:
    """95% Wilson interval of a share measured on n independent pairs."""
    from scipy.stats import binomtest

    ci = binomtest(max(0, min(n, round(share * n))), n).proportion_ci(confidence_level=0.95, method="wilson")
    return float(ci.low), float(ci.high)


def _panels(run: Run, spec: list[tuple[str, dict[str, str]]]) -> list[tuple[str, dict[str, Any]]]:
    """Chart panels (y label, {series name: points}) with the series that were logged; empty panels dropped."""
    panels = []
    for ylabel, keys in spec:
        got = {name: pts for name, key in keys.items() if (pts := run.series(key))}
        if got:
            panels.append((ylabel, got))
    return panels


def _p(x: float) -> str:
    return f"{x:.0%}" if abs(x * 100 - round(x * 100)) < 0.05 or abs(x) >= 0.1 else f"{x:.1%}"


def _against_chance(share: float, n: int | None, what: str, tail: str) -> dict[str, Any]:
    """A share of held-out pairs ranked right, judged against the 50% a coin toss gets."""
    if not n:
        return {"kind": "no_comparison", "metric": "pairwise_accuracy", "tuned": share,
                "text": f"{what} {_p(share)} of held-out pairs{tail}."}
    lo, hi = wilson(share, n)
    said = f"{what} {_p(share)} of {n} held-out pairs (95% CI {_p(lo)} to {_p(hi)}){tail}"
    if lo > CHANCE:
        kind, text = "better", f"{said}: clearly better than the {_p(CHANCE)} of a coin toss."
    elif hi < CHANCE:
        kind, text = "worse", f"{said}: worse than the {_p(CHANCE)} of a coin toss; check that chosen and rejected " \
                              "are not swapped in your data."
    else:
        kind, text = "unclear", (f"{said}: not clearly better than the {_p(CHANCE)} of a coin toss; more pairs, "
                                 "more epochs or a larger base model may help.")
    if n < 30:
        text += " Few pairs: treat this as a rough signal."
    return {"kind": kind, "metric": "pairwise_accuracy", "tuned": share, "base": CHANCE, "ci95_share": [lo, hi],
            "text": text}


def _reward(run: Run) -> dict[str, Any]:
    s = run.summary
    acc, base, n = num(s.get("pairwise_accuracy")), num(s.get("base_pairwise_accuracy")), s.get("validation_pairs")
    rows = [("held-out pairwise accuracy", _p(acc) if acc is not None else "–"),
            ("untrained head (about chance)", _p(base) if base is not None else "–"),
            ("score margin, chosen − rejected", f"{s['eval_margin']:.3f}" if num(s.get("eval_margin")) else "–"),
            ("held-out pairs", str(n or "–"))]
    if acc is None:
        v = {"kind": "no_metrics", "text": "No held-out pairwise accuracy: this reward model was not checked on "
             "pairs it did not train on. Give data.validation or data.val_fraction > 0 and train it again."}
    else:
        tail = f" (the untrained head: {_p(base)})" if base is not None else ""
        v = _against_chance(acc, n if isinstance(n, int) else None, "The reward model scores the preferred answer "
                            "higher on", tail)
    return {"kind": "reward", "method": "reward", "rows": rows, "verdict": v, "chance": {"pairwise accuracy": CHANCE},
            "panels": _panels(run, [("pairwise accuracy", {"training": "accuracy", "validation": "eval_accuracy"}),
                                    ("score margin", {"training": "margin", "validation": "eval_margin"})]),
            "explain": "A reward model gives each answer a score; on a held-out pair it is right when the preferred "
                       "answer scores higher. A coin toss is right half the time."}


def _pairs(run: Run, method: str) -> dict[str, Any]:
    s = run.summary
    acc, n = num(s.get("preference_accuracy")), s.get("validation_pairs")
    base = num(s.get("base_preference_accuracy"))
    margin = num(s.get("eval_rewards_margins"))
    rows = [("held-out preference accuracy", _p(acc) if acc is not None else "–")]
    if method in REFERENCE_FREE:
        rows.append(("before training", _p(base) if base is not None else "–"))
    rows += [("reward margin, chosen − rejected", f"{margin:.3f}" if margin is not None else "–"),
             ("reward of chosen / rejected", " / ".join(f"{s[k]:.3f}" if num(s.get(k)) is not None else "–" for k in
                                                       ("eval_rewards_chosen", "eval_rewards_rejected"))),
             ("validation loss", f"{s['eval_loss']:.4f}" if num(s.get("eval_loss")) is not None else "–"),
             ("held-out pairs", str(n or "–"))]
    name = method.upper() if method != "simpo" else "SimPO"
    if acc is None:
        why = ("KTO scores answers one at a time and logs no pairwise accuracy: read the reward margin below"
               if method == "kto" else "No held-out preference accuracy: give data.validation or data.val_fraction "
               "> 0 to see whether the model moved toward the preferred answers")
        v = {"kind": "no_metrics", "text": f"{why}."}
        if margin is not None:
            v["text"] += f" Held-out reward margin: {margin:.3f} (above 0: preferred answers gained more)."
    elif method in REFERENCE_FREE and base is not None:
        d = acc - base
        kind = "better" if d > 0 else "worse" if d < 0 else "same"
        head = {"better": "ranks the preferred answer first more often", "worse": "ranks the preferred answer first "
                "less often", "same": "ranks the preferred answer first as often"}[kind]
        v = {"kind": kind, "metric": "preference_accuracy", "tuned": acc, "base": base, "diff": d,
             "text": f"After {name} the model {head} than before: {_p(base)} → {_p(acc)} of {n} held-out pairs "
                     f"({fmt_diff(d, True)} points, judged by its own likelihood of each answer)."}
    else:
        if method in ("dpo", "kto"):
            what = f"After {name} the preferred answer gained more than the rejected one on"
            tail = (", by the implicit reward (how much likelier the tuned model makes an answer than the starting "
                    "model did)")
        else:
            what, tail = f"After {name} the model finds the preferred answer likelier than the rejected one on", ""
        v = _against_chance(acc, n if isinstance(n, int) else None, what, tail)
    explain = ("DPO needs no separate reward model: each answer's implicit reward is beta × how much more likely "
               "the tuned model makes it than the starting model. On a held-out pair the model is right when the "
               "preferred answer gained more; with no change at all every pair is a tie, and a coin toss is right "
               "half the time.") if method in ("dpo", "kto") else (
               f"{name} has no reference model: an answer's reward is beta × the model's own average log-likelihood "
               "of it; on a held-out pair the model is right when the preferred answer is the likelier one.")
    return {"kind": "pairs", "method": method, "rows": rows, "verdict": v, "explain": explain,
            "chance": {"preference accuracy": CHANCE} if method not in REFERENCE_FREE else {},
            "panels": _panels(run, [("preference accuracy", {"training": "rewards/accuracies",
                                                             "validation": "eval_rewards/accuracies"}),
                                    ("reward margin", {"training": "rewards/margins",
                                                       "validation": "eval_rewards/margins"})])}


def _scored_predictions(run: Run) -> list[dict[str, Any]]:
    """Held-out RL predictions, each marked right or wrong as training scored it; runs trained before answers were
    marked are scored here by the same rule (the final number)."""
    def mark(p: dict[str, Any], key: str, answer: str) -> bool | None:
        if isinstance(p.get(f"{key}correct"), bool):
            return p[f"{key}correct"]
        said = p.get(f"{key}predicted")
        return same_final_number(str(said), str(answer)) if said is not None and answer is not None else None

    return [{"input": str(p.get("prompt") or p.get("where") or ""), "reference": p.get("answer"),
             "tuned": p["predicted"], "base": p.get("base_predicted"), "tuned_ok": mark(p, "", p.get("answer")),
             "base_ok": mark(p, "base_", p.get("answer"))}
            for p in run.predictions or [] if "predicted" in p]


def _online(run: Run, method: str) -> dict[str, Any]:
    s = run.summary
    base, tuned, n = num(s.get("base_reward")), num(s.get("tuned_reward")), s.get("eval_rows")
    scored = _scored_predictions(run)
    first, last = num(s.get("reward_first")), num(s.get("reward_last"))
    rows = [("held-out accuracy, base → tuned", f"{_p(base)} → {_p(tuned)}" if base is not None and tuned is not None
             else _p(tuned) if tuned is not None else "–"),
            ("held-out prompts scored", str(n or "–")),
            ("training reward, first → last logged step", f"{first:.3f} → {last:.3f}" if first is not None and
             last is not None else "–"),
            ("KL to the starting model, last step",
             f"{s['kl_last']:.4f}" if num(s.get("kl_last")) is not None else "–")]
    for k, val in s.items():
        if k.startswith("reward_last_") and num(val) is not None:
            rows.append((f"reward '{k.removeprefix('reward_last_')}', last step", f"{val:.3f}"))
    trend = (f" The mean training reward went from {first:.3f} at the first logged step to {last:.3f} at the last."
             if first is not None and last is not None else "")
    name = method.upper()
    v: dict[str, Any]
    if tuned is None:
        v = {"kind": "no_metrics", "text": f"No held-out prompts with reference answers were scored.{trend} Give "
             "data.validation (or data.val_fraction > 0) with answers to see whether the model improved on prompts "
             "it did not train on."}
    elif base is None:
        v = {"kind": "no_comparison", "metric": "numeric_accuracy", "tuned": tuned,
             "text": f"After {name}: {_p(tuned)} of {n} held-out prompts answered right (final number).{trend}"}
    else:
        d, ci = tuned - base, None
        if scored and all(r["base_ok"] is not None and r["tuned_ok"] is not None for r in scored):
            _, lo, hi = bootstrap_diff([float(r["tuned_ok"]) for r in scored], [float(r["base_ok"]) for r in scored])
            ci = [lo, hi]
        detail = f"{fmt_diff(d, True)} points" + (f", 95% CI {fmt_diff(ci[0], True)} to {fmt_diff(ci[1], True)}"
                                                  if ci else ", no confidence interval")
        if ci and ci[0] <= 0 <= ci[1] and not (ci[0] == ci[1] == 0 and d == 0):
            kind, head = "unclear", "No clear difference on held-out prompts"
        elif d > 0:
            kind, head = "better", f"{name} helped on held-out prompts"
        elif d < 0:
            kind, head = "worse", f"{name} made held-out answers worse"
        else:
            kind, head = "same", "Held-out accuracy did not change"
        text = (f"{head}: final-number accuracy of greedy answers {_p(base)} → {_p(tuned)} ({detail}) on {n} "
                f"prompts.{trend}")
        if isinstance(n, int) and n < 30:
            text += " Few prompts: treat this as a rough signal."
        v = {"kind": kind, "metric": "numeric_accuracy", "tuned": tuned, "base": base, "diff": d, "ci95": ci,
             "text": text}
    reward_keys = {"total": "reward"} | {
        k.split("/")[1]: k for k in dict.fromkeys(key for row in run.metrics or [] for key in row)
        if k.startswith("rewards/") and k.endswith("/mean")}
    return {"kind": "online_rl", "method": method, "rows": rows, "verdict": v, "chance": {},
            "panels": _panels(run, [("mean reward per answer", reward_keys), ("KL to the starting model", {"kl": "kl"}),
                                    ("answer length (tokens)", {"mean": "completions/mean_length"})]),
            "examples": _rl_examples(scored),
            "explain": f"{name} samples several answers per training prompt and makes the ones that score above the "
                       "others more likely; the KL term keeps the model near where it started. Held-out accuracy: "
                       "greedy answers to validation prompts whose final number matches the reference."}


def _rl_examples(rows: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """The answers tuning changed first."""
    if not rows:
        return None
    changed = [r for r in rows if r["base_ok"] is not None and r["tuned_ok"] != r["base_ok"]]
    return (changed + [r for r in rows if r not in changed])[:MAX_EXAMPLES]


def preference_facts(run: Run) -> dict[str, Any] | None:
    """The facts of a reward, pair-trained or online-RL run; None for SFT and classification runs."""
    method = run.method
    if method == "reward":
        return _reward(run)
    if method in PAIR_METHODS:
        return _pairs(run, method)
    if method in RL_METHODS:
        return _online(run, method)
    return None
