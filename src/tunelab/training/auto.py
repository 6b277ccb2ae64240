"""`auto` hyperparameters, resolved from the data and the model as OpenAI's API does."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass
class Resolved:
    epochs: int
    learning_rate: float
    batch_size: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def auto_epochs(n_rows: int) -> int:
    """Fewer passes for more rows: 3000 rows or more -> 1 epoch, 300 or fewer -> 10."""
    return max(1, min(10, math.ceil(3000 / max(n_rows, 1))))


def auto_learning_rate(method: str, n_params: int, head: bool) -> float:
    if method == "full":
        return 5e-5 if n_params < 300e6 else 2e-5
    if head:
        return 1e-3
    if n_params < 300e6:
        return 1e-3
    return 5e-4 if n_params < 1.5e9 else 2e-4


def auto_batch_size(lengths: list[int], token_budget: int = 4096, cap: int = 32) -> int:
    """The largest power of two whose batch of 90th-percentile rows fits the token budget."""
    if not lengths:
        return 1
    p90 = sorted(lengths)[int(0.9 * (len(lengths) - 1))]
    bs = max(1, min(cap, token_budget // max(p90, 1)))
    return 2 ** int(math.log2(bs))


def resolve(
    *, epochs: int | str, learning_rate: float | str, batch_size: int | str, grad_accum: int,
    max_steps: int | None, warmup_ratio: float, method: str, n_params: int, head: bool, lengths: list[int],
) -> Resolved:
    ep = auto_epochs(len(lengths)) if epochs == "auto" else int(epochs)
    lr = auto_learning_rate(method, n_params, head) if learning_rate == "auto" else float(learning_rate)
    bs = auto_batch_size(lengths) if batch_size == "auto" else int(batch_size)
    per_epoch = max(1, math.ceil(len(lengths) / (bs * grad_accum)))
    total = max_steps or per_epoch * ep
    return Resolved(ep, lr, bs, per_epoch, total, math.ceil(warmup_ratio * total))
