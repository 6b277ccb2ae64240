"""Config reference (markdown) and JSON schema, generated from the field docs."""

from __future__ import annotations

import json

from pydantic import BaseModel

from .schema import TunelabConfig


def json_schema() -> str:
    return json.dumps(TunelabConfig.model_json_schema(), indent=2)


def _is_section(annotation: object) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _rows(model: type[BaseModel], prefix: str, out: list[str], sections: list[tuple[str, type[BaseModel]]]) -> None:
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        if _is_section(field.annotation):
            sections.append((key, field.annotation))  # type: ignore[arg-type]
            continue
        default = field.get_default(call_default_factory=True)
        doc = (field.description or "").replace("\n", " ")
        doc = " ".join(doc.split())
        out.append(f"| `{key}` | `{json.dumps(default)}` | {doc} |")


def markdown_reference() -> str:
    lines = [
        "# Config reference",
        "",
        "Generated from the config schema (`tunelab config reference`); every key, its default and meaning.",
        "Any key can be overridden on the command line: `tunelab train cfg.yaml train.learning_rate=1e-4`.",
        "",
    ]
    pending: list[tuple[str, type[BaseModel]]] = [("", TunelabConfig)]
    while pending:
        key, model = pending.pop(0)
        title = key or "top level"
        lines += [f"## {title}", ""]
        if model.__doc__ and key:
            lines += [" ".join(model.__doc__.split()), ""]
        lines += ["| key | default | meaning |", "|---|---|---|"]
        sub: list[tuple[str, type[BaseModel]]] = []
        _rows(model, f"{key}." if key else "", lines, sub)
        lines.append("")
        pending = sub + pending
    return "\n".join(lines)


def flat_fields(model: type[BaseModel] = TunelabConfig, prefix: str = "") -> list[tuple[str, object, str]]:
    """(dotted key, default, doc) for every leaf field."""
    rows: list[tuple[str, object, str]] = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        if _is_section(field.annotation):
            rows += flat_fields(field.annotation, f"{key}.")  # type: ignore[arg-type]
        else:
            doc = " ".join((field.description or "").split())
            rows.append((key, field.get_default(call_default_factory=True), doc))
    return rows


def keys_help() -> str:
    """Config keys for `tunelab train --help`, from the same field docs."""
    lines = ["Config keys (set in the YAML file or override as key=value):", ""]
    for key, default, doc in flat_fields():
        lines.append(f"{key} (default {json.dumps(default)}): {doc.split('. ')[0].rstrip('.')}")
    return "\n\n".join(lines)
