"""Causal attention of padded rows on a CPU, forward and backward, as a decoder layer of the default model runs it
in training (9 query heads sharing 3 key/value heads, head size 64, bf16): the matmul attention tunelab uses
(query heads grouped per key/value head, softmax computing in fp32 from the bf16 scores) against the form it had
before (keys and values repeated for every query head, scores copied to fp32 for softmax) and sdpa (causal, GQA).
Shapes are the two padded batches of a packed training batch (bench/compile_cpu.py's: 5 rows of 124 tokens and
3 of 178); each form eager and compiled (dynamic shapes, as train.compile does), alternating, best of rounds.

    python bench/attention_cpu.py [--rounds 3] [--iters 30]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from quality_common import machine

from tunelab.training.packing import _causal_attention

SHAPES = [(5, 124), (3, 178)]  # (rows, longest) of the two padded batches
HEADS, GROUPS, DIM = 9, 3, 64


def repeated(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: float | None) -> torch.Tensor:
    """The form before: keys/values repeated per query head, the scores copied to fp32 for softmax."""
    from transformers.integrations.sdpa_attention import repeat_kv

    n_rep = q.shape[1] // k.shape[1]
    k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
    t = q.shape[-2]
    scores = (q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
    scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    return (torch.softmax(scores.float(), dim=-1).to(v.dtype) @ v).transpose(1, 2)


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: float | None) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True).transpose(1, 2)


def time_ms(fn: Callable[..., torch.Tensor], iters: int) -> float:
    torch.manual_seed(0)
    inputs = [tuple(torch.randn(rows, h, t, DIM, dtype=torch.bfloat16, requires_grad=True)
                    for h in (HEADS, GROUPS, GROUPS)) for rows, t in SHAPES]

    def once() -> None:
        for q, k, v in inputs:
            fn(q, k, v, None).float().sum().backward()

    for _ in range(3):  # warm-up (and compilation)
        once()
    t0 = time.perf_counter()
    for _ in range(iters):
        once()
    return (time.perf_counter() - t0) / iters * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=30)
    a = ap.parse_args()
    print(f"{machine()['cpu']}; padded batches {SHAPES}, {HEADS} query / {GROUPS} key-value heads, bf16, "
          "forward + backward, one layer")
    forms = {"before (repeated k/v)": repeated, "tunelab (grouped)": _causal_attention, "sdpa": sdpa}
    arms = {f"{name}, {mode}": (fn if mode == "eager" else torch.compile(fn, dynamic=True))
            for mode in ("eager", "compiled") for name, fn in forms.items()}
    best = {name: min(time_ms(fn, a.iters) for _ in range(a.rounds)) for name, fn in arms.items()}
    for mode in ("eager", "compiled"):
        base = best[f"before (repeated k/v), {mode}"]
        for name in forms:
            ms = best[f"{name}, {mode}"]
            print(f"  {name + ', ' + mode:34s} {ms:7.2f} ms  {base / ms:5.2f}x the form before")


if __name__ == "__main__":
    main()
