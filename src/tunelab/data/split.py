"""Validation split (a seeded fraction of the training rows), data.limit sampling, train/validation overlap."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TypeVar

from .records import Record

T = TypeVar("T")


def split_validation(records: list[T], fraction: float, seed: int,
                     group: Callable[[T], str] | None = None) -> tuple[list[T], list[T]]:
    """Hold out a seeded fraction; the same seed and rows give the same split. group: rows with the same key
    (the pieces of one split document) go to the same side."""
    if group is not None:
        keys = list(dict.fromkeys(group(r) for r in records))
        kept, held = split_validation(keys, fraction, seed)
        held_set = set(held)
        return [r for r in records if group(r) not in held_set], [r for r in records if group(r) in held_set]
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


def sample_limit(rows: list[T], limit: int | None, seed: int) -> list[T]:
    """data.limit: a seeded random sample of `limit` rows (pairs, prompts), in their original order."""
    if not limit or limit >= len(rows):
        return rows
    keep = set(random.Random(seed).sample(range(len(rows)), limit))
    return [r for i, r in enumerate(rows) if i in keep]
