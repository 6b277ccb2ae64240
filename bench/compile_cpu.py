"""Does torch.compile pay for itself in LoRA training on this CPU? Three ways of running the same steps of the
default model (LoRA r16 on all linear layers, bf16 autocast, bf16 frozen weights as `tunelab train` holds them,
AdamW) on the same packed batches of rows of varying lengths (8 rows of 15-40 or 100-250 tokens a batch):

  eager           packed rows, attention row by row (tunelab without train.compile)
  whole_decoder   the decoder compiled as one module, static shapes (what was tried first: every new batch
                  shape compiles again, and the per-row attention loop breaks the graph)
  tunelab         training.compiled: each decoder layer compiled with dynamic shapes, the rows' attention in two
                  padded batches (train.compile)

Each arm in its own process, the inductor cache as the machine has it; first step (compilation included) and
steady tokens/s over the other steps.

    python bench/compile_cpu.py [--steps 12] [--arms eager,whole_decoder,tunelab]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from typing import Any

import torch
from lora_step import lora_model
from quality_common import machine

from tunelab.training.frozen import to_bf16
from tunelab.training.packing import PackCollator, use_varlen_attention
from tunelab.training.trainer import causal_lm_loss


def batches(n: int, vocab: int) -> list[dict[str, torch.Tensor]]:
    rng = random.Random(0)
    out = []
    for _ in range(n):
        rows = []
        for _ in range(8):
            length = rng.choice([rng.randint(15, 40), rng.randint(100, 250)])
            ids = [rng.randrange(vocab) for _ in range(length)]
            rows.append({"input_ids": ids, "labels": [-100] * (length // 2) + ids[length // 2:]})
        out.append(PackCollator()(rows))
    return out


def train_step(model: Any, opt: torch.optim.Optimizer, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """One LoRA step as `tunelab train` runs it on a CPU: bf16 autocast, the chunked LM-head loss, AdamW."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = causal_lm_loss(model, inputs, None, True, chunk=512)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss


def arm(name: str, steps: int) -> dict[str, Any]:
    torch.manual_seed(0)
    model = lora_model(torch.float32, to_bf16)
    use_varlen_attention(model)
    if name == "whole_decoder":
        model.get_base_model().model.compile(dynamic=False)
    elif name == "tunelab":
        from tunelab.training.compiled import compile_for_training

        compile_for_training(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    times, tokens = [], []
    for inputs in batches(steps, model.config.vocab_size):
        t0 = time.perf_counter()
        loss = train_step(model, opt, inputs)
        times.append(time.perf_counter() - t0)
        tokens.append(inputs["input_ids"].shape[1])
    return {"first_step_s": times[0], "steady_tok_s": sum(tokens[1:]) / sum(times[1:]),
            "all_tok_s": sum(tokens) / sum(times), "last_loss": loss.item()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--arms", default="eager,whole_decoder,tunelab")
    ap.add_argument("--child")
    a = ap.parse_args()
    if a.child:
        print(json.dumps(arm(a.child, a.steps)))
        return
    print(machine()["cpu"], flush=True)
    base = None
    for name in a.arms.split(","):
        out = subprocess.run([sys.executable, __file__, "--child", name, "--steps", str(a.steps)], check=True,
                             capture_output=True, text=True).stdout.strip().splitlines()[-1]
        r = json.loads(out)
        base = base or r["steady_tok_s"]
        print(f"{name:<14} first step {r['first_step_s']:6.1f} s  steady {r['steady_tok_s']:6.0f} tok/s "
              f"({r['steady_tok_s'] / base:.2f}x)  all steps {r['all_tok_s']:6.0f} tok/s  last loss "
              f"{r['last_loss']:.4f}", flush=True)


if __name__ == "__main__":
    main()
