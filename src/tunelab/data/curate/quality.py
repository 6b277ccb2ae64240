"""Quality filters, each switchable: empty or near-empty replies, extreme lengths, rows in another language and
lines of boilerplate repeated across many rows.

- empty: the reply (last assistant turn, completion, text) shorter than min_chars after trimming whitespace is
  dropped. Classification rows are judged on their input text instead: a label's length says nothing ("0" and
  "1" are fine labels). Preference rows (no canonical record) are not judged.
- length: rows whose text (all of it, `Row.text()`) is longer than max_chars are dropped.
- language: py3langid (a naive Bayes model over byte n-grams, 140 languages, shipped with the package) on the
  row's text, for chat rows its user and assistant turns. A row is dropped only when the detector is confident
  (>= 0.9) of another language and the text has at least 20 letters: short rows ("ok thanks", "Danke") are
  kept and not judged.
- boilerplate: lines of five words or more that, normalised (case, whitespace, digits), repeat in at least
  boilerplate_share of the rows and in 3 rows or more. Looked for in what the model learns to produce (assistant
  turns, completions, texts; classification inputs; preference replies), not in system prompts, completion
  prompts or user turns, where repeated instructions are by design. Flagged, or with strip_boilerplate removed
  from the row (a change).

One finding per row and filter, in the order above; a row dropped by one filter gets no findings from the next.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from functools import cache
from typing import Any

from py3langid.langid import MODEL_FILE, LanguageIdentifier

from ...config.curate import QualityConfig
from ...errors import TunelabError
from .rows import Finding, Row, strings

LANGUAGE_CONFIDENCE = 0.9  # below it the detector's guess is not enough to drop a row
MIN_LETTERS = 20  # shorter rows are not judged: detection on a few words is unreliable
LANGUAGE_SAMPLE = 2000  # characters per message judged: more adds time, not accuracy
BOILERPLATE_WORDS = 5
BOILERPLATE_MIN_ROWS = 3
_DIGITS = re.compile(r"\d+")
_BLANK_RUNS = re.compile(r"\n{3,}")


def quality(rows: list[Row], cfg: QualityConfig) -> list[Finding]:
    """Findings of the enabled quality filters (step "quality", detail["filter"] names the filter); with
    cfg.strip_boilerplate, boilerplate lines are removed from the rows in place."""
    found: list[Finding] = []
    dropped: set[int] = set()

    def drop(i: int, reason: str, detail: dict[str, Any]) -> None:
        found.append(Finding(rows[i].where, "quality", "drop", reason, detail))
        dropped.add(i)

    if cfg.empty:
        for i, row in enumerate(rows):
            reply = _judged_reply(row)
            if reply is not None and len(reply) < cfg.min_chars:
                what = "empty reply" if not reply else f"reply of {len(reply)} character(s)"
                drop(i, f"{what}, shorter than min_chars {cfg.min_chars}",
                     {"filter": "empty", "chars": len(reply), "min_chars": cfg.min_chars})
    if cfg.max_chars is not None:
        for i, row in enumerate(rows):
            n = len(row.text())
            if i not in dropped and n > cfg.max_chars:
                drop(i, f"{n:,} characters, longer than max_chars {cfg.max_chars:,}",
                     {"filter": "length", "chars": n, "max_chars": cfg.max_chars})
    if cfg.language:
        expected = cfg.language.lower()
        detector = _detector()
        if expected not in detector.labels:
            raise TunelabError(f"data.curate.quality.language: {cfg.language!r} is not a language the detector "
                               "knows; give an ISO 639-1 code such as en, de, fr or es")
        for i, row in enumerate(rows):
            if i in dropped:
                continue
            text = _language_text(row)
            if sum(c.isalpha() for c in text) < MIN_LETTERS:
                continue
            lang, confidence = detector.classify(text)
            if lang != expected and confidence >= LANGUAGE_CONFIDENCE:
                drop(i, f"language: {lang} ({confidence:.2f}), expected {expected}",
                     {"filter": "language", "language": lang, "confidence": round(confidence, 4),
                      "expected": expected})
    if cfg.boilerplate:
        kept = [row for i, row in enumerate(rows) if i not in dropped]
        found += _boilerplate(kept, cfg.boilerplate_share, cfg.strip_boilerplate)
    return found


def _judged_reply(row: Row) -> str | None:
    r = row.record
    if r is None:
        return None
    return (r.text if r.kind == "classification" else row.reply() or "").strip()


def _language_text(row: Row) -> str:
    r = row.record
    if r is not None and r.kind == "chat":  # what people wrote and what the model answers, not system prompts
        parts = [str(m.get("content") or "") for m in r.messages if m.get("role") in ("user", "assistant")]
    else:
        parts = [row.text()]
    return "\n".join(p[:LANGUAGE_SAMPLE] for p in parts)


@cache
def _detector() -> LanguageIdentifier:
    """Loaded once (~0.8 s); probabilities normalised so the confidence is comparable across rows."""
    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def _normalise(line: str) -> str:
    return " ".join(_DIGITS.sub("0", line.lower()).split())


def _produced_text(row: Row) -> list[str]:
    """The strings boilerplate is looked for in: what the model learns to produce (see the module docstring)."""
    r = row.record
    if r is None:
        return strings({k: v for k, v in row.data.items() if k not in ("prompt", "system")})
    if r.kind == "chat":
        return [str(m.get("content") or "") for m in r.messages if m.get("role") == "assistant"]
    if r.kind == "completion":
        return [r.completion]
    return [r.text]


def _boilerplate(rows: list[Row], share: float, strip: bool) -> list[Finding]:
    per_row: list[list[str]] = []
    shown: dict[str, str] = {}  # normalised line -> its first form as written
    counts: Counter[str] = Counter()
    for row in rows:
        lines = []
        for text in _produced_text(row):
            for line in text.splitlines():
                key = _normalise(line)
                if len(key.split()) >= BOILERPLATE_WORDS and key not in lines:
                    lines.append(key)
                    shown.setdefault(key, line.strip())
        per_row.append(lines)
        counts.update(lines)
    threshold = max(BOILERPLATE_MIN_ROWS, math.ceil(share * len(rows)))
    common = {k for k, n in counts.items() if n >= threshold}
    if not common:
        return []

    def remove(text: str) -> str:
        lines = text.splitlines(keepends=True)
        kept = [ln for ln in lines if _normalise(ln) not in common]
        if len(kept) == len(lines):
            return text
        return _BLANK_RUNS.sub("\n\n", "".join(kept)).strip("\n")  # no gap left where a line was

    found = []
    for row, lines in zip(rows, per_row, strict=True):
        hits = [k for k in lines if k in common]
        if not hits:
            continue
        first = shown[hits[0]]
        more = f" and {len(hits) - 1} more" if len(hits) > 1 else ""
        quoted = repr(first if len(first) <= 80 else first[:77] + "...")
        detail = {"filter": "boilerplate", "lines": [shown[k] for k in hits], "rows": [counts[k] for k in hits]}
        if strip and row.rewrite(remove):
            found.append(Finding(row.where, "quality", "change",
                                 f"removed boilerplate line {quoted}{more} (in {counts[hits[0]]} rows)", detail))
        else:
            found.append(Finding(row.where, "quality", "flag",
                                 f"boilerplate line {quoted}{more} repeats in {counts[hits[0]]} rows", detail))
    return found
