"""Canonical rows and problems shared by every data format."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from ..errors import TunelabError

Message = dict[str, Any]  # {"role", "content", optional "weight" 0/1}


@dataclass
class Record:
    """One example in canonical form; exactly one group of fields is set, by kind."""

    where: str  # "file:line" of the source row
    kind: Literal["chat", "completion", "text", "classification"]
    messages: list[Message] = field(default_factory=list)  # chat
    prompt: str = ""  # completion
    completion: str = ""
    text: str = ""  # text, classification input
    label: str = ""  # classification

    def key(self) -> str:
        """Identity used to find exact duplicates."""
        if self.kind == "chat":
            return repr([(m["role"], m.get("content")) for m in self.messages])
        return repr((self.kind, self.prompt, self.completion, self.text, self.label))


@dataclass
class Problem:
    where: str  # "file:line"
    message: str
    severity: Literal["error", "warning"] = "error"
    field: str | None = None

    def __str__(self) -> str:
        return f"{self.where}: {self.severity}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class DataError(TunelabError, ValueError):
    """The data can't be used as given; the message lists every problem with file:line."""

    def __init__(self, problems: list[Problem], hint: str = "") -> None:
        self.problems = problems
        shown = "\n".join(str(p) for p in problems[:50])
        more = f"\n... and {len(problems) - 50} more" if len(problems) > 50 else ""
        super().__init__(f"{shown}{more}{chr(10) + hint if hint else ''}")


class RowError(ValueError):
    """Raised by an encoder for a row it can't use; reported like any other row problem."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field
