"""LoRA training step throughput on this CPU: fp32 vs bf16 autocast (fp32 or bf16 frozen weights).

Decides what `model.precision: auto` picks on CPUs. Same model, batch and LoRA config, in one run:
    python bench/precision_cpu.py [--batch 16] [--seq 56] [--steps 6]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from tunelab.models.load import resolve
from tunelab.training.hardware import cpu_flags, matmul_peak_gflops
from tunelab.training.trainer import causal_lm_loss


def measure(weights: torch.dtype, autocast: bool, batch: int, seq: int, steps: int) -> float:
    model = AutoModelForCausalLM.from_pretrained(resolve(None).path, dtype=weights)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                             lora_dropout=0.0, task_type="CAUSAL_LM"))
    torch.manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq))
    labels = ids.clone()
    labels[:, : seq - 6] = -100
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    rates = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = causal_lm_loss(model, inputs, None, True)
        loss.backward()
        opt.step()
        opt.zero_grad()
        if i:  # the first step warms up kernels
            rates.append(batch * seq / (time.perf_counter() - t0))
    return sorted(rates)[len(rates) // 2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=56)
    ap.add_argument("--steps", type=int, default=6)
    a = ap.parse_args()
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, "
          f"avx512_bf16={'avx512_bf16' in cpu_flags()}, amx={'amx_bf16' in cpu_flags()}")
    print(f"matmul peak: fp32 {matmul_peak_gflops(False):.0f} GFLOP/s, bf16 {matmul_peak_gflops(True):.0f} GFLOP/s")
    fp32 = measure(torch.float32, False, a.batch, a.seq, a.steps)
    rows = [("fp32", fp32),
            ("bf16 autocast, fp32 weights", measure(torch.float32, True, a.batch, a.seq, a.steps)),
            ("bf16 autocast, bf16 frozen weights", measure(torch.bfloat16, True, a.batch, a.seq, a.steps))]
    print(f"LoRA r16 all-linear, batch {a.batch}x{a.seq}, median of {a.steps} steps")
    print(f"{'setting':<36} {'tok/s':>8} {'vs fp32':>8}")
    for name, r in rows:
        print(f"{name:<36} {r:8.0f} {r / fp32:8.2f}x")


if __name__ == "__main__":
    main()
