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
