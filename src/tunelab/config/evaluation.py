from __future__ import annotations

from pydantic import Field

from .base import Section


class EvalConfig(Section):
    compare_base: bool = True
    """Classification: also score the base model on the validation split, to show what tuning changed."""

    during_training: bool = True
    """Classification: score validation accuracy at every evaluation too (logged as eval_accuracy)."""

    limit: int | None = Field(None, gt=0)
    """Score at most this many validation rows for accuracy (the validation loss always uses all of them)."""

    batch_size: int = Field(16, gt=0)
    """Rows per batch when scoring accuracy."""
