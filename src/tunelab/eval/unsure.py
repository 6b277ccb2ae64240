"""The unsure answer (classification.unsure_label): a fallback label such as `oos` when the model's best label is
not likely enough, and the threshold that auto calibrates on the validation rows."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..config import TunelabConfig


@dataclass(frozen=True)
class Unsure:
    label: str
    threshold: float  # answers whose probability is below it become `label`

    def apply(self, preds: list[str], probs: list[float]) -> list[str]:
        return apply_unsure(preds, probs, self.label, self.threshold)

    def turned(self, preds: list[str], probs: list[float]) -> int:
        """How many answers the threshold changes."""
        return sum(a != b for a, b in zip(preds, self.apply(preds, probs), strict=True))


def apply_unsure(preds: list[str], probs: list[float], label: str, threshold: float) -> list[str]:
    return [label if p < threshold else pred for pred, p in zip(preds, probs, strict=True)]


def calibrate(gold: list[str], preds: list[str], probs: list[float], label: str, budget: float) -> float:
    """The highest threshold that turns at most `budget` of the in-scope rows (gold != label) into `label`.

    Out-of-scope rows are few in a validation split and in-scope ones many: bounding what the threshold costs
    the in-scope rows is what can be measured well. 0.0 (off) when there is no in-scope row to learn from."""
    in_scope = [(pred, p) for g, pred, p in zip(gold, preds, probs, strict=True) if g != label]
    movable = sorted(p for pred, p in in_scope if pred != label)  # rows already answered `label` cost nothing
    if not movable:
        return 0.0
    k = math.floor(budget * len(in_scope) + 1e-9)  # rows the budget allows to turn
    # below movable[k] lie at most k rows (ties with it stay)
    return 1.0 if k >= len(movable) else movable[k]


def for_run(cfg: TunelabConfig | None, summary: dict[str, Any]) -> Unsure | None:
    """A run's unsure rule: its set threshold, or the one calibrated after training (summary.json). None when
    the run has no unsure_label, or an auto threshold it never calibrated (a run that did not finish scoring)."""
    if cfg is None or cfg.task != "classification" or cfg.classification.unsure_label is None:
        return None
    c = cfg.classification
    if c.unsure_below != "auto":
        return Unsure(str(c.unsure_label), float(c.unsure_below))
    kept = (summary.get("unsure") or {}).get("threshold")
    return Unsure(str(c.unsure_label), float(kept)) if isinstance(kept, int | float) else None
