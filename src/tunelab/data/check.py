"""`tunelab data check`: validate every row and summarise what training would see."""

from __future__ import annotations

from typing import Any

from .records import Record
from .report import DataReport, prepare
from .templates import encode_record, humanize


def check(
    path: str,
    *,
    fmt: str = "auto",
    model: str | None = None,
    max_length: int = 512,
    columns: dict[str, str] | None = None,
    too_long: str = "truncate",
    tokenize: bool = True,
) -> DataReport:
    """Validate a data source; with tokenize, count tokens with the model's tokenizer and estimate time."""
    encode = None
    tps = None
    if tokenize:
        from ..models.load import load_tokenizer, resolve
        from ..training.hardware import estimate_tokens_per_second

        res = resolve(model)
        tokenizer = load_tokenizer(str(res.run / "tokenizer") if res.run else res.path)

        def encode(rec: Record) -> Any:
            return encode_record(rec, tokenizer, label_text=humanize(rec.label) if rec.label else None)

        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(res.path)
        h, n_layers = getattr(cfg, "hidden_size", 0), getattr(cfg, "num_hidden_layers", 0)
        n_params = 12 * n_layers * h * h  # non-embedding parameters, the standard estimate
        tps = estimate_tokens_per_second(n_params) if n_params else None
    _, rep = prepare(path, encode, fmt=fmt, columns=columns, max_length=max_length, too_long=too_long,
                     tokens_per_second=tps)
    return rep
