"""Preference pairs for a run (reward models, DPO and its relatives): loaded, checked, split, sampled."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import TunelabConfig
from ..data.records import DataError, Problem
from ..data.split import sample_limit, split_validation
from .lifecycle import Prepared


@dataclass
class Pairs:
    train: list[Any]
    val: list[Any]


def prepare_pairs(cfg: TunelabConfig) -> Prepared:
    """Training and validation pairs, every problem found before anything is written."""
    from ..data.preference import load_pairs

    fmt = cfg.data.format if cfg.data.format in ("trl", "openai_dpo", "hh_rlhf") else "auto"

    def one(path: str) -> tuple[list[Any], list[Problem], dict[str, str]]:
        pairs, problems, formats = load_pairs(path, fmt, cfg.data.columns, cfg.data.system_prompt)
        errors = [p for p in problems if p.severity == "error"]
        if errors and cfg.data.on_error == "fail":
            raise DataError(errors)
        return pairs, errors, formats

    train, skipped, formats = one(cfg.data.train)
    if cfg.data.validation:
        val, val_skipped, val_formats = one(cfg.data.validation)
        skipped, formats = skipped + val_skipped, formats | val_formats
    else:
        train, val = split_validation(train, cfg.data.val_fraction, cfg.train.seed)
    train = sample_limit(train, cfg.data.limit, cfg.train.seed)
    if not train:
        raise DataError([Problem(cfg.data.train, "no usable preference pairs")])
    report = {"format": formats, "train_pairs": len(train), "validation_pairs": len(val), "skipped": len(skipped)}
    return Prepared(Pairs(train, val), report, skipped)
