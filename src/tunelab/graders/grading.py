"""Grading answers: each grader type to the module that runs it, a multi grader's graders combined."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from ..config.graders import (
    LabelModelGrader,
    MultiGrader,
    PythonGrader,
    ScoreModelGrader,
    StringCheckGrader,
    TextSimilarityGrader,
)
from .model_graders import grade_model
from .multi import combine
from .python_grader import PYTHON_TIMEOUT, grade_python
from .results import GradeFailure, GradeResult, Pair, failed, result
from .templates import full_sample, render
from .text_similarity import similarity


def grade(grader: Any, sample: dict[str, Any], item: dict[str, Any] | None = None, *,
          python_timeout: float = PYTHON_TIMEOUT) -> GradeResult:
    """One answer graded. `sample` holds output_text (output_json is filled in from it when absent)."""
    return grade_many(grader, [(sample, item or {})], python_timeout=python_timeout)[0]


def grade_many(grader: Any, pairs: Sequence[Pair], *, python_timeout: float = PYTHON_TIMEOUT) -> list[GradeResult]:
    """Many answers graded in one go (one Python process, one batch through a reward model)."""
    full = [(full_sample(s), i if isinstance(i, dict) else {}) for s, i in pairs]
    if isinstance(grader, MultiGrader):
        t0 = time.perf_counter()
        subs = {name: _grade_plain(sub, full, python_timeout) for name, sub in grader.graders.items()}
        return combine(grader, subs, (time.perf_counter() - t0) / max(len(full), 1))
    return _grade_plain(grader, full, python_timeout)


def _grade_plain(grader: Any, pairs: list[Pair], python_timeout: float) -> list[GradeResult]:
    """Any grader but multi (a multi grader's graders are never multi graders themselves)."""
    if isinstance(grader, PythonGrader):
        return grade_python(grader, pairs, python_timeout)
    if isinstance(grader, ScoreModelGrader | LabelModelGrader):
        return grade_model(grader, pairs)
    return [_compare(grader, s, i) for s, i in pairs]


def _compare(g: StringCheckGrader | TextSimilarityGrader, sample: dict[str, Any], item: dict[str, Any]) -> GradeResult:
    """string_check or text_similarity: input against reference, both rendered."""
    t0 = time.perf_counter()
    try:
        a, b = render(g.input, sample, item), render(g.reference, sample, item)
    except GradeFailure as exc:
        return failed(g, exc, time.perf_counter() - t0)
    if isinstance(g, StringCheckGrader):
        ok = {"eq": a == b, "ne": a != b, "like": b in a, "ilike": b.lower() in a.lower()}[g.operation]
        return result(g, float(ok), time.perf_counter() - t0)
    return result(g, max(0.0, min(1.0, similarity(g.evaluation_metric, a, b))), time.perf_counter() - t0)
