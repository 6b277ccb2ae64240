"""What can be known about a grader before it grades anything: its fields (validate) and whether tunelab can run
it here (check: metrics, template variables, where a grader model lives). Cheap: nothing is loaded or called."""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter, ValidationError

from ..config import ConfigError
from ..config.graders import (
    Grader,
    LabelModelGrader,
    MultiGrader,
    ScoreModelGrader,
    TextSimilarityGrader,
    template_paths,
)
from ..config.load import field_path
from .model_graders import check_model
from .templates import SAMPLE_FIELDS, templates_of
from .text_similarity import check_metric

_ADAPTER: TypeAdapter[Any] = TypeAdapter(Grader)


def validate(data: Any) -> Grader:
    """A grader object (as JSON decodes it) -> the typed grader, checked as `check` does; ConfigError names the
    field that is wrong (e.g. `graders.email.operation`)."""
    if isinstance(data, dict) and data.get("type") == "label_model":
        raise ConfigError("grader: a label_model grader is only allowed inside a multi grader's graders")
    try:
        grader: Grader = _ADAPTER.validate_python(data)
    except ValidationError as err:
        lines = []
        for e in err.errors():
            path = ".".join(field_path(e["loc"], Grader)[0])
            lines.append(f"{path + ': ' if path else ''}{e['msg'].removeprefix('Value error, ')}")
        raise ConfigError("grader is not valid: " + "; ".join(dict.fromkeys(lines))) from None
    check(grader)
    return grader


def check(grader: Any, where: str = "grader") -> None:
    """ConfigError for what tunelab can't run, naming the grader (`where` is its place in the config)."""
    label = f"{where} {grader.name!r}"
    for text in templates_of(grader):
        for namespace, keys in template_paths(text):
            if namespace == "sample" and (not keys or keys[0] not in SAMPLE_FIELDS):
                raise ConfigError(f"{label}: {{{{sample.{'.'.join(map(str, keys))}}}}} is not a sample variable "
                                  f"tunelab fills: use {', '.join('sample.' + f for f in SAMPLE_FIELDS)}")
    if isinstance(grader, TextSimilarityGrader):
        check_metric(grader.evaluation_metric, label)
    elif isinstance(grader, ScoreModelGrader | LabelModelGrader):
        check_model(grader, label)
    elif isinstance(grader, MultiGrader):
        for name, sub in grader.graders.items():
            check(sub, f"{where}.graders.{name}")
