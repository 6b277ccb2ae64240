"""A graded answer, shaped as OpenAI's graders/run response, and the ways grading goes wrong: one answer
(GradeFailure, scored 0 and flagged) or the grader as a whole (GraderError)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import TunelabError

# OpenAI's graders/run metadata.errors flags; a flag's `<flag>_details` (where set) says what happened
ERROR_FLAGS = ("formula_parse_error", "invalid_variable_error", "model_grader_parse_error",
               "model_grader_refusal_error", "model_grader_server_error", "other_error", "python_grader_runtime_error",
               "python_grader_server_error", "sample_parse_error", "truncated_observation_error",
               "unresponsive_reward_error")
Pair = tuple[dict[str, Any], dict[str, Any]]  # (sample, item)


class GraderError(TunelabError):
    """A grader that can't grade at all (it failed on every answer it was given)."""


@dataclass
class GradeResult:
    """One graded answer, shaped as OpenAI's graders/run response."""

    reward: float
    sub_rewards: dict[str, float] = field(default_factory=dict)  # a multi grader's graders, by name
    metadata: dict[str, Any] = field(default_factory=dict)  # name, type, errors, execution_time, scores, ...
    model_grader_token_usage_per_model: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def errors(self) -> list[str]:
        """The error flags raised while grading (empty when it graded cleanly)."""
        return [f for f in ERROR_FLAGS if self.metadata.get("errors", {}).get(f)]

    def to_dict(self) -> dict[str, Any]:
        return {"reward": self.reward, "sub_rewards": self.sub_rewards, "metadata": self.metadata,
                "model_grader_token_usage_per_model": self.model_grader_token_usage_per_model}


class GradeFailure(Exception):
    """What went wrong grading one answer: an OpenAI error flag and its details (the answer scores 0)."""

    def __init__(self, flag: str, details: str) -> None:
        super().__init__(details)
        self.flag, self.details = flag, details


def result(g: Any, reward: float, seconds: float, *, errors: dict[str, Any] | None = None,
           scores: dict[str, Any] | None = None, sub: dict[str, float] | None = None,
           usage: dict[str, dict[str, int]] | None = None) -> GradeResult:
    """The result of grader `g` on one answer, every error flag present (False unless given)."""
    tokens = sum(u.get("total_tokens", 0) for u in (usage or {}).values())
    meta = {"name": g.name, "type": g.type, "errors": {f: False for f in ERROR_FLAGS} | (errors or {}),
            "execution_time": round(seconds, 4), "scores": scores if scores is not None else {g.name: reward},
            "token_usage": tokens if usage else None, "sampled_model_name": None}
    return GradeResult(reward, sub or {}, meta, usage or {})


def failed(g: Any, exc: GradeFailure, seconds: float) -> GradeResult:
    """An answer grader `g` could not grade: reward 0, the failure's flag and details set."""
    return result(g, 0.0, seconds, errors={exc.flag: True, f"{exc.flag}_details": exc.details}, scores={})


def describe(r: GradeResult) -> str:
    """A failed result's errors in one line."""
    errors = r.metadata.get("errors", {})
    return "; ".join(f"{f}: {errors.get(f + '_details') or errors.get('python_grader_server_error_type') or ''}"
                     for f in r.errors)
