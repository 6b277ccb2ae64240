"""Classification answers: constrained to the label set (generation) or a head's argmax, with their probabilities."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

from ..config import default
from ..data.templates import IGNORE, classification_messages, render_chat

BATCH_SIZE: int = default("eval.batch_size")


@contextlib.contextmanager
def left_padding(tokenizer: Any) -> Iterator[None]:
    """Batched generation pads on the left; the tokenizer gets its own setting back afterwards."""
    saved, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        yield
    finally:
        tokenizer.padding_side = saved


def label_token_ids(tokenizer: Any, display: list[str], system_prompt: str | None) -> list[tuple[int, ...]]:
    """Each label's answer tokens exactly as training saw them (content + end-of-turn)."""
    from ..data.templates import _encode_spans, assistant_spans

    out = []
    for label in display:
        full, spans = assistant_spans(tokenizer, classification_messages("x", label, system_prompt))
        ids, labels = _encode_spans(tokenizer, full, spans)
        out.append(tuple(t for t, lab in zip(ids, labels, strict=True) if lab != IGNORE))
    if len(set(out)) != len(out):
        from ..data.records import DataError, Problem

        raise DataError([Problem("labels", "two labels tokenize identically; make the label names distinct")])
    return out


def _trie(seqs: list[tuple[int, ...]]) -> dict[tuple[int, ...], list[int]]:
    nxt: dict[tuple[int, ...], set[int]] = {}
    for s in seqs:
        for i in range(len(s)):
            nxt.setdefault(s[:i], set()).add(s[i])
    return {k: sorted(v) for k, v in nxt.items()}


def predict_generate(
    model: Any, tokenizer: Any, texts: list[str], labels: list[str], display: list[str],
    system_prompt: str | None, batch_size: int = BATCH_SIZE, bf16: bool = False,
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """Greedy answers restricted, token by token, to the label set."""
    return scored_generate(model, tokenizer, texts, labels, display, system_prompt, batch_size, bf16, progress)[0]


@torch.no_grad()
def scored_generate(
    model: Any, tokenizer: Any, texts: list[str], labels: list[str], display: list[str],
    system_prompt: str | None, batch_size: int = BATCH_SIZE, bf16: bool = False,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[str], list[float]]:
    """predict_generate's answers and each answer's probability among the labels: the product of its tokens'
    probabilities, each a softmax over the tokens the label trie allows at that step."""
    seqs = label_token_ids(tokenizer, display, system_prompt)
    trie, by_seq = _trie(seqs), {s: lab for s, lab in zip(seqs, labels, strict=True)}
    pad = tokenizer.pad_token_id
    eos_stop = sorted({s[-1] for s in seqs})
    preds: list[str] = []
    probs: list[float] = []
    with left_padding(tokenizer):
        dev = next(model.parameters()).device
        for i in range(0, len(texts), batch_size):
            chunk = texts[i : i + batch_size]
            prompts = [render_chat(tokenizer, classification_messages(t, None, system_prompt), tokenize=False,
                                   add_generation_prompt=True) for t in chunk]
            enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(dev)
            start = enc["input_ids"].shape[1]

            def allowed(batch_id: int, ids: torch.Tensor, start: int = start) -> list[int]:
                return trie.get(tuple(ids[start:].tolist()), [pad])

            ctx = torch.autocast(dev.type, dtype=torch.bfloat16) if bf16 else torch.autocast(dev.type, enabled=False)
            with ctx:
                out = model.generate(**enc, max_new_tokens=max(map(len, seqs)), do_sample=False,
                                     prefix_allowed_tokens_fn=allowed, pad_token_id=pad, eos_token_id=eos_stop,
                                     output_scores=True, return_dict_in_generate=True)
            new = out.sequences[:, start:]
            # out.scores: one (batch, vocab) per step, after the trie's mask (-inf outside the allowed tokens)
            step_logp = torch.stack([s.float().log_softmax(-1).gather(-1, new[:, t : t + 1]).squeeze(-1)
                                     for t, s in enumerate(out.scores)], 1)  # (batch, steps)
            for b, row in enumerate(new.tolist()):
                while row and row[-1] == pad and tuple(row) not in by_seq:
                    row.pop()
                label = by_seq.get(tuple(row))
                preds.append(label if label is not None else labels[0])
                # the steps after the label's own tokens are padding of a finished row: not part of its probability
                probs.append(float(step_logp[b, : len(row)].sum().exp()) if label is not None else 0.0)
            if progress:
                progress(len(chunk))
    return preds, probs


def predict_head(
    model: Any, tokenizer: Any, texts: list[str], labels: list[str], batch_size: int = BATCH_SIZE, bf16: bool = False,
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """Argmax of a sequence-classification head."""
    return scored_head(model, tokenizer, texts, labels, batch_size, bf16, progress)[0]


@torch.no_grad()
def scored_head(
    model: Any, tokenizer: Any, texts: list[str], labels: list[str], batch_size: int = BATCH_SIZE, bf16: bool = False,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[str], list[float]]:
    """predict_head's answers and each answer's softmax probability."""
    eos = tokenizer.eos_token or ""
    preds: list[str] = []
    probs: list[float] = []
    dev = next(model.parameters()).device
    for i in range(0, len(texts), batch_size):
        chunk = texts[i : i + batch_size]
        enc = tokenizer([t + eos for t in chunk], return_tensors="pt", padding=True, add_special_tokens=False).to(dev)
        ctx = torch.autocast(dev.type, dtype=torch.bfloat16) if bf16 else torch.autocast(dev.type, enabled=False)
        with ctx:
            logits = model(**enc).logits
        best = logits.float().softmax(-1).max(-1)
        preds += [labels[j] for j in best.indices.tolist()]
        probs += best.values.tolist()
        if progress:
            progress(len(chunk))
    return preds, probs
