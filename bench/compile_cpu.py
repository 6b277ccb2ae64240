"""Does torch.compile pay for itself in a LoRA training run on this CPU? Compile time and step throughput of
the default model's decoder compiled (inductor, static shapes) against eager, same batch, same run.

    python bench/compile_cpu.py [--batch 16] [--seq 64] [--steps 6]
"""

from __future__ import annotations

import argparse
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from tunelab.models.load import resolve
from tunelab.training.trainer import causal_lm_loss


def measure(compiled: bool, batch: int, seq: int, steps: int) -> tuple[float, float]:
    model = AutoModelForCausalLM.from_pretrained(resolve(None).path, dtype=torch.bfloat16)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", lora_dropout=0.0,
                                             task_type="CAUSAL_LM"))
    if compiled:
        model.get_base_model().model.compile(dynamic=False)
    torch.manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq))
    labels = ids.clone()
    labels[:, : seq - 10] = -100
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = causal_lm_loss(model, inputs, None, True)
        loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t0)
    steady = sorted(times[1:])[len(times[1:]) // 2]
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
