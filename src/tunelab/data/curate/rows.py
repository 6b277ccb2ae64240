"""The rows curation works on and what it finds in them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from ..records import Record

Step = Literal["unreadable", "format", "duplicates", "leaks", "contamination", "personal_data", "labels", "quality"]
Action = Literal["drop", "change", "flag"]


def map_strings(obj: Any, fn: Callable[[str], str]) -> Any:
    """obj with fn applied to every string value inside it (dict keys stay as they are)."""
    if isinstance(obj, str):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: map_strings(v, fn) for k, v in obj.items()}
    if isinstance(obj, list):
        return [map_strings(v, fn) for v in obj]
    return obj


def strings(obj: Any) -> list[str]:
    """Every string value inside obj, in order."""
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in strings(v)]
    if isinstance(obj, list):
        return [s for v in obj for s in strings(v)]
    return []


@dataclass
class Row:
    """One row as read (the user's own keys, written back as such) and, for SFT and classification data, its
    canonical record; preference rows have none."""

    where: str  # "file:line"
    data: dict[str, Any]
    record: Record | None = None
    split: Literal["train", "validation"] = "train"
    source: str = ""  # the file it was read from: the curated copy keeps rows in their files

    def text(self) -> str:
        """All the text the row carries: what duplicates, leaks and personal data are looked for in."""
        r = self.record
        if r is None:
            return "\n".join(strings(self.data))
        if r.kind == "chat":
            return "\n".join(str(m.get("content") or "") for m in r.messages)
        if r.kind == "completion":
            return f"{r.prompt}\n{r.completion}"
        return r.text

    def reply(self) -> str | None:
        """What the model learns to produce: the last assistant turn, the completion, the text (completion
        task) or the label; None for preference rows."""
        r = self.record
        if r is None:
            return None
        if r.kind == "chat":
            answers = [m for m in r.messages if m.get("role") == "assistant"]
            return str(answers[-1].get("content") or "") if answers else ""
        if r.kind == "completion":
            return r.completion
        return r.label if r.kind == "classification" else r.text

    def rewrite(self, fn: Callable[[str], str]) -> bool:
        """Apply fn to every string of the row (both forms); whether anything changed. Labels stay as they are."""
        label_key = [k for k, v in self.data.items() if self.record is not None and self.record.kind ==
                     "classification" and v == self.record.label]
        data = {k: (v if k in label_key else map_strings(v, fn)) for k, v in self.data.items()}
        changed = data != self.data
        self.data = data
        r = self.record
        if r is not None:
            self.record = replace(r, messages=map_strings(r.messages, fn), prompt=fn(r.prompt),
                                  completion=fn(r.completion), text=fn(r.text))
        return changed


@dataclass
class Finding:
    """One thing found in one row; drop and change findings are applied to the curated copy, flags are not."""

    where: str
    step: Step
    action: Action
    reason: str  # one line for people, e.g. "near-duplicate of data.jsonl:12 (similarity 0.91)"
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"where": self.where, "step": self.step, "action": self.action, "reason": self.reason,
                "detail": self.detail}
