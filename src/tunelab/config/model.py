from __future__ import annotations

from typing import Literal

from .base import Section


class ModelConfig(Section):
    base: str = "smollm2-135m-instruct"
    """Base model: an alias (smollm2-135m-instruct), a local HF directory, a .gguf file,
    a tunelab run directory, or a hub id."""

    max_length: int = 512
    """Longest example in tokens; longer rows are truncated or dropped (data.too_long)."""

    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """Compute precision: auto picks bf16 on GPUs that support it, and on CPUs where a quick measurement
    (cached per boot) finds bf16 matmuls at least 1.25x faster than fp32; else fp32."""

    quantize: Literal["none", "4bit", "8bit"] = "none"
    """Load the frozen base weights quantized with bitsandbytes, to train LoRA/DoRA adapters on a model that would
    not fit otherwise (QLoRA): 4bit is NF4 with double quantization and bf16 compute, about a quarter of the
    fp16 model's memory; 8bit about half. Needs peft.method lora or dora and `pip install 'tunelab[gpu]'`. Meant
    for GPUs (it also runs on a CPU, slower than unquantized)."""


def quantize_problems(quantize: str, peft_method: str) -> list[tuple[str, str]]:
    """model.quantize with the settings it needs: (dotted key, what is wrong and what to do)."""
    import importlib.util

    if quantize == "none":
        return []
    out = []
    if peft_method not in ("lora", "dora"):
        out.append(("model.quantize", f"model.quantize={quantize} trains adapters on frozen quantized weights: it "
                    f"needs peft.method lora or dora, not {peft_method}"))
    if importlib.util.find_spec("bitsandbytes") is None:
        out.append(("model.quantize", f"model.quantize={quantize} needs bitsandbytes, which is not installed: "
                    "pip install 'tunelab[gpu]'"))
    return out
