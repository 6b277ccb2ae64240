from __future__ import annotations

from typing import Literal

from .base import Section


class ClassificationConfig(Section):
    mode: Literal["generate", "head"] = "generate"
    """generate: the label is the assistant's answer, constrained to the label set at inference;
    head: a sequence-classification head on the same base (LoRA + trained head)."""

    labels: list[str] | None = None
    """The label set; empty means every label seen in the training data."""

    humanize_labels: bool = True
    """Show labels to the model as words (card_arrival -> card arrival) in generate mode."""
