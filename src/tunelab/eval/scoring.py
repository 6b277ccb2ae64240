"""Model-side primitives shared by evaluation and probes: greedy answers, and how likely a reference is."""

from __future__ import annotations

from typing import Any

import torch

from ..data.records import Message, Record
from ..data.templates import IGNORE, encode_record, render_chat
from ..training.collate import PadCollator
from .classify import BATCH_SIZE, left_padding

Prompt = str | list[Message]  # raw text, or a conversation to continue as the assistant


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def generate_answers(model: Any, tokenizer: Any, prompts: list[Prompt], max_new_tokens: int,
                     batch_size: int = BATCH_SIZE, sampling: dict[str, Any] | None = None) -> list[str]:
    """Greedy answers, batched with left padding; sampling: model.generate's sampling settings instead
    (temperature, top_p, repetition_penalty...; seed torch first for answers that repeat)."""
    dev = _device(model)
    out: list[str] = []
    with left_padding(tokenizer):
        for i in range(0, len(prompts), batch_size):
            chunk = prompts[i : i + batch_size]
            texts = [p if isinstance(p, str) else render_chat(tokenizer, p, tokenize=False, add_generation_prompt=True)
                     for p in chunk]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(dev)
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=bool(sampling),
                                 pad_token_id=tokenizer.pad_token_id, **(sampling or {}))
            new = gen[:, enc["input_ids"].shape[1]:]
            out += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    return out


@torch.no_grad()
def reference_logprobs(model: Any, tokenizer: Any, prompts: list[list[Message]], references: list[str],
                       batch_size: int = BATCH_SIZE) -> list[float]:
    """Mean log-probability per token of each reference reply, given its conversation."""
    rows = []
    for p, ref in zip(prompts, references, strict=True):
        enc = encode_record(Record("probe", "chat", messages=[*p, {"role": "assistant", "content": ref}]), tokenizer)
        rows.append({"input_ids": enc.input_ids, "labels": enc.labels})
    collate, dev, out = PadCollator(tokenizer.pad_token_id), _device(model), []
    for i in range(0, len(rows), batch_size):
        batch = {k: v.to(dev) for k, v in collate(rows[i : i + batch_size]).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
        labels = batch["labels"][:, 1:]
        keep = labels != IGNORE
        picked = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        out += ((picked * keep).sum(1) / keep.sum(1).clamp(min=1)).tolist()
    return out


@torch.no_grad()
def text_perplexity(model: Any, tokenizer: Any, texts: list[str], max_length: int = 512) -> float:
    """Perplexity over all tokens of plain texts (token-weighted)."""
    dev, total, count = _device(model), 0.0, 0
    for text in texts:
        ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_length)["input_ids"].to(dev)
        if ids.shape[1] < 2:
            continue
        logits = model(input_ids=ids).logits[:, :-1].float()
        total += float(torch.nn.functional.cross_entropy(logits[0], ids[0, 1:], reduction="sum"))
        count += ids.shape[1] - 1
    return float(torch.exp(torch.tensor(total / max(count, 1))))
