"""Row formats -> canonical Records, with every problem in a row reported at once.

chat (OpenAI `messages`), alpaca (`instruction`/`input`/`output`), sharegpt (`conversations` with
`from`/`value`), completion (`prompt`/`completion`), text (raw `text`), classification (`text` + `label`).
"""

from __future__ import annotations

from typing import Any

from .records import Message, Problem, Record

FORMATS = ("chat", "alpaca", "sharegpt", "completion", "text", "classification")
ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
                  "assistant": "assistant", "chatgpt": "assistant", "bing": "assistant",
                  "tool": "tool", "function_call": "assistant", "observation": "tool"}
PREFERENCE_KEYS = ({"chosen", "rejected"}, {"preferred_output", "non_preferred_output"})


def apply_columns(data: dict[str, Any], columns: dict[str, str]) -> dict[str, Any]:
    """Rename the user's columns to tunelab's names ({tunelab_name: user_column})."""
    if not columns:
        return data
    mapped = {ours: data[theirs] for ours, theirs in columns.items() if theirs in data}
    out = {k: v for k, v in data.items() if k not in columns.values()}  # read from data: swaps work
    out.update(mapped)
    return out


def detect_format(keys: set[str]) -> str | None:
    """The format a row's keys suggest, or None when none fits."""
    if "messages" in keys:
        return "chat"
    if "conversations" in keys:
        return "sharegpt"
    if {"instruction", "output"} <= keys:
        return "alpaca"
    if {"prompt", "completion"} <= keys:
        return "completion"
    if {"text", "label"} <= keys:
        return "classification"
    if "text" in keys:
        return "text"
    return None


def explain_unknown(keys: set[str]) -> str:
    if any(k <= keys for k in PREFERENCE_KEYS):
        return ("this looks like preference data (chosen/rejected): train on it with method: dpo (or reward, kto, "
                "orpo, cpo, simpo)")
    return (f"can't tell the format from the fields {sorted(keys)}; expected one of: messages (chat), "
            "conversations (sharegpt), instruction+output (alpaca), prompt+completion, text+label "
            "(classification), text; map your columns with data.columns (e.g. {text: text, label: category})")


def _text(p: list[Problem], where: str, data: dict[str, Any], key: str, *, required: bool = True) -> str:
    if key not in data or data[key] is None:
        if required:
            p.append(Problem(where, f"missing field '{key}'", field=key))
        return ""
    v = data[key]
    if isinstance(v, bool) or not isinstance(v, str | int | float):
        p.append(Problem(where, f"field '{key}' must be a string, got {type(v).__name__}", field=key))
        return ""
    v = str(v)
    if required and not v.strip():
        p.append(Problem(where, f"field '{key}' is empty", field=key))
    return v


def _check_messages(p: list[Problem], where: str, raw: Any, field: str) -> list[Message]:
    if not isinstance(raw, list):
        p.append(Problem(where, f"field '{field}' must be a list of messages, got {type(raw).__name__}",
                         field=field))
        return []
    if not raw:
        p.append(Problem(where, f"field '{field}' is empty", field=field))
        return []
    out: list[Message] = []
    for i, m in enumerate(raw):
        f = f"{field}[{i}]"
        if not isinstance(m, dict):
            p.append(Problem(where, f"{f} must be an object with role and content, got {type(m).__name__}",
                             field=f))
            continue
        role = m.get("role")
        if role is None:
            p.append(Problem(where, f"{f} is missing 'role'", field=f"{f}.role"))
        elif role not in ROLES:
            p.append(Problem(where, f"{f} has unknown role {role!r}; expected one of {', '.join(ROLES)}",
                             field=f"{f}.role"))
        content = m.get("content")
        if content is None and not m.get("tool_calls"):
            p.append(Problem(where, f"{f} is missing 'content'", field=f"{f}.content"))
        elif content is not None and not isinstance(content, str):
            p.append(Problem(where, f"{f}.content must be a string, got {type(content).__name__}",
                             field=f"{f}.content"))
        elif isinstance(content, str) and not content.strip() and not m.get("tool_calls"):
            p.append(Problem(where, f"{f} ({role}) has empty content", field=f"{f}.content"))
        msg: Message = {"role": role, "content": content if isinstance(content, str) else ""}
        if "weight" in m:
            if m["weight"] not in (0, 1) or isinstance(m["weight"], bool):
                p.append(Problem(where, f"{f}.weight must be 0 or 1, got {m['weight']!r}", field=f"{f}.weight"))
            elif role != "assistant":
                p.append(Problem(where, f"{f}.weight is only allowed on assistant messages", field=f"{f}.weight"))
            else:
                msg["weight"] = int(m["weight"])
        if m.get("tool_calls"):
            msg["tool_calls"] = m["tool_calls"]
        out.append(msg)
    if out and not any(m["role"] == "assistant" for m in out):
        p.append(Problem(where, "no assistant message: there is nothing to learn from this row", field=field))
    return out


def _with_system(messages: list[Message], system_prompt: str | None) -> list[Message]:
    if system_prompt and not (messages and messages[0]["role"] == "system"):
        return [{"role": "system", "content": system_prompt}, *messages]
    return messages


def to_record(
    where: str, data: dict[str, Any], fmt: str, system_prompt: str | None = None
) -> tuple[Record | None, list[Problem]]:
    """Convert one (column-mapped) row; returns (record or None, problems)."""
    p: list[Problem] = []
    if fmt == "chat":
        msgs = _check_messages(p, where, data.get("messages"), "messages") if "messages" in data else []
        if "messages" not in data:
            p.append(Problem(where, "missing field 'messages'", field="messages"))
        rec = Record(where, "chat", messages=_with_system(msgs, system_prompt))
    elif fmt == "sharegpt":
        conv = data.get("conversations")
        converted: Any = conv
        if isinstance(conv, list):
            converted = []
            for i, turn in enumerate(conv):
                if not isinstance(turn, dict):
                    converted.append(turn)
                    continue
                src = turn.get("from")
                if src not in SHAREGPT_ROLES:
                    p.append(Problem(where, f"conversations[{i}] has unknown 'from' {src!r}; expected one of "
                                     f"{', '.join(sorted(SHAREGPT_ROLES))}", field=f"conversations[{i}].from"))
                    continue
                converted.append({"role": SHAREGPT_ROLES[src], "content": turn.get("value")})
        if "conversations" not in data:
            p.append(Problem(where, "missing field 'conversations'", field="conversations"))
            msgs = []
        else:
            msgs = _check_messages(p, where, converted, "conversations")
        rec = Record(where, "chat", messages=_with_system(msgs, system_prompt))
    elif fmt == "alpaca":
        instruction = _text(p, where, data, "instruction")
        extra = _text(p, where, data, "input", required=False)
        output = _text(p, where, data, "output")
        user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
        if data.get("system"):
            msgs.insert(0, {"role": "system", "content": str(data["system"])})
        rec = Record(where, "chat", messages=_with_system(msgs, system_prompt))
    elif fmt == "completion":
        rec = Record(where, "completion", prompt=_text(p, where, data, "prompt", required=False),
                     completion=_text(p, where, data, "completion"))
    elif fmt == "text":
        rec = Record(where, "text", text=_text(p, where, data, "text"))
    elif fmt == "classification":
        rec = Record(where, "classification", text=_text(p, where, data, "text"),
                     label=_text(p, where, data, "label").strip())
    else:
        raise ValueError(f"unknown format {fmt!r}; expected auto or one of {', '.join(FORMATS)}")
    return (None if p else rec), p
