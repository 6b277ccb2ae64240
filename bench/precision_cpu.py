"""LoRA training step throughput on this CPU: fp32 vs bf16 autocast (fp32 or bf16 frozen weights).

What bf16 buys on this CPU, beside the matmul rates `model.precision: auto` decides by. Same model, batch
and LoRA config, in one run:
    python bench/precision_cpu.py [--batch 16] [--seq 56] [--steps 6]
"""

from __future__ import annotations

import argparse
import platform

import torch
from lora_step import lora_model, median, step_times

from tunelab.device import cpu_flags, matmul_peak_gflops


def measure(weights: torch.dtype, autocast: bool, batch: int, seq: int, steps: int) -> float:
    times = step_times(lora_model(weights), autocast, batch, seq, steps)
    return batch * seq / median(times[1:])  # the first step warms up kernels


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
