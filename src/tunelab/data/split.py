"""Validation split: a seeded fraction of the training rows, and train/validation overlap."""

from __future__ import annotations

import random

from .records import Record


def split_validation(records: list[Record], fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """Hold out a seeded fraction; the same seed and rows give the same split."""
    if fraction <= 0 or len(records) < 2:
        return records, []
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(records) * fraction))
    val_idx = set(order[:n_val])
    train = [r for i, r in enumerate(records) if i not in val_idx]
    val = [records[i] for i in order[:n_val]]  # shuffled: any first-N subset is a fair sample of a sorted file
    return train, val


def overlap(train: list[Record], val: list[Record]) -> int:
    """Validation rows that also appear, exactly, in the training rows."""
    keys = {r.key() for r in train}
    return sum(r.key() in keys for r in val)
