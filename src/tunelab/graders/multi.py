"""The multi grader: its graders' rewards combined by the formula in calculate_output (parsed, never eval'd)."""

from __future__ import annotations

import math
from typing import Any

from ..config.graders import MultiGrader, evaluate_formula, parse_formula
from .results import GradeResult, result


def combine(g: MultiGrader, subs: dict[str, list[GradeResult]], seconds: float) -> list[GradeResult]:
    """One result per answer from each grader's results on the same answers (`subs`: name -> results in order).
    A grader's failure is the multi grader's too (its reward counts as 0); so is a formula without a finite
    value (division by zero, log of a negative), which scores 0."""
    tree = parse_formula(g.calculate_output, set(g.graders))
    n = len(next(iter(subs.values()), []))
    out = []
    for i in range(n):
        rewards = {name: results[i].reward for name, results in subs.items()}
        errors: dict[str, Any] = {}
        usage: dict[str, dict[str, int]] = {}
        for results in subs.values():
            errors |= {k: v for k, v in results[i].metadata["errors"].items() if v}
            for model, u in results[i].model_grader_token_usage_per_model.items():
                usage[model] = {k: usage.get(model, {}).get(k, 0) + c for k, c in u.items()}
        try:
            reward = evaluate_formula(tree, rewards)
            if not math.isfinite(reward):
                raise ValueError(f"the formula gave {reward}")
        except (ArithmeticError, ValueError, TypeError) as exc:
            reward = 0.0
            errors |= {"other_error": True, "other_error_details": f"calculate_output {g.calculate_output!r}: {exc}"}
        out.append(result(g, reward, seconds, errors=errors, scores=dict(rewards), sub=rewards, usage=usage))
    return out
