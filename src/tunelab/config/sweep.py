from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from .base import Section


class Range(Section):
    low: float
    """Smallest value tried."""

    high: float
    """Largest value tried."""

    log: bool = False
    """Sample on a log scale (learning rates)."""

    integer: bool = False
    """Whole numbers only (epochs, ranks)."""

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log-scale range needs low > 0")
        return self


class SweepConfig(Section):
    trials: int | None = Field(12, gt=0)
    """Trials in all (trials finished before an interruption count); empty: as many as sweep.minutes allows."""

    minutes: float | None = Field(None, gt=0)
    """Time budget: no new trial starts after this many minutes of this `tunelab sweep` (the trial under way
    finishes)."""

    space: dict[str, Range | list[Any]] = {}
    """What to search: a dotted config key -> a range ({low, high, log, integer}) or a list of choices.
    Empty: the default space (learning rate around its auto value, LoRA rank and alpha, epochs, batch size,
    warm-up)."""

    pruning: bool = True
    """Stop a trial early when its validation metric, part way through, is worse than the median of the trials
    before it at the same point."""

    evaluations: int = Field(4, ge=1)
    """Validation evaluations per trial, evenly spaced (the points where a bad trial can be pruned, from the
    second on; trials compare at the same share of their training)."""

    storage: str | None = None
    """Where the study is kept, so a sweep resumes and several `tunelab sweep` processes share it: empty is an
    SQLite file in the sweep's directory; or a database URL (postgresql://...)."""

    seed: int = 0
    """Seed of the sampler (TPE)."""
