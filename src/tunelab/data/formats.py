"""Row formats -> canonical Records, with every problem in a row reported at once.

chat (OpenAI `messages`, with `tools`/`tool_calls` for function calling; the older `functions`/`function_call`/
`function` role are converted to them), alpaca (`instruction`/`input`/`output`), sharegpt (`conversations` with
`from`/`value`), completion (`prompt`/`completion`), text (raw `text`), classification (`text` + `label`).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from .limits import TooDeep, loads
from .records import Message, Problem, Record, Tool

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


def _type(v: Any) -> str:
    """A value's type as JSON names it."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if v is None else names.get(type(v), type(v).__name__)


@dataclasses.dataclass
class _Calls:
    """The tool calls met so far in one conversation, so that each result can be matched to its call."""

    names: dict[str, str] = dataclasses.field(default_factory=dict)  # call id -> function name
    where: dict[str, str] = dataclasses.field(default_factory=dict)  # call id -> the field of the call
    answered: dict[str, str] = dataclasses.field(default_factory=dict)  # call id -> the result that answered it
    legacy: str | None = None  # the id given to the latest `function_call` not yet answered


def _arguments(p: list[Problem], where: str, args: Any, f: str) -> str | None:
    """A call's arguments as JSON text; OpenAI sends a string, Hugging Face data often an object."""
    if isinstance(args, dict):
        return json.dumps(args, ensure_ascii=False)
    if not isinstance(args, str):
        p.append(Problem(where, f"{f} must be a JSON string (e.g. '{{\"city\": \"Paris\"}}'), got {_type(args)}"
                         if args is not None else f"{f} is missing: give the call's arguments as a JSON string "
                         "('{}' when there are none)", field=f))
        return None
    try:
        parsed = loads(args)
    except TooDeep as exc:
        p.append(Problem(where, f"{f}: {exc}", field=f))
        return None
    except ValueError as exc:  # json.JSONDecodeError, or a number of over 4,300 digits
        why = f"{exc.msg}, column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else str(exc).split(";")[0]
        p.append(Problem(where, f"{f} is not valid JSON ({why}): {args[:80]!r}", field=f))
        return None
    if not isinstance(parsed, dict):
        p.append(Problem(where, f"{f} must be a JSON object of named arguments, got {_type(parsed)}", field=f))
        return None
    return args


def _function(p: list[Problem], where: str, fn: Any, f: str) -> dict[str, str] | None:
    """{"name", "arguments"} of a call (a tool call's `function`, or the older `function_call`)."""
    if not isinstance(fn, dict):
        p.append(Problem(where, f"{f} must be an object with name and arguments, got {_type(fn)}", field=f))
        return None
    name = fn.get("name")
    if not isinstance(name, str) or not name.strip():
        p.append(Problem(where, f"{f}.name must be the function's name, got {_type(name)}"
                         if not isinstance(name, str) else f"{f}.name is empty", field=f"{f}.name"))
    args = _arguments(p, where, fn.get("arguments"), f"{f}.arguments")
    if not isinstance(name, str) or not name.strip() or args is None:
        return None
    return {"name": name, "arguments": args}


def _tool_calls(p: list[Problem], where: str, m: dict[str, Any], f: str, i: int, calls: _Calls) -> list[Message]:
    """An assistant message's calls in OpenAI's form; the older `function_call` becomes one tool call."""
    raw, legacy = m.get("tool_calls"), m.get("function_call")
    if raw is not None and legacy is not None:
        p.append(Problem(where, f"{f} has both tool_calls and function_call (its older form): keep one",
                         field=f"{f}.function_call"))
        return []
    if legacy is not None:
        fn = _function(p, where, legacy, f"{f}.function_call")
        if fn is None:
            return []
        cid = f"call_{i}"  # the older form has no ids: the result that follows answers it
        calls.names[cid], calls.where[cid], calls.legacy = fn["name"], f"{f}.function_call", cid
        return [{"id": cid, "type": "function", "function": fn}]
    if not isinstance(raw, list):
        p.append(Problem(where, f"{f}.tool_calls must be a list of tool calls, got {_type(raw)}",
                         field=f"{f}.tool_calls"))
        return []
    out: list[Message] = []
    for j, call in enumerate(raw):
        cf = f"{f}.tool_calls[{j}]"
        if not isinstance(call, dict):
            p.append(Problem(where, f"{cf} must be an object with id, type and function, got {_type(call)}", field=cf))
            continue
        if call.get("type", "function") != "function":
            p.append(Problem(where, f"{cf}.type is {call['type']!r}: only function calls are supported",
                             field=f"{cf}.type"))
            continue
        cid = call.get("id")
        if cid is not None and (not isinstance(cid, str) or not cid.strip()):
            p.append(Problem(where, f"{cf}.id must be a non-empty string, got {cid!r}", field=f"{cf}.id"))
            continue
        if cid in calls.names:
            p.append(Problem(where, f"{cf}.id {cid!r} is already the id of {calls.where[cid]}", field=f"{cf}.id"))
            continue
        fn = _function(p, where, call.get("function"), f"{cf}.function")
        if fn is None:
            continue
        if cid is not None:
            calls.names[cid], calls.where[cid] = fn["name"], cf
        out.append({**({"id": cid} if cid is not None else {}), "type": "function", "function": fn})
    return out


def _answered_call(p: list[Problem], where: str, m: dict[str, Any], f: str, calls: _Calls) -> str | None:
    """The id of the call a tool result answers (an older `function` result answers the call just before it)."""
    if m.get("role") == "function":
        if calls.legacy is None:
            p.append(Problem(where, f"{f} is a function result, but no earlier assistant message has a "
                             "function_call for it to answer", field=f))
            return None
        cid, calls.legacy = calls.legacy, None
        if m.get("name") != calls.names[cid]:
            p.append(Problem(where, f"{f} is the result of {m.get('name')!r}, but the function_call before it "
                             f"calls {calls.names[cid]!r}", field=f"{f}.name"))
            return None
        return cid
    cid = m.get("tool_call_id")
    if cid is None:
        p.append(Problem(where, f"{f} (tool) has no tool_call_id: set it to the id of the assistant tool call "
                         "it answers", field=f"{f}.tool_call_id"))
        return None
    if not isinstance(cid, str) or cid not in calls.names:
        known = f" (earlier calls: {', '.join(map(repr, calls.names))})" if calls.names else ""
        p.append(Problem(where, f"{f}.tool_call_id {cid!r} matches no earlier assistant tool call{known}",
                         field=f"{f}.tool_call_id"))
        return None
    if cid in calls.answered:
        p.append(Problem(where, f"{f} answers tool call {cid!r} again: {calls.answered[cid]} already did",
                         field=f"{f}.tool_call_id"))
        return None
    calls.answered[cid] = f
    return cid


def _tool_fields(p: list[Problem], where: str, m: dict[str, Any], msg: Message, f: str, i: int,
                 calls: _Calls) -> None:
    """Check one message's function-calling fields and copy them onto msg in OpenAI's form."""
    role = m.get("role")
    name = m.get("name")
    if name is not None:
        if isinstance(name, str) and name.strip():
            msg["name"] = name
        else:
            p.append(Problem(where, f"{f}.name must be a non-empty string, got {name!r}", field=f"{f}.name"))
    elif role == "function":
        p.append(Problem(where, f"{f} (function) is missing 'name': the function whose result it is",
                         field=f"{f}.name"))
    if _has_calls(m):
        if role == "assistant":
            found = _tool_calls(p, where, m, f, i, calls)
            if found:
                msg["tool_calls"] = found
        else:
            key = "tool_calls" if m.get("tool_calls") else "function_call"
            p.append(Problem(where, f"{f}.{key} is only allowed on assistant messages", field=f"{f}.{key}"))
    if role in ("tool", "function"):
        cid = _answered_call(p, where, m, f, calls)
        if cid is not None:
            msg["tool_call_id"] = cid
            msg.setdefault("name", calls.names[cid])  # templates that show a result's function read it here
    elif m.get("tool_call_id") is not None:
        p.append(Problem(where, f"{f}.tool_call_id is only allowed on tool messages", field=f"{f}.tool_call_id"))


def _has_calls(m: dict[str, Any]) -> bool:
    return m.get("tool_calls") not in (None, []) or m.get("function_call") is not None


def _check_messages(p: list[Problem], where: str, raw: Any, field: str) -> list[Message]:
    if not isinstance(raw, list):
        p.append(Problem(where, f"field '{field}' must be a list of messages, got {type(raw).__name__}",
                         field=field))
        return []
    if not raw:
        p.append(Problem(where, f"field '{field}' is empty", field=field))
        return []
    out: list[Message] = []
    calls = _Calls()
    for i, m in enumerate(raw):
        f = f"{field}[{i}]"
        if not isinstance(m, dict):
            p.append(Problem(where, f"{f} must be an object with role and content, got {type(m).__name__}",
                             field=f))
            continue
        role = m.get("role")
        if role is None:
            p.append(Problem(where, f"{f} is missing 'role'", field=f"{f}.role"))
        elif role not in ROLES and role != "function":  # "function": the older form of tool results
            p.append(Problem(where, f"{f} has unknown role {role!r}; expected one of {', '.join(ROLES)}",
                             field=f"{f}.role"))
        content = m.get("content")
        calling = role == "assistant" and _has_calls(m)  # a reply that only calls tools needs no text
        if content is None and not calling:
            p.append(Problem(where, f"{f} is missing 'content'", field=f"{f}.content"))
        elif content is not None and not isinstance(content, str):
            p.append(Problem(where, f"{f}.content must be a string, got {type(content).__name__}",
                             field=f"{f}.content"))
        elif isinstance(content, str) and not content.strip() and not calling:
            p.append(Problem(where, f"{f} ({role}) has empty content", field=f"{f}.content"))
        msg: Message = {"role": "tool" if role == "function" else role,
                        "content": content if isinstance(content, str) else ""}
        if "weight" in m:
            if m["weight"] not in (0, 1) or isinstance(m["weight"], bool):
                p.append(Problem(where, f"{f}.weight must be 0 or 1, got {m['weight']!r}", field=f"{f}.weight"))
            elif role != "assistant":
                p.append(Problem(where, f"{f}.weight is only allowed on assistant messages", field=f"{f}.weight"))
            else:
                msg["weight"] = int(m["weight"])
        _tool_fields(p, where, m, msg, f, i, calls)
        out.append(msg)
    if out and not any(m["role"] == "assistant" for m in out):
        p.append(Problem(where, "no assistant message: there is nothing to learn from this row", field=field))
    return out


def _check_tools(p: list[Problem], where: str, data: dict[str, Any]) -> list[Tool] | None:
    """The row's function definitions in OpenAI's `tools` form; the older `functions` list is converted."""
    tools, functions = data.get("tools"), data.get("functions")
    if tools is not None and functions is not None:
        p.append(Problem(where, "the row has both tools and functions (the older form of tools): keep one",
                         field="functions"))
        return None
    key, raw = ("functions", functions) if functions is not None else ("tools", tools)
    if raw is None:
        return None
    if not isinstance(raw, list):
        p.append(Problem(where, f"field '{key}' must be a list of function definitions, got {_type(raw)}", field=key))
        return None
    out: list[Tool] = []
    seen: dict[str, str] = {}
    for j, tool in enumerate(raw):
        f = fn_f = f"{key}[{j}]"
        fn = tool
        if key == "tools":
            if not isinstance(tool, dict):
                p.append(Problem(where, f"{f} must be an object {{\"type\": \"function\", \"function\": {{...}}}}, "
                                 f"got {_type(tool)}", field=f))
                continue
            if tool.get("type", "function") != "function":
                p.append(Problem(where, f"{f}.type is {tool['type']!r}: only function tools are supported",
                                 field=f"{f}.type"))
                continue
            fn, fn_f = tool.get("function"), f"{f}.function"
        if not isinstance(fn, dict):
            p.append(Problem(where, f"{fn_f} must be an object with name, description and parameters, got "
                             f"{_type(fn)}", field=fn_f))
            continue
        name, params, desc = fn.get("name"), fn.get("parameters"), fn.get("description")
        if not isinstance(name, str) or not name.strip():
            p.append(Problem(where, f"{fn_f}.name must be the function's name, got {name!r}", field=f"{fn_f}.name"))
            continue
        if name in seen:
            p.append(Problem(where, f"{fn_f}.name {name!r} is defined twice (also in {seen[name]})",
                             field=f"{fn_f}.name"))
        if params is not None and not isinstance(params, dict):
            p.append(Problem(where, f"{fn_f}.parameters must be a JSON Schema object, got {_type(params)}",
                             field=f"{fn_f}.parameters"))
        if desc is not None and not isinstance(desc, str):
            p.append(Problem(where, f"{fn_f}.description must be a string, got {_type(desc)}",
                             field=f"{fn_f}.description"))
        seen.setdefault(name, fn_f)
        out.append({"type": "function", "function": {k: v for k, v in fn.items() if v is not None}})
    return out or None


def _check_tool_use(p: list[Problem], where: str, messages: list[Message], tools: list[Tool] | None,
                    parallel: Any, field: str) -> None:
    """Calls against the row's tools and its `parallel_tool_calls`."""
    if parallel is not None and not isinstance(parallel, bool):
        p.append(Problem(where, f"field 'parallel_tool_calls' must be true or false, got {parallel!r}",
                         field="parallel_tool_calls"))
    names = {t["function"]["name"] for t in tools or []}
    for i, m in enumerate(messages):
        found = m.get("tool_calls", [])
        if parallel is False and len(found) > 1:
            p.append(Problem(where, f"{field}[{i}] makes {len(found)} tool calls at once, but the row sets "
                             "parallel_tool_calls to false", field=f"{field}[{i}].tool_calls"))
        for j, call in enumerate(found):
            name = call["function"]["name"]
            if tools and name not in names:
                p.append(Problem(where, f"{field}[{i}].tool_calls[{j}] calls {name!r}, which is not among the row's "
                                 f"tools ({', '.join(sorted(names))})", field=f"{field}[{i}].tool_calls[{j}]"))


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
        tools = _check_tools(p, where, data)
        _check_tool_use(p, where, msgs, tools, data.get("parallel_tool_calls"), "messages")
        rec = Record(where, "chat", messages=_with_system(msgs, system_prompt), tools=tools)
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
