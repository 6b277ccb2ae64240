"""YAML + dotted overrides -> TunelabConfig, with errors that say file:line, key and what to do."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

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

    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines
    if root is not None:
        walk(root, ())
    return lines


def _section_model(path: tuple[str, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = TunelabConfig
    for part in path:
        field = model.model_fields.get(part)
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return None
        model = field.annotation
    return model


def _field_path(loc: tuple[object, ...]) -> tuple[str, ...]:
    """Drop pydantic's union-member tags (e.g. 'constrained-int') from an error location."""
    return tuple(str(p) for p in loc if str(p).isidentifier() or isinstance(p, int))


def _where(loc: tuple[str, ...], source: str, lines: dict[tuple[str, ...], int],
           from_cli: dict[tuple[str, ...], str]) -> str:
    """The override that set a key (the last word), else the key's line in the file."""
    if loc in from_cli:
        return f"command-line override '{from_cli[loc]}'"
    line = lines.get(loc)
    return f"{source}:{line}" if line else source


def _explain(err: ValidationError, source: str, lines: dict[tuple[str, ...], int],
             from_cli: dict[tuple[str, ...], str] | None = None) -> str:
    grouped: dict[tuple[str, ...], list[str]] = {}
    values: dict[tuple[str, ...], object] = {}
    out = []
    for e in err.errors():
        loc = _field_path(e["loc"])
        where = _where(loc, source, lines, from_cli or {})
        key = ".".join(loc)
        if e["type"] == "config_rules":  # rules across fields: each at the line of the key it names
            for key, msg in e["ctx"]["problems"]:
                out.append(f"{_where(tuple(key.split('.')), source, lines, from_cli or {})}: {msg}")
        elif e["type"] == "extra_forbidden":
            section = _section_model(loc[:-1])
            valid = sorted(section.model_fields) if section else []
            close = difflib.get_close_matches(loc[-1], valid, n=1) if loc else []
            hint = f" Did you mean '{'.'.join((*loc[:-1], close[0]))}'?" if close else ""
            out.append(f"{where}: unknown key '{key}'.{hint} Valid keys here: {', '.join(valid)}")
        else:
            grouped.setdefault(loc, []).append(e["msg"])
            values[loc] = e.get("input")
    for loc, msgs in grouped.items():
        where = _where(loc, source, lines, from_cli or {})
        out.append(f"{where}: {'.'.join(loc)} = {values[loc]!r}: {' or '.join(dict.fromkeys(msgs))}")
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
