"""Report facts of preference and online-RL runs (method reward, dpo and its relatives, grpo/rloo/online_dpo).

What a person wants to know from such a run is not a task score but: does the reward model rank the preferred
answer first more often than a coin toss, did DPO move the model toward the preferred answers on pairs it never
saw, did RL raise the reward on held-out prompts. Each comes with its interval and the curves from metrics.jsonl.
"""

from __future__ import annotations

from typing import Any

from ..config.schema import PAIR_METHODS, REFERENCE_FREE, RL_METHODS
from ..eval.metrics import bootstrap_diff, same_final_number
from ..runs import layout as files
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


def _scored_predictions(run: Run, graded: bool) -> list[dict[str, Any]]:
    """Held-out RL predictions, each marked right or wrong as training scored it; runs trained before answers were
    marked are scored here by the same rule (the final number). A grader's answers keep their rewards; unmarked
    ones stay unmarked, as only the grader could mark them."""
    def mark(p: dict[str, Any], key: str, answer: str) -> bool | None:
        if isinstance(p.get(f"{key}correct"), bool):
            return p[f"{key}correct"]
        said = p.get(f"{key}predicted")
        if graded or said is None or answer is None:
            return None
        return same_final_number(str(said), str(answer))

    return [{"input": str(p.get("prompt") or p.get("where") or ""), "reference": p.get("answer"),
             "tuned": p["predicted"], "base": p.get("base_predicted"), "tuned_ok": mark(p, "", p.get("answer")),
             "base_ok": mark(p, "base_", p.get("answer"))}
            | ({"tuned_reward": num(p.get("reward")), "base_reward": num(p.get("base_reward"))} if graded else {})
            for p in run.predictions or [] if "predicted" in p]


class _Scale:
    """How an RL run's held-out score reads: numeric's share of answers right (percent, differences in points),
    or a grader's mean reward, a number on the grader's own scale."""

    def __init__(self, s: dict[str, Any]) -> None:
        self.graded = s.get("eval_metric") in ("grader_mean_reward", "mean_reward")
        self.judged = s.get("eval_metric") == "mean_reward"  # the training rewards: no threshold marks right
        kind = f" ({s['grader_type']})" if s.get("grader_type") else ""
        self.grader = (f"the training rewards ({', '.join(map(str, s.get('rewards') or []))})" if self.judged
                       else f"grader '{s.get('grader') or '?'}'{kind}" if self.graded else "")
        threshold = num(s.get("pass_threshold"))
        self.threshold = 0.5 if threshold is None else threshold  # where training marked a grader's answer right
        if self.graded:
            self.metric = str(s["eval_metric"])
            self.what = f"mean reward of greedy answers by {self.grader}"
        else:
            self.metric, self.what = "numeric_accuracy", "final-number accuracy of greedy answers"

    def value(self, x: float) -> str:
        return f"{x:.3f}" if self.graded else _p(x)

    def diff(self, d: float) -> str:
        return (f"{'+' if d > 0 else '−' if d < 0 else ''}{abs(d):.3f}" if self.graded
                else f"{fmt_diff(d, True)} points")

    def interval(self, rows: list[dict[str, Any]]) -> list[float] | None:
        """95% paired bootstrap interval of tuned − base over the scored answers: of their rewards for a grader,
        of right (1) and wrong (0) otherwise; None unless every answer has both."""
        keys = ("tuned_reward", "base_reward") if self.graded else ("tuned_ok", "base_ok")
        if not rows or any(r.get(k) is None for r in rows for k in keys):
            return None
        _, lo, hi = bootstrap_diff([float(r[keys[0]]) for r in rows], [float(r[keys[1]]) for r in rows])
        return [lo, hi]


def _online(run: Run, method: str) -> dict[str, Any]:
    s = run.summary
    base, tuned, n = num(s.get("base_reward")), num(s.get("tuned_reward")), s.get("eval_rows")
    scale = _Scale(s)
    scored = _scored_predictions(run, scale.graded)
    first, last = num(s.get("reward_first")), num(s.get("reward_last"))
    shown = (f"{scale.value(base)} → {scale.value(tuned)}" if base is not None and tuned is not None
             else scale.value(tuned) if tuned is not None else "–")
    rows = [("held-out mean reward, base → tuned" if scale.graded else "held-out accuracy, base → tuned", shown),
            ("held-out prompts scored", str(n or "–")),
            *([("held-out win rate over the base (ties count half)", _p(s["win_rate"]))]
              if num(s.get("win_rate")) is not None else []),
            ("training reward, first → last logged step", f"{first:.3f} → {last:.3f}" if first is not None and
             last is not None else "–"),
            ("KL to the starting model, last step",
             f"{s['kl_last']:.4f}" if num(s.get("kl_last")) is not None else "–")]
    failures = ""
    if scale.graded:
        rows.insert(1, ("scored by" if scale.judged else "grader", scale.grader))
        if isinstance(s.get("grader_graded"), int):
            rows.append(("training answers the grader failed on (scored 0)",
                         f"{s.get('grader_failed') or 0} of {s['grader_graded']}"))
            if s.get("grader_failed"):
                failures = (f" The grader failed on {s['grader_failed']} of {s['grader_graded']} training answers, "
                            f"which scored 0 ({files.METRICS} has the share per step).")
    for k, val in s.items():
        if k.startswith("reward_last_") and num(val) is not None:
            rows.append((f"reward '{k.removeprefix('reward_last_')}', last step", f"{val:.3f}"))
    trend = (f" The mean training reward went from {first:.3f} at the first logged step to {last:.3f} at the last."
             if first is not None and last is not None else "") + failures
    name = "Online DPO" if method == "online_dpo" else method.upper()
    v: dict[str, Any]
    if tuned is None:
        scored_by = ("by the training rewards" if scale.judged else "by the grader" if scale.graded
                     else "with reference answers")
        v = {"kind": "no_metrics", "text": f"No held-out prompts were scored {scored_by}.{trend} Give "
             "data.validation (or data.val_fraction > 0)" + ("" if scale.graded else " with answers") +
             " to see whether the model improved on prompts it did not train on."}
    elif base is None:
        said = (f"{scale.what} {scale.value(tuned)} on {n} held-out prompts" if scale.graded
                else f"{_p(tuned)} of {n} held-out prompts answered right (final number)")
        v = {"kind": "no_comparison", "metric": scale.metric, "tuned": tuned, "text": f"After {name}: {said}.{trend}"}
    else:
        d, ci = tuned - base, scale.interval(scored)
        detail = scale.diff(d) + (f", 95% CI {scale.diff(ci[0])} to {scale.diff(ci[1])}" if ci
                                  else ", no confidence interval")
        if ci and ci[0] <= 0 <= ci[1] and not (ci[0] == ci[1] == 0 and d == 0):
            kind, head = "unclear", "No clear difference on held-out prompts"
        elif d > 0:
            kind, head = "better", f"{name} helped on held-out prompts"
        elif d < 0:
            kind, head = "worse", f"{name} made held-out answers worse"
        else:
            kind, head = "same", ("The held-out mean reward did not change" if scale.graded
                                  else "Held-out accuracy did not change")
        text = (f"{head}: {scale.what} {scale.value(base)} → {scale.value(tuned)} ({detail}) on "
                f"{n} prompts.{trend}")
        if isinstance(n, int) and n < 30:
            text += " Few prompts: treat this as a rough signal."
        v = {"kind": kind, "metric": scale.metric, "tuned": tuned, "base": base, "diff": d, "ci95": ci,
             "text": text}
    reward_keys = {"total": "reward"} | {
        k.split("/")[1]: k for k in dict.fromkeys(key for row in run.metrics or [] for key in row)
        if k.startswith("rewards/") and k.endswith("/mean")}
    held_out = (f"Held-out score: the mean reward {scale.grader} give greedy answers to validation prompts (on "
                "their own scale), and the share of prompts whose tuned answer scored above the base's (win rate)."
                if scale.judged else
                f"Held-out score: the mean reward {scale.grader} gives greedy answers to validation prompts (on the "
                f"grader's own scale); an answer counts as right (✓) at {scale.threshold:g} or more." if scale.graded
                else "Held-out accuracy: greedy answers to validation prompts whose final number matches the "
                "reference.")
    return {"kind": "online_rl", "method": method, "rows": rows, "verdict": v, "chance": {},
            "panels": _panels(run, [("mean reward per answer", reward_keys), ("KL to the starting model", {"kl": "kl"}),
                                    ("answer length (tokens)", {"mean": "completions/mean_length"}),
                                    ("share of answers the grader failed on", {"grader": "grader/error_rate"})]),
            "examples": _rl_examples(scored),
            "explain": (f"{name} samples two answers per training prompt and trains the better-scored one as preferred "
                        "over the other (DPO's loss); beta keeps the model near where it started. "
                        if method == "online_dpo" else
                        f"{name} samples several answers per training prompt and makes the ones that score above the "
                        "others more likely; the KL term keeps the model near where it started. ") + held_out}


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
