"""Numbers as the report shows them: which metrics are shares, how values and differences are written."""

from __future__ import annotations

import math
from typing import Any

from ..eval.metrics import bootstrap_diff

LOWER_IS_BETTER = {"loss", "perplexity", "eval_loss", "unsupported_terms"}
NOT_SHARES = {"loss", "perplexity", "eval_loss", "chrf", "bleu"}
METRIC_ORDER = ("accuracy", "macro_f1", "exact_match", "numeric_accuracy", "token_f1", "rouge_l", "key_term_recall",
                "unsupported_terms", "chrf", "bleu", "loss", "perplexity")
METRIC_NAMES = {"accuracy": "accuracy", "macro_f1": "macro F1", "exact_match": "exact match",
                "numeric_accuracy": "numeric accuracy", "token_f1": "token F1", "rouge_l": "ROUGE-L",
                "key_term_recall": "key terms kept", "unsupported_terms": "unsupported key terms",
                "chrf": "chrF", "bleu": "BLEU", "loss": "loss", "perplexity": "perplexity",
                "eval_loss": "validation loss", "train_loss": "training loss"}


def num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    return float(x) if math.isfinite(x) else None


def is_share(metric: str, *values: float | None) -> bool:
    """Accuracy-like metrics in [0, 1] are shown as percentages and their differences as points."""
    vals = [v for v in values if v is not None]
    return metric not in NOT_SHARES and bool(vals) and all(0.0 <= v <= 1.0 for v in vals)


def fmt_value(metric: str, v: float | None, share: bool, digits: int = 0) -> str:
    if v is None:
        return "–"
    if share:
        return f"{v * 100:.{digits}f}%"
    return f"{v:.4g}" if metric in LOWER_IS_BETTER or abs(v) < 100 else f"{v:,.0f}"


def fmt_diff(d: float, share: bool, digits: int = 0) -> str:
    sign = "+" if d > 0 else "−" if d < 0 else ""
    if share:
        return f"{sign}{abs(d) * 100:.{digits}f}"
    return f"{sign}{abs(d):.3g}"


def digits(*vals: float | None) -> int:
    """Whole percentages unless that would hide a difference smaller than one point."""
    xs = [v for v in vals if v is not None]
    return 1 if any(0 < abs(a - b) < 0.02 for a in xs for b in xs) else 0


def pct(x: Any) -> str:
    v = num(x)
    return "–" if v is None else f"{v:.0%}"


def paired_bootstrap(tuned: list[bool], base: list[bool]) -> tuple[float, float]:
    """95% interval of accuracy(tuned) - accuracy(base) over resampled rows (the same rows for both)."""
    _, lo, hi = bootstrap_diff([float(x) for x in tuned], [float(x) for x in base])
    return lo, hi
