"""Records -> token ids and labels, with loss only on what the model should learn.

Chat rows go through the tokenizer's own chat template; the trained spans are found by rendering
the conversation prefix by prefix, so any template that renders prefixes consistently works.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .records import Message, Record, RowError

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


def _render(tokenizer: Any, messages: list[Message], gen: bool = False) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
    except Exception as exc:  # jinja errors such as "roles must alternate", or no template at all
        raise RowError(f"the model's chat template rejects this conversation: {exc}", field="messages") from None


def assistant_spans(tokenizer: Any, messages: list[Message]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of the replies that carry loss
    (assistant content plus its end-of-turn token; weight 0 replies excluded)."""
    full = _render(tokenizer, messages)
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], gen=True) if i else ""
        after = _render(tokenizer, messages[: i + 1])
        if i and full.startswith(after) and after.startswith(before):
            start, end = len(before), len(after)
        else:  # template does not render prefixes consistently: locate the content after what precedes it
            prefix = _render(tokenizer, messages[:i]) if i else ""
            from_pos = max(cursor, len(prefix) if full.startswith(prefix) else cursor)
            start = full.find(m["content"], from_pos)
            if start < 0:
                raise RowError(f"messages[{i}]: the chat template changes this assistant reply, so its tokens "
                               "can't be found; use a template that renders replies verbatim", field="messages")
            end = start + len(m["content"])
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
        full, spans = assistant_spans(tokenizer, messages)
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
