"""The LoRA training step the CPU microbenchmarks time: the default model with LoRA r16 on all linear
layers, a random batch whose last tokens carry labels, tunelab's loss, AdamW."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from tunelab.models.load import resolve
from tunelab.training.trainer import causal_lm_loss


def lora_model(weights: torch.dtype, prepare: Callable[[Any], None] | None = None) -> Any:
    model = AutoModelForCausalLM.from_pretrained(resolve(None).path, dtype=weights)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                             lora_dropout=0.0, task_type="CAUSAL_LM"))
    if prepare:
        prepare(model)
    return model


def step_times(model: Any, autocast: bool, batch: int, seq: int, steps: int, labelled: int = 6) -> list[float]:
    """Seconds for each of steps + 1 training steps (the first one includes warm-up)."""
    torch.manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq))
    labels = ids.clone()
    labels[:, : seq - labelled] = -100
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = causal_lm_loss(model, inputs, None, True)
        loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t0)
    return times


def median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]
