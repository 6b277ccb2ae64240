"""Does torch.compile pay for itself in a LoRA training run on this CPU? Compile time and step throughput of
the default model's decoder compiled (inductor, static shapes) against eager, same batch, same run.

    python bench/compile_cpu.py [--batch 16] [--seq 64] [--steps 6]
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from lora_step import lora_model, median, step_times


def measure(compiled: bool, batch: int, seq: int, steps: int) -> tuple[float, float]:
    def compile_decoder(model: Any) -> None:
        model.get_base_model().model.compile(dynamic=False)

    model = lora_model(torch.bfloat16, compile_decoder if compiled else None)
    times = step_times(model, True, batch, seq, steps, labelled=10)
    steady = median(times[1:])
    return times[0] - steady, batch * seq / steady  # first-step overhead (compilation), steady tokens/s


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--steps", type=int, default=6)
    a = ap.parse_args()
    _, eager = measure(False, a.batch, a.seq, a.steps)
    overhead, compiled = measure(True, a.batch, a.seq, a.steps)
    print(f"eager {eager:.0f} tok/s; compiled {compiled:.0f} tok/s ({compiled / eager:.2f}x) after {overhead:.0f} s "
          f"of compilation; break-even after {overhead * eager / max(compiled - eager, 1e-9):.0f} tokens"
          if compiled > eager else f"eager {eager:.0f} tok/s; compiled {compiled:.0f} tok/s ({compiled / eager:.2f}x) "
          f"after {overhead:.0f} s of compilation: never pays")


if __name__ == "__main__":
    main()
