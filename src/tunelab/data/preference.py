"""Preference pairs (reward models, DPO and relatives) and prompt-only rows (online RL: GRPO, RLOO).

Like SFT data, every row is checked and every problem reported with file:line; nothing is raised for bad rows.

Preference formats, detected per file from its first usable row:
- trl: `prompt` / `chosen` / `rejected`, each a string or a message list; without `prompt`, chosen and rejected
  are whole conversations and their shared prefix is the prompt (TRL's "implicit prompt");
- openai_dpo: `{"input": {"messages": [...]}, "preferred_output": [...], "non_preferred_output": [...]}`;
- hh_rlhf: `chosen` / `rejected` are whole "\\n\\nHuman: ...\\n\\nAssistant: ..." transcripts (Anthropic hh-rlhf).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .formats import _check_messages, _with_system, apply_columns
from .limits import max_row_errors, stopped_reading
from .records import DataError, Message, Problem
from .sources import data_files, read_rows

PREFERENCE_FORMATS = ("trl", "openai_dpo", "hh_rlhf")
PROMPT_FORMATS = ("prompt", "question", "chat")
HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")
HH_ROLES = {"Human": "user", "Assistant": "assistant"}
NUMBER = re.compile(r"-?(?:\d[\d,]*(?:\.\d+)?|\.\d+)")


@dataclass
class PreferencePair:
    where: str  # "file:line"
    prompt: list[Message]  # the conversation before the answer (system/user/assistant turns)
    chosen: str  # the preferred final assistant reply
    rejected: str  # the dispreferred final assistant reply

    def key(self) -> str:
        """Identity used to find exact duplicates."""
        return repr((_plain(self.prompt), self.chosen, self.rejected))


@dataclass
class PromptRow:
    """A prompt for online RL (GRPO/RLOO), with its reference answer when the row has one."""

    where: str
    prompt: list[Message]
    answer: str | None
    # every other field of the row (after data.columns): what an OpenAI grader reads as {{item.<field>}}; not part
    # of a row's identity (equality, duplicates), as before it was kept
    item: dict[str, Any] = field(default_factory=dict, compare=False)

    def key(self) -> str:
        return repr((_plain(self.prompt), self.answer))


@dataclass
class LoadedPairs:
    """load_pairs' result plus the counts a report needs."""

    pairs: list[PreferencePair] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    formats: dict[str, str] = field(default_factory=dict)  # file -> format
    rows: int = 0
    duplicates: int = 0


def final_number(text: str) -> str | None:
    """The answer of a GSM8K-style text: the number after '####', else the last number; commas dropped and
    trailing zeros after a decimal point too, so that equal numbers compare equal as strings."""
    after = NUMBER.findall(text.rsplit("####", 1)[1]) if "####" in text else []
    found = after[:1] or NUMBER.findall(text)[-1:]
    if not found:
        return None
    num = found[0].replace(",", "")
    if num.lstrip("-").startswith("."):  # ".5" is written 0.5 elsewhere
        num = num.replace(".", "0.", 1)
    if "." in num:
        num = num.rstrip("0").rstrip(".")
    return "0" if num in ("-0", "") else num


# --- detection --------------------------------------------------------------------------------------------


def _looks_hh(text: Any) -> bool:
    return isinstance(text, str) and (text.lstrip().startswith("Human:") or "\n\nAssistant:" in text)


def detect_preference_format(keys: set[str], data: dict[str, Any]) -> str | None:
    """The preference format a row suggests, or None when it isn't preference data."""
    if keys & {"preferred_output", "non_preferred_output"}:
        return "openai_dpo"
    # prompt with only one reply still counts, so that the missing one is reported as missing
    if not ({"chosen", "rejected"} <= keys or {"prompt", "chosen"} <= keys or {"prompt", "rejected"} <= keys):
        return None
    if "prompt" not in keys and _looks_hh(data.get("chosen")):
        return "hh_rlhf"
    return "trl"


def detect_prompt_format(keys: set[str]) -> str | None:
    if "messages" in keys:
        return "chat"
    if "prompt" in keys:
        return "prompt"
    if "question" in keys:
        return "question"
    return None


def _first_row(path: str | Path, columns: dict[str, str] | None = None) -> dict[str, Any] | None:
    try:
        files = data_files(path)
    except (FileNotFoundError, DataError):  # the SFT loader reports unusable paths
        return None
    for file in files:
        for raw in read_rows(file):
            if raw.data is not None:
                return apply_columns(raw.data, columns or {})
    return None


def is_preference_file(path: str | Path, columns: dict[str, str] | None = None) -> bool:
    """Whether the first parseable row looks like a preference format."""
    row = _first_row(path, columns)
    return row is not None and detect_preference_format(set(row), row) is not None


# --- row conversion ---------------------------------------------------------------------------------------


def _plain(messages: list[Message]) -> list[tuple[Any, ...]]:
    return [(m["role"], m.get("content"), repr(m.get("tool_calls"))) for m in messages]


def _messages(p: list[Problem], where: str, raw: Any, fld: str) -> list[Message]:
    """Checked chat messages; prompts need no assistant turn, and replies are checked by _finish."""
    found: list[Problem] = []
    msgs = _check_messages(found, where, raw, fld)
    p.extend(x for x in found if not x.message.startswith("no assistant message"))
    return [{k: v for k, v in m.items() if k != "weight"} for m in msgs]  # weights are an SFT notion


def _turns(p: list[Problem], where: str, data: dict[str, Any], key: str, role: str) -> list[Message]:
    """A string is one message with `role`; a list holds messages (for replies, maybe a whole conversation)."""
    if key not in data or data[key] is None:
        p.append(Problem(where, f"missing field '{key}'", field=key))
        return []
    raw = data[key]
    if isinstance(raw, str):
        if not raw.strip():
            p.append(Problem(where, f"field '{key}' is empty", field=key))
        return [{"role": role, "content": raw}]
    if isinstance(raw, list):
        return _messages(p, where, raw, key)
    p.append(Problem(where, f"field '{key}' must be a string or a list of messages, got {type(raw).__name__}",
                     field=key))
    return []


def _prompt(p: list[Problem], where: str, data: dict[str, Any], key: str) -> list[Message]:
    return _turns(p, where, data, key, "user")


def _reply(p: list[Problem], where: str, data: dict[str, Any], key: str) -> list[Message]:
    """chosen/rejected: a string is the assistant reply; a list holds the reply (or a whole conversation)."""
    return _turns(p, where, data, key, "assistant")
    raw = data[key]
    if isinstance(raw, str):
        if not raw.strip():
            p.append(Problem(where, f"field '{key}' is empty", field=key))
        return [{"role": "assistant", "content": raw}]
    if isinstance(raw, list):
        return _messages(p, where, raw, key)
    p.append(Problem(where, f"field '{key}' must be a string or a list of messages, got {type(raw).__name__}",
                     field=key))
    return []


def _errors_since(p: list[Problem], start: int) -> bool:
    return any(x.severity == "error" for x in p[start:])


def _finish(p: list[Problem], where: str, full_c: list[Message], full_r: list[Message], names: tuple[str, str],
            prompt_field: str, system_prompt: str | None, start: int) -> PreferencePair | None:
    """Split two whole conversations into the shared prompt and the two final replies."""
    if _errors_since(p, start):  # a side already failed: what is left of it would only add noise
        return None
    for full, name in ((full_c, names[0]), (full_r, names[1])):
        if full and full[-1]["role"] != "assistant":
            p.append(Problem(where, f"field '{name}' must end with an assistant reply", field=name))
    if _errors_since(p, start):
        return None
    prompt, chosen, rejected = full_c[:-1], full_c[-1]["content"], full_r[-1]["content"]
    if _plain(prompt) != _plain(full_r[:-1]):
        p.append(Problem(where, "prompts differ between chosen and rejected", field=prompt_field))
        return None
    if not prompt:
        p.append(Problem(where, "empty prompt: there is no conversation before the replies", field=prompt_field))
    for text, name in ((chosen, names[0]), (rejected, names[1])):
        if not text.strip():
            p.append(Problem(where, f"the {name} reply is empty", field=name))
    if not _errors_since(p, start) and chosen == rejected:
        p.append(Problem(where, f"{names[0]} and {names[1]} are identical: there is no preference to learn",
                         field=names[0]))
    if _errors_since(p, start):
        return None
    return PreferencePair(where, _with_system(prompt, system_prompt), chosen, rejected)


def _hh_messages(p: list[Problem], where: str, data: dict[str, Any], key: str) -> list[Message]:
    """A "\\n\\nHuman: ...\\n\\nAssistant: ..." transcript as messages; turns must alternate, Human first."""
    text = data.get(key)
    if text is None:
        p.append(Problem(where, f"missing field '{key}'", field=key))
        return []
    if not isinstance(text, str):
        p.append(Problem(where, f"field '{key}' must be a string (a Human/Assistant transcript), "
                         f"got {type(text).__name__}", field=key))
        return []
    if not text.strip():
        p.append(Problem(where, f"field '{key}' is empty", field=key))
        return []
    parts = HH_TURN.split("\n\n" + text.lstrip())
    if "Assistant" not in parts[1::2]:
        p.append(Problem(where, f"field '{key}' can't be parsed as a transcript: no '\\n\\nAssistant:' turn",
                         field=key))
        return []
    if parts[0].strip():
        p.append(Problem(where, f"field '{key}' can't be parsed as a transcript: text before the first "
                         "'Human:'", field=key))
        return []
    msgs: list[Message] = []
    for i, (role, content) in enumerate(zip(parts[1::2], parts[2::2], strict=True)):
        expected = "Human" if i % 2 == 0 else "Assistant"
        if role != expected:
            p.append(Problem(where, f"field '{key}' can't be parsed as a transcript: turn {i + 1} is {role} "
                             f"where {expected} was expected (roles out of order)", field=key))
            return []
        msgs.append({"role": HH_ROLES[role], "content": content.strip()})
    for i, m in enumerate(msgs[:-1]):
        if not m["content"]:
            p.append(Problem(where, f"field '{key}': turn {i + 1} ({m['role']}) is empty", field=key))
    return msgs


def to_pair(where: str, data: dict[str, Any], fmt: str,
            system_prompt: str | None = None) -> tuple[PreferencePair | None, list[Problem]]:
    """Convert one (column-mapped) row; returns (pair or None, problems)."""
    p: list[Problem] = []
    if fmt == "trl":
        if "prompt" in data:
            prompt = _prompt(p, where, data, "prompt")
            full_c = prompt + _reply(p, where, data, "chosen")
            full_r = prompt + _reply(p, where, data, "rejected")
        else:  # implicit prompt: whole conversations
            chosen, rejected = data.get("chosen"), data.get("rejected")
            if isinstance(chosen, str) and isinstance(rejected, str) and "chosen" in data and "rejected" in data:
                p.append(Problem(where, "missing field 'prompt': with plain-text chosen and rejected the prompt "
                                 "can't be told apart from the replies", field="prompt"))
            full_c, full_r = _reply(p, where, data, "chosen"), _reply(p, where, data, "rejected")
        pair = _finish(p, where, full_c, full_r, ("chosen", "rejected"), "prompt", system_prompt, 0)
    elif fmt == "openai_dpo":
        inp = data.get("input")
        prompt = []
        if inp is None:
            p.append(Problem(where, "missing field 'input'", field="input"))
        elif not isinstance(inp, dict):
            p.append(Problem(where, f"field 'input' must be an object with 'messages', got {type(inp).__name__}",
                             field="input"))
        elif "messages" not in inp:
            p.append(Problem(where, "missing field 'input.messages'", field="input.messages"))
        else:
            prompt = _messages(p, where, inp["messages"], "input.messages")
            if inp.get("tools"):  # a pair holds messages only: tool definitions would be silently lost
                p.append(Problem(where, "input.tools are not used: the prompt is rendered without them",
                                 "warning", field="input.tools"))
        names = ("preferred_output", "non_preferred_output")
        full_c, full_r = (prompt + _messages_field(p, where, data, n) for n in names)
        pair = _finish(p, where, full_c, full_r, names, "input.messages", system_prompt, 0)
    elif fmt == "hh_rlhf":
        full_c, full_r = _hh_messages(p, where, data, "chosen"), _hh_messages(p, where, data, "rejected")
        if not _errors_since(p, 0):  # both parsed: the text before the last reply must match exactly
            chosen, rejected = data["chosen"], data["rejected"]
            if chosen[: chosen.rfind("\n\nAssistant:")] != rejected[: rejected.rfind("\n\nAssistant:")]:
                p.append(Problem(where, "prompts differ between chosen and rejected (the text before the last "
                                 "'\\n\\nAssistant:')", field="chosen"))
        pair = _finish(p, where, full_c, full_r, ("chosen", "rejected"), "chosen", system_prompt, 0)
    else:
        raise ValueError(f"unknown preference format {fmt!r}; expected one of {', '.join(PREFERENCE_FORMATS)}")
    return pair, p


def _messages_field(p: list[Problem], where: str, data: dict[str, Any], key: str) -> list[Message]:
    if key not in data or data[key] is None:
        p.append(Problem(where, f"missing field '{key}'", field=key))
        return []
    return _messages(p, where, data[key], key)


def to_prompt_row(where: str, data: dict[str, Any], fmt: str, system_prompt: str | None = None,
                  answer_field: str = "answer") -> tuple[PromptRow | None, list[Problem]]:
    """Convert one (column-mapped) prompt-only row; returns (row or None, problems)."""
    p: list[Problem] = []
    answer: str | None = None
    if fmt == "chat":
        prompt = _messages_field(p, where, data, "messages")
        if prompt and prompt[-1]["role"] == "assistant":  # the reference answer, not part of the prompt
            answer, prompt = prompt[-1]["content"], prompt[:-1]
    elif fmt in ("prompt", "question"):
        prompt = _prompt(p, where, data, fmt)
    else:
        raise ValueError(f"unknown prompt format {fmt!r}; expected one of {', '.join(PROMPT_FORMATS)}")
    value = data.get(answer_field)
    if value is not None:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            p.append(Problem(where, f"field '{answer_field}' must be a string or a number, got "
                             f"{type(value).__name__}", field=answer_field))
        else:
            answer = str(value)
    if not _errors_since(p, 0) and not prompt:
        p.append(Problem(where, "empty prompt: there is nothing to answer", field=fmt))
    if _errors_since(p, 0):
        return None, p
    item = {k: v for k, v in data.items() if k != ("messages" if fmt == "chat" else fmt)}
    return PromptRow(where, _with_system(prompt, system_prompt), answer, item), p


# --- loading ----------------------------------------------------------------------------------------------

T = TypeVar("T", PreferencePair, PromptRow)


def _load(path: str | Path, fmt: str, formats: tuple[str, ...], columns: dict[str, str] | None,
          detect: Callable[[dict[str, Any]], str | None], explain: Callable[[set[str]], str],
          convert: Callable[[str, dict[str, Any], str], tuple[T | None, list[Problem]]],
          ) -> tuple[list[T], LoadedPairs]:
    if fmt != "auto" and fmt not in formats:
        raise DataError([Problem(str(path), f"unknown format {fmt!r}; expected auto or one of {', '.join(formats)}")])
    out = LoadedPairs()
    items: list[T] = []
    seen: dict[str, str] = {}
    budget, errors, seen_problems = max_row_errors(), 0, 0
    for file in data_files(path):
        file_fmt = None if fmt == "auto" else fmt
        for raw in read_rows(file):
            errors += sum(p.severity == "error" for p in out.problems[seen_problems:])
            seen_problems = len(out.problems)
            if errors >= budget:
                out.problems.append(Problem(raw.where, stopped_reading(file, budget)))
                return items, out
            out.rows += 1
            if raw.data is None:
                out.problems.append(Problem(raw.where, raw.error))
                continue
            data = apply_columns(raw.data, columns or {})
            if file_fmt is None:
                file_fmt = detect(data)
                if file_fmt is None:  # keep looking: every row still gets checked
                    out.problems.append(Problem(raw.where, explain(set(data))))
                    continue
            out.formats[str(file)] = file_fmt
            item, problems = convert(raw.where, data, file_fmt)
            out.problems.extend(problems)
            if item is None:
                continue
            first = seen.setdefault(item.key(), item.where)
            if first != item.where:
                out.duplicates += 1
                out.problems.append(Problem(item.where, f"exact duplicate of {first}", "warning"))
            items.append(item)
        if fmt != "auto":
            out.formats[str(file)] = fmt
    return items, out


def _explain_pairs(keys: set[str]) -> str:
    return (f"can't tell the preference format from the fields {sorted(keys)}; expected prompt/chosen/rejected "
            "(trl), input/preferred_output/non_preferred_output (openai_dpo), or chosen/rejected Human/Assistant "
            "transcripts (hh_rlhf); map your columns with data.columns")


def _explain_prompts(keys: set[str]) -> str:
    return (f"can't tell the prompt format from the fields {sorted(keys)}; expected prompt (+ answer), "
            "question + answer (GSM8K), or messages; map your columns with data.columns")


def load_pairs_report(path: str | Path, fmt: str = "auto", columns: dict[str, str] | None = None,
                      system_prompt: str | None = None) -> LoadedPairs:
    """load_pairs with the row and duplicate counts (for `tunelab data check`)."""
    pairs, out = _load(path, fmt, PREFERENCE_FORMATS, columns, lambda d: detect_preference_format(set(d), d),
                       _explain_pairs, lambda w, d, f: to_pair(w, d, f, system_prompt))
    out.pairs = pairs
    return out


def load_pairs(path: str | Path, fmt: str = "auto", columns: dict[str, str] | None = None,
               system_prompt: str | None = None) -> tuple[list[PreferencePair], list[Problem], dict[str, str]]:
    """Read and convert every preference row: (pairs, problems, {file: format}); bad rows become Problems."""
    out = load_pairs_report(path, fmt, columns, system_prompt)
    return out.pairs, out.problems, out.formats


def load_prompts(path: str | Path, fmt: str = "auto", columns: dict[str, str] | None = None,
                 system_prompt: str | None = None, answer_field: str = "answer",
                 ) -> tuple[list[PromptRow], list[Problem]]:
    """Prompts for online RL: {"prompt": str | messages, answer_field: ...}, {"question", "answer"} (GSM8K),
    or {"messages": [...]} whose last assistant message, if any, is the answer (OpenAI's reinforcement rows end
    with a user turn). Each row's other fields are kept as its `item`. Bad rows become Problems."""
    rows, out = _load(path, fmt, PROMPT_FORMATS, columns, lambda d: detect_prompt_format(set(d)),
                      _explain_prompts, lambda w, d, f: to_prompt_row(w, d, f, system_prompt, answer_field))
    return rows, out.problems


def pair_token_counts(pair: PreferencePair, tokenizer: Any) -> tuple[int, int, int]:
    """(prompt, chosen, rejected) tokens as training sees them: the prompt through the chat template with the
    generation prompt, each reply as what its turn adds. Raises RowError when the template rejects the row."""
    from .templates import _render

    def n(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    n_prompt = n(_render(tokenizer, pair.prompt, gen=True))
    sides = [n(_render(tokenizer, [*pair.prompt, {"role": "assistant", "content": reply}])) - n_prompt
             for reply in (pair.chosen, pair.rejected)]
    return n_prompt, max(sides[0], 0), max(sides[1], 0)
