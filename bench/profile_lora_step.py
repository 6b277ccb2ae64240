"""Where one LoRA training step's CPU time goes, by kind of op (torch.profiler): the default model, LoRA r16 on all
linear layers, bf16 autocast, a random padded batch whose last 6 tokens carry labels, AdamW; `--bf16-frozen` holds
the frozen weights in bf16 as tunelab's training does (`train.frozen_bf16`).

    python bench/profile_lora_step.py [--batch 16] [--seq 64] [--bf16-frozen] [--steps 3]

`--compiled` profiles the step `train.compile` runs instead: packed batches of rows of varying lengths
(bench/compile_cpu.py's), decoder layers compiled, frozen weights in bf16, each inductor kernel timed on its own;
the time is split into dense matmuls, LoRA's rank-r products, the rows' attention (matmuls, softmax, gather and
scatter), other fused loops, the compiled graphs' Python wrappers, and the LM head with its cross-entropy.
The profiler slows small calls most, so the shares of many small ones are upper bounds.
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
    ap.add_argument("--compiled", action="store_true")
    a = ap.parse_args()
    if a.compiled:
        compiled_profile(a.steps)
        return
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


def compiled_kind(name: str, shapes: list[Any]) -> str:
    dims = {d for shape in shapes for d in (shape or [])}
    if 49152 in dims:  # the vocabulary
        return "LM head matmuls" if name == "aten::mm" else "LM head: weight cast, log-softmax and its gradient"
    if name == "aten::mm":
        return "LoRA rank-16 matmuls" if 16 in dims else "dense matmuls"
    if name == "aten::bmm" or "softmax" in name:
        return "rows' attention: matmuls and softmax"
    if "index_add" in name or "index_select" in name:
        return "rows' attention: gather/scatter (+ fused neighbours)"
    if name.startswith("graph_") or name.startswith("cpp_fused"):
        return "other fused loops (norms, rope, SiLU x up, residuals, casts)"
    if name.startswith("## Call CompiledFxGraph"):
        return "compiled graphs' Python wrappers"
    if name == "_LinearCrossEntropy":
        return "LM head: weight cast, log-softmax and its gradient"
    if name.startswith("aten::_foreach") or "adam" in name.lower() or name in {"aten::lerp_", "aten::addcdiv_",
                                                                              "aten::addcmul_", "aten::sqrt"}:
        return "optimizer"
    return "other (casts, dynamo guards, autograd)"


def compiled_profile(steps: int) -> None:
    import torch._inductor.config as inductor_config
    from compile_cpu import batches, train_step

    from tunelab.training.compiled import compile_for_training
    from tunelab.training.packing import use_varlen_attention

    inductor_config.cpp.enable_kernel_profile = True
    torch.manual_seed(0)
    model = lora_model(torch.float32, to_bf16)
    use_varlen_attention(model)
    compile_for_training(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    data = batches(steps + 5, model.config.vocab_size)

    for inputs in data[:3]:  # compilation and warm-up
        train_step(model, opt, inputs)
    t0, tokens = time.perf_counter(), sum(b["input_ids"].shape[1] for b in data[3:5])
    for inputs in data[3:5]:
        train_step(model, opt, inputs)
    rate = tokens / (time.perf_counter() - t0)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for inputs in data[5:]:
            train_step(model, opt, inputs)
    tokens = sum(b["input_ids"].shape[1] for b in data[5:]) / steps
    seconds: collections.Counter[str] = collections.Counter()
    for e in prof.key_averages(group_by_input_shape=True):
        seconds[compiled_kind(e.key, e.input_shapes)] += e.self_cpu_time_total / 1e6 / steps
    total = sum(seconds.values())
    print(f"{machine()['cpu']}; compiled layers, packed batches of {tokens:.0f} tokens: {rate:.0f} tokens/s without "
          f"the profiler, {total:.2f} s a step with it")
    for k, s in seconds.most_common():
        print(f"  {k:62s} {s / total:6.1%} {s * 1e3:8.0f} ms")


if __name__ == "__main__":
    main()
