"""Records -> token ids and labels, with loss only on what the model should learn.

Chat rows go through the tokenizer's own chat template; the trained spans are found by rendering
the conversation prefix by prefix, so any template that renders prefixes consistently works.
Function-calling rows are rendered with their `tools`, and an assistant turn's tool calls are trained
with it; a template that would leave the tool data out is refused rather than trained on half a row.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .records import Message, Record, RowError, Tool, uses_tools

if TYPE_CHECKING:
    from ..config import TunelabConfig

IGNORE = -100
DEFAULT_CLASSIFY_PROMPT = "Classify the customer's message. Answer with the category name only."


@dataclass
class Encoded:
    input_ids: list[int]
    labels: Any  # per-token ids with IGNORE where no loss; an int class index for classification heads
    truncated: bool = False

    @property
    def trained_tokens(self) -> int:
        return sum(lab != IGNORE for lab in self.labels) if isinstance(self.labels, list) else 0


def humanize(label: str) -> str:
    return label.replace("_", " ").strip()


def label_display(labels: list[str], humanize_labels: bool = True) -> list[str]:
    """How labels are shown to the model as answers: in words where that keeps them distinct."""
    shown = [humanize(x) for x in labels] if humanize_labels else list(labels)
    return shown if len(set(shown)) == len(shown) else list(labels)


def trained_system_prompt(cfg: TunelabConfig | None) -> str | None:
    """The system prompt a run trained with, so that its replies match training: classification runs without
    one trained with the default classification prompt. None for a model that is not a run."""
    if cfg is None:
        return None
    if cfg.task == "classification":
        return cfg.data.system_prompt or DEFAULT_CLASSIFY_PROMPT
    return cfg.data.system_prompt


def classification_messages(text: str, label: str | None, system_prompt: str | None) -> list[Message]:
    msgs: list[Message] = [
        {"role": "system", "content": system_prompt or DEFAULT_CLASSIFY_PROMPT},
        {"role": "user", "content": text},
    ]
    if label is not None:
        msgs.append({"role": "assistant", "content": label})
    return msgs


def _render(tokenizer: Any, messages: list[Message], gen: bool = False, tools: list[Tool] | None = None) -> str:
    # tools only when there are some: a template with a separate "tool_use" variant picks it when tools is given
    extra = {"tools": tools} if tools else {}
    try:
        return render_chat(tokenizer, messages, tokenize=False, add_generation_prompt=gen, **extra)
    except Exception as exc:  # jinja errors such as "roles must alternate", or no template at all
        raise RowError(f"the model's chat template rejects this conversation: {exc}", field="messages") from None


def fold_system(messages: list[Message]) -> list[Message]:
    """The system prompt written at the start of the first user message, as Gemma 3's template does and Gemma's
    documentation advises for the templates that have no system role; `messages` itself when there is none."""
    if len(messages) < 2 or messages[0]["role"] != "system" or messages[1]["role"] != "user":
        return messages
    first = {**messages[1], "content": f"{messages[0]['content']}\n\n{messages[1]['content']}"}
    return [first, *messages[2:]]


_SYSTEM_ROLE: dict[tuple[str, bool], bool] = {}  # (template, with tools) -> has a system role: probed once per template


def system_role(tokenizer: Any, with_tools: bool = False) -> bool:
    """Whether the chat template takes a system message. False only where it refuses a system + user conversation
    that it renders without the system message (Gemma, Gemma 2); where it renders neither, its own error is the one
    to report."""
    key = (repr(getattr(tokenizer, "chat_template", None)), with_tools)
    if key not in _SYSTEM_ROLE:
        extra = {"tools": [_PROBE_TOOL]} if with_tools else {}

        def renders(messages: list[Message]) -> bool:
            try:
                tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **extra)
            except Exception:
                return False
            return True

        user: Message = {"role": "user", "content": "probe"}
        _SYSTEM_ROLE[key] = renders([{"role": "system", "content": "probe"}, user]) or not renders([user])
    return _SYSTEM_ROLE[key]


def for_template(tokenizer: Any, messages: list[Message], with_tools: bool = False) -> list[Message]:
    """The conversation as the chat template takes it: the system prompt folded into the first user message where
    the template has no system role. For conversations that a library renders (TRL's datasets)."""
    return messages if system_role(tokenizer, with_tools) else fold_system(messages)


def render_chat(tokenizer: Any, messages: list[Message], **kwargs: Any) -> Any:
    """`tokenizer.apply_chat_template(messages, **kwargs)` for every conversation tunelab renders (training,
    generation, serving, scoring), through `for_template`: a model is prompted exactly as it was trained."""
    return tokenizer.apply_chat_template(for_template(tokenizer, messages, bool(kwargs.get("tools"))), **kwargs)


# --- function calling -----------------------------------------------------------------------------

PROBE_FUNCTION = "tunelab_probe_function"
_PROBE_ARGS = {"tunelab_probe_argument": "tunelab_probe_value"}
_PROBE_TOOL: Tool = {"type": "function", "function": {
    "name": PROBE_FUNCTION, "description": "probe",
    "parameters": {"type": "object", "properties": {"tunelab_probe_argument": {"type": "string"}}}}}


@dataclass(frozen=True)
class ToolSupport:
    """What a chat template does with function-calling data; None where it can't render the probe at all
    (the row itself is then rendered, and the template's own error, if any, reported)."""

    tools: bool | None  # renders the tool definitions
    calls: bool | None  # renders an assistant's tool calls
    text_arguments: bool = False  # prints arguments as they are: give it OpenAI's JSON text, not an object


_SUPPORT: dict[tuple[str, bool], ToolSupport] = {}  # (template, with tools) -> support: probed once per template


def tool_support(tokenizer: Any, with_tools: bool = True) -> ToolSupport:
    """Whether the tokenizer's chat template keeps tool definitions and calls: a probe conversation is rendered
    with and without them (with_tools: the calls under a tools block, which picks a "tool_use" template variant)."""
    key = (repr(getattr(tokenizer, "chat_template", None)), with_tools)
    if key not in _SUPPORT:
        _SUPPORT[key] = _probe(tokenizer, [_PROBE_TOOL] if with_tools else None)
    return _SUPPORT[key]


def _try_render(tokenizer: Any, messages: list[Message], gen: bool = False,
                tools: list[Tool] | None = None) -> str | None:
    try:
        return _render(tokenizer, messages, gen, tools)
    except RowError:
        return None


def _probe(tokenizer: Any, tools: list[Tool] | None) -> ToolSupport:
    user: list[Message] = [{"role": "user", "content": "probe"}]
    shown = _try_render(tokenizer, user, gen=True, tools=[_PROBE_TOOL])
    has_tools = None if shown is None else PROBE_FUNCTION in shown
    # the same conversation with and without the call, under the same tools: the tools block names the function too
    base = _try_render(tokenizer, [*user, {"role": "assistant", "content": ""}], tools=tools)

    def with_call(arguments: Any) -> str | None:
        # a 9-character alphanumeric id: Mistral's templates refuse any other
        call = {"id": "probe0001", "type": "function", "function": {"name": PROBE_FUNCTION, "arguments": arguments}}
        return _try_render(tokenizer, [*user, {"role": "assistant", "content": "", "tool_calls": [call]}],
                           tools=tools)

    # Hugging Face templates expect arguments as an object and print them with tojson; OpenAI rows hold JSON text,
    # which tojson would print as a quoted string. A template that prints the object as Python's repr (or fails on
    # it) wants the text.
    as_object = with_call(dict(_PROBE_ARGS))
    if as_object is not None and "'tunelab_probe_argument'" not in as_object:
        return ToolSupport(has_tools, None if base is None else as_object != base)
    as_text = with_call(json.dumps(_PROBE_ARGS))
    if as_text is None or base is None:
        return ToolSupport(has_tools, None)
    return ToolSupport(has_tools, as_text != base, text_arguments=True)


def _template_messages(tokenizer: Any, messages: list[Message], tools: list[Tool] | None) -> list[Message]:
    """The conversation as the template reads it; RowError when the template would drop its tool data."""
    support = tool_support(tokenizer, bool(tools))
    lost = []
    if tools and support.tools is False:
        lost.append("the tool definitions (`tools`)")
    if support.calls is False and any(m.get("tool_calls") for m in messages):
        lost.append("the assistant's tool calls")
    if lost:
        raise RowError(f"the model's chat template has no tool support: it leaves out {' and '.join(lost)}, so "
                       "training would see half of this conversation. Use a model whose chat template renders "
                       "tools (e.g. Qwen2.5-Instruct), or make the row plain chat: describe the functions in "
                       "data.system_prompt, write the calls into the assistant's content and drop tools/tool_calls",
                       field="tools" if tools and support.tools is False else "messages")
    return [_with_arguments(m, support.text_arguments) for m in messages]


def _with_arguments(m: Message, as_text: bool) -> Message:
    if as_text or not m.get("tool_calls"):
        return m
    calls = []
    for call in m["tool_calls"]:
        fn = call.get("function") or {}
        args = fn.get("arguments")
        if isinstance(args, str):
            with contextlib.suppress(json.JSONDecodeError):  # rows not checked by formats: left as they are
                args = json.loads(args)
        calls.append({**call, "function": {**fn, "arguments": args}})
    return {**m, "tool_calls": calls}


def _changed(tokenizer: Any, full: str, other: str) -> tuple[int, int] | None:
    """The characters of `full` whose tokens differ from `other`'s, between their common first and last tokens;
    compared token by token, so that the span starts and ends on token boundaries (a character comparison can
    stop inside a token such as "<tool_call>"). None when nothing differs."""
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
    ref = list(tokenizer(other, add_special_tokens=False)["input_ids"])
    n = min(len(ids), len(ref))
    head = next((k for k in range(n) if ids[k] != ref[k]), n)
    tail = next((k for k in range(n - head) if ids[-1 - k] != ref[-1 - k]), n - head)
    if head >= len(ids) - tail:
        return None
    return offsets[head][0], offsets[len(ids) - tail - 1][1]


def _common_end(tokenizer: Any, text: str, other: str, at: int) -> int:
    """The end of what `text` and `other` render alike from `at` on, token by token (a character comparison could
    stop inside a token such as "<|end|>" against "<|endoftext|>"); `at` when nothing is alike."""
    enc = tokenizer(text[at:], add_special_tokens=False, return_offsets_mapping=True)
    ref = list(tokenizer(other[at:], add_special_tokens=False)["input_ids"])
    same = next((k for k, (a, b) in enumerate(zip(enc["input_ids"], ref, strict=False)) if a != b),
                min(len(ref), len(enc["input_ids"])))
    return at + (enc["offset_mapping"][same - 1][1] if same else 0)


def _call_span(tokenizer: Any, messages: list[Message], i: int, full: str, from_pos: int,
               tools: list[Tool] | None) -> tuple[int, int]:
    """Where reply i and its tool calls are in `full`, for templates that render prefixes inconsistently: the
    calls are what changes when they are left out. Refused when that would take in a tool result (templates
    that render results inside the assistant's turn)."""
    def fail(why: str) -> RowError:
        return RowError(f"the chat template renders this conversation differently prefix by prefix, and {why}; "
                        "use a template that renders each reply the same way wherever it is", field="messages")

    bare = {k: v for k, v in messages[i].items() if k != "tool_calls"}
    other = _try_render(tokenizer, [*messages[:i], bare, *messages[i + 1:]], tools=tools)
    found = _changed(tokenizer, full, other) if other is not None else None
    if found is None:
        raise fail("the tokens of an assistant tool call can't be located in it")
    start, end = found
    for k in range(i + 1, len(messages)):
        m = messages[k]
        if m["role"] != "tool" or not m["content"]:
            continue
        # a replacement unlike the result at both ends: the change covers all of it
        marker = "§" if "§" not in (m["content"][0], m["content"][-1]) else "¤"
        changed = _try_render(tokenizer, [*messages[:k], {**m, "content": marker}, *messages[k + 1:]], tools=tools)
        result = _changed(tokenizer, full, changed) if changed is not None else None
        if result is not None and result[0] < end and start < result[1]:
            raise fail("a tool result is rendered inside the assistant's turn, so the call can't be trained without "
                       "training on the result")
    content = messages[i]["content"]
    at = full.find(content, from_pos) if content else -1
    return (at if 0 <= at < start else start), end


# --- masks ----------------------------------------------------------------------------------------


def assistant_spans(tokenizer: Any, messages: list[Message],
                    tools: list[Tool] | None = None) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of the replies that carry loss
    (assistant content and tool calls plus the end-of-turn token; weight 0 replies excluded).
    Tool definitions and tool results are rendered but never trained."""
    tools = tools or None
    if uses_tools(messages, tools):
        messages = _template_messages(tokenizer, messages, tools)
    full = _render(tokenizer, messages, tools=tools)
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], gen=True, tools=tools) if i else ""
        after = _render(tokenizer, messages[: i + 1], tools=tools)
        if i and full.startswith(after) and after.startswith(before):
            start, end = len(before), len(after)
            if i == len(messages) - 1:  # not what a finished conversation adds after it (Phi-3's end-of-text)
                more = _try_render(tokenizer, [*messages, {"role": "user", "content": "more"}], tools=tools)
                if more is not None and more.startswith(full[:start]):
                    common = _common_end(tokenizer, full, more, start)
                    end = common if m["content"].strip() in full[start:common] else end
        else:  # template does not render prefixes consistently: locate the content after what precedes it
            prefix = _render(tokenizer, messages[:i], tools=tools) if i else ""
            from_pos = max(cursor, len(prefix) if full.startswith(prefix) else cursor)
            if m.get("tool_calls"):
                start, end = _call_span(tokenizer, messages, i, full, from_pos, tools)
            else:
                start = full.find(m["content"], from_pos)
                if start < 0:
                    raise RowError(f"messages[{i}]: the chat template changes this assistant reply, so its tokens "
                                   "can't be found; use a template that renders replies verbatim", field="messages")
                end = start + len(m["content"])
                # the end-of-turn tokens, as the reply is followed when it ends the conversation (Phi-3: <|end|>)
                at = after.rfind(m["content"]) if m["content"] else -1
                if at >= 0:
                    end += _common_end(tokenizer, full[end:], after[at + len(m["content"]):], 0)
            eos = tokenizer.eos_token or ""
            if eos and full.startswith(eos, end):
                end += len(eos)
        while end > start and full[end - 1].isspace():
            end -= 1
        cursor = end
        if m.get("weight", 1) != 0:
            spans.append((start, end))
    return full, spans


def _encode_spans(tokenizer: Any, text: str, spans: list[tuple[int, int]] | None) -> tuple[list[int], list[int]]:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    if spans is None:
        return ids, list(ids)
    labels = [
        tok if any(s <= off[0] < e for s, e in spans) else IGNORE
        for tok, off in zip(ids, enc["offset_mapping"], strict=True)
    ]
    return ids, labels


def encode_record(
    rec: Record,
    tokenizer: Any,
    *,
    train_on: str = "assistant",
    system_prompt: str | None = None,
    label_text: str | None = None,
) -> Encoded:
    """Tokenize one record (untruncated). For classification, label_text is the answer to train on."""
    eos = tokenizer.eos_token or ""
    if rec.kind in ("chat", "classification"):
        messages = rec.messages if rec.kind == "chat" else classification_messages(
            rec.text, label_text if label_text is not None else rec.label, system_prompt)
        full, spans = assistant_spans(tokenizer, messages, rec.tools if rec.kind == "chat" else None)
        ids, labels = _encode_spans(tokenizer, full, spans if train_on == "assistant" else None)
    elif rec.kind == "completion":  # raw text: the tokenizer adds its BOS where the model expects one
        prompt_ids = tokenizer(rec.prompt)["input_ids"] if rec.prompt else []
        comp_ids = tokenizer(rec.completion + eos, add_special_tokens=not prompt_ids)["input_ids"]
        ids = list(prompt_ids) + list(comp_ids)
        masked = prompt_ids if train_on == "assistant" else []
        labels = [IGNORE] * len(masked) + ids[len(masked):]
    else:  # raw text: every token is trained
        ids = list(tokenizer(rec.text + eos)["input_ids"])
        labels = list(ids)
    return Encoded(ids, labels)


def truncate(enc: Encoded, max_length: int) -> Encoded:
    if len(enc.input_ids) <= max_length:
        return enc
    labels = enc.labels[:max_length] if isinstance(enc.labels, list) else enc.labels
    return Encoded(enc.input_ids[:max_length], labels, truncated=True)
