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
    """Compute precision: auto picks bf16 autocast on GPUs that support it and on CPUs with AMX,
    else fp32 (measured faster on AVX-512-bf16-only CPUs)."""
