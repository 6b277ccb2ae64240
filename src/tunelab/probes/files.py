"""Probe sets: the shipped ones and users' own files, checked with errors that say where and what to do.

forgetting_qa.jsonl   {"question", "answers": [...], "topic"}: short questions with checkable answers; a user's
                      file may add "with_system_prompt": true to ask with the run's system prompt (a rule the
                      tuned model must keep, e.g. sending people to a clinician)
general_text.jsonl    {"text"}: plain prose for perplexity
counterfactual.yaml   attributes (groups of slot fillers) and templates (messages with {slots})
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..data.records import DataError, Problem


def shipped(name: str) -> Path:
    return Path(str(resources.files("tunelab").joinpath("probes", "data", name)))


@dataclass
class Question:
    where: str
    question: str
    answers: list[str]
    topic: str = ""
    system: bool = False  # asked with the run's system prompt, as the deployed model is
    own: bool = False  # from the user's files: its topic is checked on its own


@dataclass
class Template:
    where: str
    text: str
    reference: str | None = None

    @property
    def slots(self) -> set[str]:
        return {f for _, f, _, _ in string.Formatter().parse(self.text) if f}


Variant = dict[str, str]  # slot -> term


@dataclass
class BiasSet:
    attributes: dict[str, dict[str, list[Variant]]] = field(default_factory=dict)  # attribute -> group -> variants
    templates: list[Template] = field(default_factory=list)

    def applies(self, template: Template, attribute: str) -> bool:
        """Every variant of the attribute fills every slot of the template."""
        slots = template.slots
        return bool(slots) and all(slots <= set(v) for g in self.attributes[attribute].values() for v in g)


def _jsonl(path: Path) -> list[tuple[str, dict[str, Any]]]:
    if not path.is_file():
        raise DataError([Problem(str(path), "probe file not found")])
    rows, problems = [], []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            problems.append(Problem(f"{path}:{i}", f"not valid JSON: {exc}"))
            continue
        if not isinstance(row, dict):
            problems.append(Problem(f"{path}:{i}", "expected a JSON object per line"))
            continue
        rows.append((f"{path}:{i}", row))
    if problems:
        raise DataError(problems)
    return rows


def load_questions(paths: list[str | Path], own: bool = False) -> list[Question]:
    out, problems = [], []
    for path in paths:
        for where, row in _jsonl(Path(path)):
            q, answers, system = row.get("question"), row.get("answers"), row.get("with_system_prompt", False)
            if isinstance(answers, str):
                answers = [answers]
            if not isinstance(q, str) or not q.strip():
                problems.append(Problem(where, "field 'question' must be a non-empty string", field="question"))
            elif not isinstance(answers, list) or not answers or not all(isinstance(a, str) and a for a in answers):
                problems.append(Problem(where, "field 'answers' must list the accepted answers, e.g. "
                                        '["Paris"]', field="answers"))
            elif not isinstance(system, bool):
                problems.append(Problem(where, f"field 'with_system_prompt' must be true or false, got {system!r}",
                                        field="with_system_prompt"))
            else:
                out.append(Question(where, q, answers, str(row.get("topic", "")), system, own))
    if problems:
        raise DataError(problems, hint="fix the probe file(s) named in eval.probes")
    return out


def load_texts(paths: list[str | Path]) -> list[str]:
    out, problems = [], []
    for path in paths:
        for where, row in _jsonl(Path(path)):
            if isinstance(row.get("text"), str) and row["text"].strip():
                out.append(row["text"])
            else:
                problems.append(Problem(where, "field 'text' must be a non-empty string", field="text"))
    if problems:
        raise DataError(problems)
    return out


def _yaml(path: Path) -> dict[str, Any]:
    import yaml

    if not path.is_file():
        raise DataError([Problem(str(path), "probe file not found")])
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise DataError([Problem(where, f"not valid YAML: {getattr(exc, 'problem', exc)}")]) from None
    if not isinstance(doc, dict) or not set(doc) <= {"attributes", "templates"}:
        raise DataError([Problem(str(path), "expected a mapping with the keys 'attributes' and/or 'templates' "
                                 f"(see {shipped('counterfactual.yaml')})")])
    return doc


def _attributes(path: Path, raw: Any, problems: list[Problem]) -> dict[str, dict[str, list[Variant]]]:
    out: dict[str, dict[str, list[Variant]]] = {}
    if not isinstance(raw, dict):
        problems.append(Problem(f"{path}: attributes", "expected attribute -> group -> list of variants"))
        return out
    for attr, groups in raw.items():
        where = f"{path}: attributes.{attr}"
        if not isinstance(groups, dict) or len(groups) < 2:
            problems.append(Problem(where, "an attribute needs at least two groups to compare"))
            continue
        parsed: dict[str, list[Variant]] = {}
        for group, variants in groups.items():
            variants = variants if isinstance(variants, list) else [variants]
            if not variants or not all(isinstance(v, dict) and v and all(isinstance(t, str | int) for t in v.values())
                                       for v in variants):
                problems.append(Problem(f"{where}.{group}", "each variant must map slots to terms, e.g. "
                                        "{name: Emily, pronoun: she}"))
                continue
            parsed[str(group)] = [{str(k): str(t) for k, t in v.items()} for v in variants]
        out[str(attr)] = parsed
    return out


def load_bias(paths: list[str | Path]) -> BiasSet:
    """Templates from every file, in order; an attribute defined again replaces the earlier one."""
    bias, problems = BiasSet(), []
    for p in paths:
        path = Path(p)
        doc = _yaml(path)
        bias.attributes.update(_attributes(path, doc.get("attributes", {}), problems))
        for i, t in enumerate(doc.get("templates") or []):
            where = f"{path}: templates[{i}]"
            t = {"text": t} if isinstance(t, str) else t
            if not isinstance(t, dict) or not isinstance(t.get("text"), str):
                problems.append(Problem(where, "a template needs 'text' (and optionally 'reference')"))
                continue
            try:
                tpl = Template(where, t["text"], t.get("reference"))
                _ = tpl.slots
            except ValueError as exc:
                problems.append(Problem(where, f"bad {{slot}} syntax in {t['text']!r}: {exc}"))
                continue
            bias.templates.append(tpl)
    slots = {s for groups in bias.attributes.values() for g in groups.values() for v in g for s in v}
    for t in bias.templates:
        if not t.slots:
            problems.append(Problem(t.where, f"{t.text!r} has no {{slot}} to swap; use one of {sorted(slots)}"))
        elif not any(bias.applies(t, a) for a in bias.attributes):
            problems.append(Problem(t.where, f"no attribute fills all of {sorted(t.slots)}; the slots attributes "
                                    f"fill are {sorted(slots)}"))
    if problems:
        raise DataError(problems, hint="fix the bias probe file(s) named in eval.probes.bias_files")
    return bias
