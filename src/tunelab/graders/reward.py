"""A grader as the reward of TRL's GRPO/RLOO trainers, and the dataset column that carries each row's item."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Sequence
from typing import Any

from ..config.graders import ScoreModelGrader
from ..rewards import text_of
from .grading import grade_many
from .python_grader import PYTHON_TIMEOUT
from .results import GraderError, GradeResult, describe
from .templates import sample_from_text

log = logging.getLogger(__name__)


def pass_threshold(grader: Any) -> float:
    """The reward at which an answer counts as right in reports: the middle of a score model's range, else 0.5."""
    if isinstance(grader, ScoreModelGrader) and grader.range:
        return (grader.range[0] + grader.range[1]) / 2
    return 0.5


def items_of(column: Sequence[Any] | None, n: int) -> list[dict[str, Any]]:
    """The dataset's `item` column (each row's fields as a JSON string) back to dicts."""
    if column is None:
        return [{} for _ in range(n)]
    return [json.loads(x) if isinstance(x, str) else dict(x or {}) for x in column]


def item_column(item: dict[str, Any]) -> str:
    """A row's item as the dataset carries it: a JSON string, because rows' fields differ and Arrow columns can't."""
    return json.dumps(item, default=str)


class GraderReward:
    """A grader as TRL's reward function: (prompts, completions, item=[...], **columns) -> one reward each. An
    answer the grader fails on scores 0 and is counted (an untrained model's answers may well break a grader that
    expects JSON); a grader model's server failing on every answer of the first call stops the run."""

    def __init__(self, grader: Any, python_timeout: float = PYTHON_TIMEOUT) -> None:
        self.grader, self.python_timeout = grader, python_timeout
        self.__name__ = re.sub(r"[^\w-]", "_", grader.name) or "grader"  # TRL logs rewards/<name>/mean
        self.graded = self.failed = 0
        self.first_error: str | None = None

    def __call__(self, prompts: list[Any], completions: list[Any], item: Sequence[Any] | None = None,
                 log_metric: Callable[[str, float], None] | None = None, **kwargs: Any) -> list[float]:
        results = self.grade([text_of(c) for c in completions], items_of(item, len(completions)))
        if log_metric is not None:
            log_metric("grader/error_rate", sum(bool(r.errors) for r in results) / max(len(results), 1))
            for name in results[0].sub_rewards if results else []:
                log_metric(f"grader/{name}", sum(r.sub_rewards[name] for r in results) / len(results))
        return [r.reward for r in results]

    def grade(self, texts: list[str], items: list[dict[str, Any]]) -> list[GradeResult]:
        """Graded answers, failures counted; GraderError when the grader model's server failed them all at the
        first call (nothing an answer could have caused)."""
        results = grade_many(self.grader, [(sample_from_text(t), i) for t, i in zip(texts, items, strict=True)],
                             python_timeout=self.python_timeout)
        failed = [r for r in results if r.errors]
        first = self.graded == 0
        self.graded += len(results)
        self.failed += len(failed)
        if failed and first and len(failed) == len(results) and all(
                r.errors == ["model_grader_server_error"] for r in failed):
            raise GraderError(f"grader {self.grader.name!r}: its model's server failed on every one of the "
                              f"{len(results)} answers it was first given: {describe(failed[0])}")
        if failed and self.first_error is None:
            self.first_error = describe(failed[0])
            log.warning("grader %r failed on an answer (scored 0): %s", self.grader.name, self.first_error)
        return results


def reward_function(grader: Any, *, python_timeout: float = PYTHON_TIMEOUT) -> GraderReward:
    """The grader as a reward function for TRL's GRPO/RLOO trainers (check() it first)."""
    return GraderReward(grader, python_timeout)
