"""Data report: every problem with file:line, then a summary of what training will see."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..config import default
from .load import Loaded, load_records
from .preference import PreferencePair, load_pairs_report
from .records import Problem, Record, RowError
from .templates import Encoded, truncate

MAX_LENGTH: int = default("model.max_length")
TOO_LONG: str = default("data.too_long")


@dataclass
class Example:
    """A record with its tokens (labels is an int class index for classification heads)."""

    record: Record
    input_ids: list[int]
    labels: Any


@dataclass
class DataReport:
    source: str
    formats: dict[str, str] = field(default_factory=dict)
    rows: int = 0
    valid_rows: int = 0
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    duplicates: int = 0
    truncated: int = 0
    dropped_too_long: int = 0
    split_rows: int = 0  # plain-text rows split into pieces (data.too_long: split)
    split_pieces: int = 0  # pieces beyond one per split row: examples = valid rows + split_pieces
    max_length: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    length_histogram: list[tuple[int, int, int]] = field(default_factory=list)  # (lo, hi, count)
    labels: dict[str, int] = field(default_factory=dict)
    est_tokens_per_epoch: int = 0
    est_seconds_per_epoch: float | None = None
    curation: dict[str, Any] = field(default_factory=dict)  # what `data curate` would remove, change or flag

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        return d


def histogram(lengths: list[int], bins: int = 8) -> list[tuple[int, int, int]]:
    if not lengths:
        return []
    lo, hi = min(lengths), max(lengths)
    width = max(1, math.ceil((hi - lo + 1) / bins))
    counts = Counter((n - lo) // width for n in lengths)
    n_bins = math.ceil((hi - lo + 1) / width)
    return [(lo + i * width, lo + (i + 1) * width - 1, counts.get(i, 0)) for i in range(n_bins)]


def prepare(
    path: str | Path,
    encode: Callable[[Record], Encoded] | None,
    *,
    fmt: str = "auto",
    columns: dict[str, str] | None = None,
    system_prompt: str | None = None,
    max_length: int = MAX_LENGTH,
    too_long: str = TOO_LONG,
    tokens_per_second: float | None = None,
) -> tuple[list[Example], DataReport]:
    """Load, validate and (with an encoder) tokenize a data source; nothing is raised for bad rows."""
    loaded = load_records(path, fmt, columns, system_prompt)
    return encode_loaded(loaded, path, encode, max_length=max_length, too_long=too_long,
                         tokens_per_second=tokens_per_second)


MIN_PIECE = 2  # a piece needs two tokens to predict one


def split_pieces(enc: Encoded, max_length: int) -> list[Encoded]:
    """A long plain text as consecutive pieces of at most max_length tokens (the last may be shorter)."""
    out = []
    for i in range(0, len(enc.input_ids), max_length):
        ids = enc.input_ids[i : i + max_length]
        if len(ids) >= MIN_PIECE:
            out.append(Encoded(ids, enc.labels[i : i + max_length] if isinstance(enc.labels, list) else enc.labels))
    return out


def encode_loaded(
    loaded: Loaded,
    path: str | Path,
    encode: Callable[[Record], Encoded] | None,
    *,
    max_length: int = MAX_LENGTH,
    too_long: str = TOO_LONG,
    tokens_per_second: float | None = None,
) -> tuple[list[Example], DataReport]:
    """Validate and tokenize rows already loaded: duplicates, over-length rows, token counts."""
    rep = DataReport(source=str(path), formats=loaded.formats, rows=loaded.rows, max_length=max_length)
    rep.errors = list(loaded.errors)
    seen: dict[str, str] = {}
    examples: list[Example] = []
    lengths: list[int] = []
    for rec in loaded.records:
        first = seen.setdefault(rec.key(), rec.where)
        if first != rec.where:
            rep.duplicates += 1
            rep.warnings.append(Problem(rec.where, f"exact duplicate of {first}", "warning"))
        if rec.kind == "classification":
            rep.labels[rec.label] = rep.labels.get(rec.label, 0) + 1
        if encode is None:
            examples.append(Example(rec, [], None))
            continue
        try:
            enc = encode(rec)
        except RowError as exc:
            rep.errors.append(Problem(rec.where, str(exc), field=exc.field))
            continue
        n = len(enc.input_ids)
        if n > max_length and too_long == "split" and rec.kind == "text":
            pieces = split_pieces(enc, max_length)
            rep.split_rows += 1  # asked for, so counted rather than warned about row by row
            rep.split_pieces += len(pieces) - 1
            for piece in pieces:
                rep.completion_tokens += piece.trained_tokens
                lengths.append(len(piece.input_ids))
                examples.append(Example(rec, piece.input_ids, piece.labels))
            continue
        if n > max_length:
            if too_long == "drop":
                rep.dropped_too_long += 1
                rep.warnings.append(Problem(rec.where, f"{n} tokens > max_length {max_length}: dropped", "warning"))
                continue
            enc = truncate(enc, max_length)
            rep.truncated += 1
            why = " (split applies to plain-text rows only)" if too_long == "split" else ""
            rep.warnings.append(Problem(rec.where, f"{n} tokens > max_length {max_length}: truncated{why}",
                                        "warning"))
            if isinstance(enc.labels, list) and not enc.trained_tokens:
                rep.dropped_too_long += 1
                rep.warnings.append(Problem(rec.where, "nothing left to learn after truncation: dropped", "warning"))
                continue
        trained = enc.trained_tokens if isinstance(enc.labels, list) else 0
        rep.completion_tokens += trained
        rep.prompt_tokens += len(enc.input_ids) - trained
        lengths.append(len(enc.input_ids))
        examples.append(Example(rec, enc.input_ids, enc.labels))
    rep.valid_rows = len(examples) - rep.split_pieces
    if not examples and not rep.errors:
        rep.errors.append(Problem(str(path), "no usable rows: the data is empty, or nothing is left to learn "
                                  "after truncation (raise model.max_length)"))
    rep.length_histogram = histogram(lengths)
    rep.est_tokens_per_epoch = sum(lengths)
    if tokens_per_second:
        rep.est_seconds_per_epoch = round(rep.est_tokens_per_epoch / tokens_per_second, 1)
    return examples, rep


@dataclass
class PreferenceReport:
    """`tunelab data check` on preference pairs: problems with file:line, then token counts per side."""

    source: str
    kind: str = "preference"
    formats: dict[str, str] = field(default_factory=dict)
    rows: int = 0
    pairs: int = 0  # valid pairs
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    duplicates: int = 0
    max_length: int = 0
    over_max_length: int = 0  # pairs where prompt + either reply exceeds max_length
    prompt_tokens: int = 0
    chosen_tokens: int = 0
    rejected_tokens: int = 0
    token_lengths: dict[str, dict[str, float]] = field(default_factory=dict)  # prompt/chosen/rejected -> min/mean/max
    length_histogram: list[tuple[int, int, int]] = field(default_factory=list)  # prompt + longer reply
    est_tokens_per_epoch: int = 0  # both sequences of every pair, each capped at max_length
    est_seconds_per_epoch: float | None = None
    curation: dict[str, Any] = field(default_factory=dict)  # what `data curate` would remove, change or flag

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        return d


def preference_report(
    path: str | Path,
    count: Callable[[PreferencePair], tuple[int, int, int]] | None,
    *,
    fmt: str = "auto",
    columns: dict[str, str] | None = None,
    system_prompt: str | None = None,
    max_length: int = MAX_LENGTH,
    tokens_per_second: float | None = None,
) -> PreferenceReport:
    """Load and validate preference pairs; with count (pair -> prompt/chosen/rejected tokens) measure them."""
    loaded = load_pairs_report(path, fmt, columns, system_prompt)
    rep = PreferenceReport(source=str(path), formats=loaded.formats, rows=loaded.rows, max_length=max_length,
                           duplicates=loaded.duplicates)
    rep.errors = [p for p in loaded.problems if p.severity == "error"]
    rep.warnings = [p for p in loaded.problems if p.severity == "warning"]
    sizes: dict[str, list[int]] = {"prompt": [], "chosen": [], "rejected": []}
    longest: list[int] = []
    valid = 0
    for pair in loaded.pairs:
        if count is None:
            valid += 1
            continue
        try:
            n_p, n_c, n_r = count(pair)
        except RowError as exc:
            rep.errors.append(Problem(pair.where, str(exc), field=exc.field))
            continue
        valid += 1
        for name, n in (("prompt", n_p), ("chosen", n_c), ("rejected", n_r)):
            sizes[name].append(n)
        if n_p + max(n_c, n_r) > max_length:
            rep.over_max_length += 1
            rep.warnings.append(Problem(pair.where, f"prompt + longer reply is {n_p + max(n_c, n_r)} tokens > "
                                        f"max_length {max_length}: will be truncated", "warning"))
        longest.append(n_p + max(n_c, n_r))
        rep.est_tokens_per_epoch += min(n_p + n_c, max_length) + min(n_p + n_r, max_length)
    rep.pairs = valid
    rep.prompt_tokens, rep.chosen_tokens, rep.rejected_tokens = (sum(sizes[k]) for k in ("prompt", "chosen",
                                                                                           "rejected"))
    rep.token_lengths = {k: {"min": min(v), "mean": round(sum(v) / len(v), 1), "max": max(v)}
                         for k, v in sizes.items() if v}
    if not valid and not rep.errors:
        rep.errors.append(Problem(str(path), "no usable preference pairs: the data is empty"))
    rep.length_histogram = histogram(longest)
    if tokens_per_second:
        rep.est_seconds_per_epoch = round(rep.est_tokens_per_epoch / tokens_per_second, 1)
    return rep
