"""Where one LoRA training step's CPU time goes, by kind of op (torch.profiler): the default model, LoRA r16 on all
linear layers, bf16 autocast, a random padded batch whose last 6 tokens carry labels, AdamW; `--bf16-frozen` holds
the frozen weights in bf16 as tunelab's training does (`train.frozen_bf16`).

    python bench/profile_lora_step.py [--batch 16] [--seq 64] [--bf16-frozen] [--steps 3]
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).parent))
from lora_step import lora_model  # noqa: E402
from quality_common import machine  # noqa: E402

from tunelab.training.frozen import to_bf16  # noqa: E402
from tunelab.training.trainer import causal_lm_loss  # noqa: E402

MATMUL = {"aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear"}
COPY = {"aten::copy_", "aten::to", "aten::_to_copy", "aten::clone", "aten::contiguous"}
ELEMENTWISE = {"aten::mul", "aten::add", "aten::add_", "aten::mul_", "aten::silu", "aten::silu_backward", "aten::pow",
               "aten::mean", "aten::rsqrt", "aten::neg", "aten::cat", "aten::sum", "aten::div", "aten::masked_fill",
               "aten::fill_", "aten::zero_", "aten::sub", "aten::where", "aten::embedding_dense_backward",
               "aten::index_select", "aten::embedding"}


def kind(name: str) -> str:
    if name in MATMUL:
        return "matmul"
    if name in COPY:
        return "copy/cast"
    if "attention" in name:
        return "attention (sdpa)"
    if "softmax" in name or "nll" in name:
        return "softmax/loss"
    if name.startswith("aten::_foreach") or "adam" in name.lower():
        return "optimizer"
    if name in ELEMENTWISE:
        return "elementwise (norms, rope, silu*up, LoRA scaling, residuals)"
    return "other"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--bf16-frozen", action="store_true")
    a = ap.parse_args()
    torch.manual_seed(0)
    model = lora_model(torch.float32, to_bf16 if a.bf16_frozen else None)
    ids = torch.randint(0, model.config.vocab_size, (a.batch, a.seq))
    labels = ids.clone()
    labels[:, : a.seq - 6] = -100
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = causal_lm_loss(model, inputs, None, True)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(2):  # warm-up
        step()
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        for _ in range(a.steps):
            step()
    wall = (time.perf_counter() - t0) / a.steps
    seconds: collections.Counter[str] = collections.Counter()
    flops: collections.Counter[str] = collections.Counter()
    events: list[Any] = list(prof.key_averages())
    for e in events:
        seconds[kind(e.key)] += e.self_cpu_time_total / 1e6 / a.steps
        flops[kind(e.key)] += (e.flops or 0) / a.steps
    total = sum(seconds.values())
    print(f"{machine()['cpu']}; batch {a.batch} x {a.seq}, frozen weights {'bf16' if a.bf16_frozen else 'fp32'}: "
          f"{wall:.2f} s a step with the profiler on ({a.batch * a.seq / wall:.0f} tokens/s)")
    for k, s in seconds.most_common():
        rate = f"  {flops[k] / s / 1e9:.0f} GFLOP/s" if flops[k] else ""
        print(f"  {k:62s} {s / total:6.1%} {s * 1e3:8.0f} ms{rate}")
    print("busiest ops:")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:10]:
        print(f"  {e.key:62s} {e.self_cpu_time_total / 1e3 / a.steps:8.0f} ms  {e.count // a.steps} calls a step")


if __name__ == "__main__":
    main()
