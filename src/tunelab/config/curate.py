"""`data.curate`: what `tunelab data curate` (and a training run with this section) removes, changes or flags."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from .base import Section

PERSONAL_KINDS = ("email", "phone", "card", "iban", "ip", "url", "person", "address")


class QualityConfig(Section):
    empty: bool = True
    """Drop rows whose reply (assistant turn, completion, text or label) has fewer than min_chars visible
    characters."""

    min_chars: int = Field(2, ge=0)
    """Shortest reply kept by the empty-reply filter, in characters after trimming whitespace."""

    max_chars: int | None = Field(50_000, gt=0)
    """Drop rows longer than this many characters in all (extreme lengths); empty: no limit."""

    language: str | None = None
    """Keep only rows in this language (ISO 639-1 code, e.g. en), detected per row; empty: any language."""

    boilerplate: bool = True
    """Flag lines (of five words or more) that repeat across at least boilerplate_share of the rows, e.g. a
    signature pasted under every reply."""

    boilerplate_share: float = Field(0.05, gt=0.0, le=1.0)
    """Share of rows a line must repeat in to count as boilerplate."""

    strip_boilerplate: bool = False
    """Remove boilerplate lines from the rows (each change listed) instead of only flagging them."""


class CurateConfig(Section):
    duplicates: bool = True
    """Cluster exact and near-duplicate rows (MinHash LSH) and keep the first row of each cluster."""

    similarity: float = Field(0.8, gt=0.0, le=1.0)
    """Estimated Jaccard similarity (of 5-character shingles of the normalised text) from which two rows count as
    near-duplicates."""

    leaks: Literal["drop", "warn", "off"] = "drop"
    """Validation rows that copy (exactly or nearly) a training row: drop them from the validation data, only
    warn, or don't look."""

    evaluation: str | None = None
    """An evaluation or test file to check for contamination: training rows sharing a contamination_ngram-word
    sequence with it (or near copies of its rows) are dropped."""

    contamination_ngram: int = Field(8, ge=3)
    """Words in a row shared with the evaluation file that make a training row contaminated."""

    personal_data: Literal["redact", "pseudonymize", "report", "off"] = "redact"
    """Personal data found in rows: replace it by its kind (<EMAIL>), by a consistent placeholder per value
    (<EMAIL_1> everywhere the same address appears), only report it, or don't look."""

    personal_kinds: list[str] = list(PERSONAL_KINDS)
    """Kinds of personal data looked for: email, phone, card (checksum-validated), iban (checksum-validated),
    ip, url, person (names after cues such as "my name is"), address (street addresses)."""

    labels: Literal["flag", "drop", "off"] = "flag"
    """Classification rows whose label disagrees with cross-validated predictions of a quick text model: list
    them ranked for review, drop them, or don't look."""

    quality: QualityConfig = Field(default_factory=QualityConfig)
    """Quality filters, each switchable."""

    @field_validator("personal_kinds")
    @classmethod
    def _known_kinds(cls, v: list[str]) -> list[str]:
        unknown = [k for k in v if k not in PERSONAL_KINDS]
        if unknown:
            raise ValueError(f"unknown kind(s) {unknown}; choose from {', '.join(PERSONAL_KINDS)}")
        return v
