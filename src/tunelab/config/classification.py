from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from .base import Section


class ClassificationConfig(Section):
    mode: Literal["generate", "head"] = "generate"
    """generate: the label is the assistant's answer, constrained to the label set at inference;
    head: a sequence-classification head on the same base (LoRA + trained head)."""

    labels: list[str] | None = None
    """The label set; empty means every label seen in the training data."""

    humanize_labels: bool = True
    """Show labels to the model as words (card_arrival -> card arrival) in generate mode."""

    unsure_label: str | None = None
    """A label (one of the label set, e.g. oos for out of scope) answered when the model's probability for its
    best label is below classification.unsure_below; empty: always the best label."""

    unsure_below: Annotated[float, Field(ge=0.0, le=1.0)] | Literal["auto"] = "auto"
    """With unsure_label: the probability (0..1) of the best label under which the unsure label is answered;
    auto calibrates it after training on the validation rows (see unsure_budget)."""

    unsure_budget: float = Field(0.02, ge=0.0, le=1.0)
    """unsure_below: auto picks the highest threshold that turns at most this share of the in-scope validation
    rows (those whose true label is not unsure_label) into unsure_label."""

    @model_validator(mode="after")
    def _unsure_in_labels(self) -> ClassificationConfig:
        if self.unsure_label is not None and self.labels and self.unsure_label not in self.labels:
            raise ValueError(f"classification.unsure_label={self.unsure_label!r} is not among classification.labels "
                             f"{self.labels[:10]}{'...' if len(self.labels) > 10 else ''}: name one of them")
        return self
