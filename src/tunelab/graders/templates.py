"""The {{sample.*}} / {{item.*}} templates of a grader, filled in from an answer and its dataset row."""

from __future__ import annotations

import json
import re
from typing import Any

from ..config.graders import (
    TEMPLATE,
    GraderMessage,
    LabelModelGrader,
    MultiGrader,
    ScoreModelGrader,
    StringCheckGrader,
    TextSimilarityGrader,
    template_paths,
)
from .results import GradeFailure

SAMPLE_FIELDS = ("output_text", "output_json")


def sample_from_text(text: str) -> dict[str, Any]:
    """The `sample` namespace of a model's answer: its text, and its JSON when the whole answer parses."""
    try:
        parsed = json.loads(text)
    except (ValueError, TypeError):
        parsed = None
    return {"output_text": text, "output_json": parsed}


def full_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """A sample given with its text only gets output_json parsed from it."""
    text = str(sample.get("output_text") or "")
    return sample_from_text(text) | sample if "output_json" not in sample else sample


def templates_of(g: Any) -> list[str]:
    """The template texts of one grader (not of a multi grader's graders)."""
    if isinstance(g, StringCheckGrader | TextSimilarityGrader):
        return [g.input, g.reference]
    if isinstance(g, ScoreModelGrader | LabelModelGrader):
        return [t for m in g.input for t in message_texts(m)]
    return []


def message_texts(m: GraderMessage) -> list[str]:
    parts = m.content if isinstance(m.content, list) else [m.content]
    return [p if isinstance(p, str) else getattr(p, "text", None) or getattr(p, "image_url", "") for p in parts]


def lookup(namespace: str, keys: list[str | int], sample: dict[str, Any], item: dict[str, Any]) -> Any:
    """The value at {{namespace.keys}}; GradeFailure when it isn't there."""
    node: Any = sample if namespace == "sample" else item
    where = namespace
    for k in [*keys, None]:
        if where == "sample.output_json" and node is None:
            raise GradeFailure("sample_parse_error", "the answer is not JSON: {{sample.output_json}} has no value")
        if k is None:
            return node
        if isinstance(node, dict) and str(k) in node:
            node = node[str(k)]
        elif isinstance(node, list) and str(k).isdigit() and int(k) < len(node):  # [0] and .0 alike
            node = node[int(k)]
        else:
            fields = f" (its fields: {', '.join(map(str, node))})" if isinstance(node, dict) and node else ""
            raise GradeFailure("invalid_variable_error", f"{where} has no {k!r}{fields}")
        where = f"{where}.{k}"


def missing_item_fields(grader: Any, item: dict[str, Any]) -> list[str]:
    """The {{item.*}} variables of the grader's templates that this row's item lacks (a python grader's reads
    can't be known ahead)."""
    subs = list(grader.graders.values()) if isinstance(grader, MultiGrader) else [grader]
    out = []
    for g in subs:
        for text in templates_of(g):
            for namespace, keys in template_paths(text):
                try:
                    if namespace == "item":
                        lookup(namespace, keys, {}, item)
                except GradeFailure:
                    out.append("item" + "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in keys))
    return list(dict.fromkeys(out))


def render(template: str, sample: dict[str, Any], item: dict[str, Any]) -> str:
    """{{item.a.b}}, {{sample.output_text}}, {{sample.output_json.x}} filled in: strings as they are, anything
    else as JSON. A variable that isn't there raises GradeFailure (grading scores the answer 0, flagged)."""

    def fill(m: re.Match[str]) -> str:
        try:
            ((namespace, keys),) = template_paths(m.group(0))
        except ValueError as exc:  # a grader validated first never has one
            raise GradeFailure("invalid_variable_error", str(exc)) from None
        value = lookup(namespace, keys, sample, item)
        return value if isinstance(value, str) else json.dumps(value, default=str)

    return TEMPLATE.sub(fill, template)
