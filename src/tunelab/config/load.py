"""YAML + dotted overrides -> TunelabConfig, with errors that say file:line, key and what to do."""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from ..errors import TunelabError
from .schema import TunelabConfig


class ConfigError(TunelabError, ValueError):
    """A config problem a user can fix; the message says where and how."""


def _key_lines(text: str) -> dict[tuple[str, ...], int]:
    """Map each dotted key path in a YAML document to its 1-based line."""
    lines: dict[tuple[str, ...], int] = {}

    def walk(node: yaml.Node, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                sub = (*path, str(key.value))
                lines[sub] = key.start_mark.line + 1
                walk(value, sub)
        elif isinstance(node, yaml.SequenceNode):  # list items, as error locations number them
            for i, value in enumerate(node.value):
                sub = (*path, str(i))
                lines[sub] = value.start_mark.line + 1
                walk(value, sub)

    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines
    if root is not None:
        walk(root, ())
    return lines


def _union(annotation: Any) -> tuple[Any, dict[str, Any] | None]:
    """The annotation with Optional and plain Annotated taken off, and, for a union, pydantic's label of each member
    in an error location -> the member: a discriminated union's tag values, a plain union's type names ('str',
    'list[...]', 'tagged-union[...]'; prefixes, as pydantic spells the rest out)."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            inner, *meta = get_args(annotation)
            key = next((m.discriminator for m in meta if isinstance(getattr(m, "discriminator", None), str)), None)
            if key is None:
                annotation = inner
                continue
            return annotation, {tag: member for member in get_args(inner) for tag in _tags(member, key)}
        if origin in (typing.Union, types.UnionType):
            members = [m for m in get_args(annotation) if m is not type(None)]
            if len(members) == 1:
                annotation = members[0]
                continue
            return annotation, {_label(m): m for m in members}
        return annotation, None


def _tags(member: Any, key: str) -> list[str]:
    field = member.model_fields.get(key) if isinstance(member, type) and issubclass(member, BaseModel) else None
    return [str(t) for t in get_args(field.annotation)] if field and get_origin(field.annotation) is Literal else []


def _label(member: Any) -> str:
    origin = get_origin(member)
    if origin is Annotated:  # a discriminated union inside a plain one
        return "tagged-union["
    return f"{getattr(origin, '__name__', origin)}[" if origin is not None else getattr(member, "__name__", str(member))


def _member(choices: dict[str, Any], part: str) -> Any:
    if part in choices:
        return choices[part]
    return next((m for label, m in choices.items() if label.endswith("[") and part.startswith(label)), None)


def field_path(loc: tuple[object, ...], root: Any = TunelabConfig) -> tuple[tuple[str, ...], type[BaseModel] | None]:
    """An error location as the keys the user wrote, and the section the last one is looked up in (None where the
    schema does not say). pydantic puts the union member it tried into the location (a grader's type:
    rl.grader.multi.graders.a.string_check.operation): walked through the schema, those labels are dropped, so
    the location reads rl.grader.graders.a.operation and has a line in the YAML."""
    out: list[str] = []
    annotation: Any = root
    section: type[BaseModel] | None = None
    for p in loc:
        part = str(p)
        annotation, choices = _union(annotation)
        if choices is not None:
            member = _member(choices, part)
            if member is not None:
                annotation = member
                continue
            annotation = None
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            section, field = annotation, annotation.model_fields.get(part)
            annotation = None if field is None else field.annotation
            if field is not None and field.discriminator:  # Field(discriminator=...) on the field itself
                annotation = Annotated[annotation, field]
        elif get_origin(annotation) in (dict, list):
            section, annotation = None, get_args(annotation)[-1]
        else:
            section, annotation = None, None
            if not (part.isidentifier() or isinstance(p, int)):  # a union label the schema walk did not reach
                continue
        out.append(part)
    return tuple(out), section


def _where(loc: tuple[str, ...], source: str, lines: dict[tuple[str, ...], int],
           from_cli: dict[tuple[str, ...], str]) -> str:
    """The override that set the key or a section above it (the last word), else the line of the key, or of the
    nearest section above it that the file has (a missing key, a rule across a section's fields)."""
    prefixes = [loc[:n] for n in range(len(loc), 0, -1)]
    cli = next((from_cli[p] for p in prefixes if p in from_cli), None)
    if cli is not None:
        return f"command-line override '{cli}'"
    line = next((lines[p] for p in prefixes if p in lines), None)
    return f"{source}:{line}" if line else source


def _explain(err: ValidationError, source: str, lines: dict[tuple[str, ...], int],
             from_cli: dict[tuple[str, ...], str] | None = None) -> str:
    grouped: dict[tuple[str, ...], list[str]] = {}
    values: dict[tuple[str, ...], object] = {}
    out = []
    for e in err.errors():
        loc, section = field_path(e["loc"])
        where = _where(loc, source, lines, from_cli or {})
        key = ".".join(loc)
        if e["type"] == "config_rules":  # rules across fields: each at the line of the key it names
            for key, msg in e["ctx"]["problems"]:
                out.append(f"{_where(tuple(key.split('.')), source, lines, from_cli or {})}: {msg}")
        elif e["type"] == "extra_forbidden":
            valid = sorted(section.model_fields) if section else []
            close = difflib.get_close_matches(loc[-1], valid, n=1) if loc else []
            hint = f" Did you mean '{'.'.join((*loc[:-1], close[0]))}'?" if close else ""
            out.append(f"{where}: unknown key '{key}'.{hint} Valid keys here: {', '.join(valid)}")
        elif e["type"] == "missing":  # its input is the section around it: nothing worth repeating
            out.append(f"{where}: {key} is required and not given")
        else:
            grouped.setdefault(loc, []).append(e["msg"].removeprefix("Value error, "))
            values[loc] = e.get("input")
    for loc, msgs in grouped.items():
        where = _where(loc, source, lines, from_cli or {})
        # a section's whole mapping (a grader with its python source) would bury the message
        shown = "" if isinstance(values[loc], dict) else f" = {values[loc]!r}"
        out.append(f"{where}: {'.'.join(loc)}{shown}: {' or '.join(dict.fromkeys(msgs))}")
    return "\n".join(out)


def _parse_value(raw: str) -> Any:
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides (values parsed as YAML) to a nested dict."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not key=value (e.g. train.learning_rate=1e-4)")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for p in parts[:-1]:
            if node.get(p) is None:  # absent, or a YAML section left empty
                node[p] = {}
            nxt = node[p]
            if not isinstance(nxt, dict):
                raise ConfigError(f"override '{item}': '{p}' is not a section")
            node = nxt
        node[parts[-1]] = _parse_value(raw)
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, *,
                rules: bool = True) -> TunelabConfig:
    """Read a YAML config (or start from defaults), apply overrides, validate. rules=False skips the rules across
    fields: for a run's own config read back, which trained as it was (even under an earlier tunelab)."""
    text, source, data = "", "<defaults>", {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found (create one with `tunelab init`)")
        text, source = p.read_text(), str(p)
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{source}:{mark.line + 1}" if mark else source
            raise ConfigError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: the config must be a mapping of keys to values")
    data = apply_overrides(data, list(overrides or []))
    try:
        cfg = TunelabConfig.model_validate(data, context={"rules": rules})
    except ValidationError as err:
        from_cli = {tuple(o.split("=", 1)[0].strip().split(".")): o for o in overrides or []}
        raise ConfigError(_explain(err, source, _key_lines(text), from_cli)) from None
    if cfg.name is None:
        cfg.name = Path(path).stem if path is not None else "run"
    return cfg


def dump_config(cfg: TunelabConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
