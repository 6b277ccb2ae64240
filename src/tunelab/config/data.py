from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import Section
from .curate import CurateConfig

DataFormat = Literal["auto", "chat", "alpaca", "sharegpt", "completion", "text", "classification"]


class DataConfig(Section):
    train: str = ""
    """Training data: a .jsonl/.json/.csv/.parquet file, a directory of them, or a saved `datasets` dataset."""

    validation: str | None = None
    """Validation data in the same formats; when empty, val_fraction of the training file is held out."""

    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    """Seeded fraction of the training rows held out for validation when no validation file is given."""

    format: DataFormat = "auto"
    """Row format; auto detects it per file from the fields present."""

    columns: dict[str, str] = {}
    """Column mapping from tunelab names to yours, e.g. {text: text, label: category} for banking77."""

    system_prompt: str | None = None
    """System message added to rows that have none (chat, alpaca, classification-as-generation)."""

    on_error: Literal["fail", "skip"] = "fail"
    """Bad rows: fail refuses to train and lists every problem; skip drops them and records why in the run."""

    too_long: Literal["truncate", "drop", "split"] = "truncate"
    """Rows over model.max_length tokens: truncate them, drop them, or (plain-text rows, for continued
    pre-training on long documents) split them into consecutive pieces of max_length tokens, so that every
    token is trained; the pieces of one document stay on one side of the validation split."""

    train_on: Literal["assistant", "all"] = "assistant"
    """Which tokens carry loss: assistant replies only (honouring per-message weight 0) or every token."""

    cache: bool = True
    """Keep tokenised rows between runs (in tunelab's cache directory), so re-running on the same file with the
    same tokenizer and encoding settings skips tokenisation."""

    limit: int | None = Field(None, gt=0)
    """Train on a seeded random sample of N rows (after the validation split): quick experiments."""

    curate: CurateConfig | None = None
    """Curate the rows before training, as `tunelab data curate` does (duplicates, leaks, personal data, suspect
    labels, quality filters; every removed or changed row listed in the run's curation report). Empty: only
    leaks between the training and validation data are looked for, and reported as warnings."""
