"""Canonical rows and problems shared by every data format."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from ..errors import TunelabError

# {"role", "content", optional "weight" 0/1 (assistant), "tool_calls" (assistant), "tool_call_id" (tool), "name"};
# a tool call is {"id" (optional), "type": "function", "function": {"name", "arguments": a JSON object as text}}
Message = dict[str, Any]
Tool = dict[str, Any]  # {"type": "function", "function": {"name", optional "description", "parameters"}}
_TOOL_FIELDS = frozenset({"tool_calls", "tool_call_id", "name"})


def uses_tools(messages: list[Message], tools: list[Tool] | None) -> bool:
    """Whether a conversation carries function-calling data that its rendering must keep."""
    return bool(tools) or any(m.get("tool_calls") for m in messages)


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
    tools: list[Tool] | None = None  # chat: the functions the assistant may call (OpenAI's `tools`)

    def key(self) -> str:
        """Identity used to find exact duplicates."""
        if self.kind == "chat":
            plain = [(m["role"], m.get("content")) for m in self.messages]
            if not self.tools and not any(_TOOL_FIELDS & m.keys() for m in self.messages):
                return repr(plain)
            # rows that differ only in their calls or tools are different examples
            calls = [tuple(m.get(k) for k in sorted(_TOOL_FIELDS)) for m in self.messages]
            return repr((plain, calls, self.tools))
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
