"""`tunelab data check`: validate every row and summarise what training would see."""

from __future__ import annotations

from typing import Any

from .preference import PREFERENCE_FORMATS, PreferencePair, is_preference_file, pair_token_counts
from .records import Record
from .report import MAX_LENGTH, TOO_LONG, DataReport, PreferenceReport, preference_report, prepare
from .templates import encode_record, humanize


def _tokenizer_and_speed(model: str | None) -> tuple[Any, float | None]:
    """The model's tokenizer and its estimated training tokens per second here."""
    from transformers import AutoConfig

    from ..device import estimate_tokens_per_second
    from ..models.load import load_tokenizer, resolve, tokenizer_path

    res = resolve(model)
    tokenizer = load_tokenizer(tokenizer_path(res))
    cfg = AutoConfig.from_pretrained(res.path)
    h, n_layers = getattr(cfg, "hidden_size", 0), getattr(cfg, "num_hidden_layers", 0)
    n_params = 12 * n_layers * h * h  # non-embedding parameters, the standard estimate
    return tokenizer, (estimate_tokens_per_second(n_params) if n_params else None)


def check(
    path: str,
    *,
    fmt: str = "auto",
    model: str | None = None,
    max_length: int = MAX_LENGTH,
    columns: dict[str, str] | None = None,
    too_long: str = TOO_LONG,
    tokenize: bool = True,
    curate: bool = True,
    system_prompt: str | None = None,
) -> DataReport | PreferenceReport:
    """Validate a data source; with tokenize, count tokens with the model's tokenizer and estimate time; with
    curate, summarise what `tunelab data curate` would find (duplicates, personal data, suspect labels...).
    Preference data (a preference format given, or detected from the first row) gets a PreferenceReport."""
    rep = _check(path, fmt, model, max_length, columns, too_long, tokenize, system_prompt)
    if curate and rep.rows:
        from .curate.run import preview

        rep.curation = preview(path, fmt, columns)
    return rep


def _check(path: str, fmt: str, model: str | None, max_length: int, columns: dict[str, str] | None, too_long: str,
           tokenize: bool, system_prompt: str | None = None) -> DataReport | PreferenceReport:
    preference = fmt in PREFERENCE_FORMATS or (fmt == "auto" and is_preference_file(path, columns))
    tokenizer, tps = _tokenizer_and_speed(model) if tokenize else (None, None)
    if preference:
        def count(pair: PreferencePair) -> tuple[int, int, int]:
            return pair_token_counts(pair, tokenizer)

        return preference_report(path, count if tokenize else None, fmt=fmt, columns=columns,
                                 max_length=max_length, tokens_per_second=tps)
    encode = None
    if tokenize:
        def encode(rec: Record) -> Any:
            return encode_record(rec, tokenizer, label_text=humanize(rec.label) if rec.label else None)

    _, rep = prepare(path, encode, fmt=fmt, columns=columns, system_prompt=system_prompt, max_length=max_length,
                     too_long=too_long, tokens_per_second=tps)
    return rep
