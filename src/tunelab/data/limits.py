"""How much of a user's data file tunelab will hold at once, so that a broken or hostile file (a 2 GB line, a .gz
that unpacks to terabytes, JSON nested 100,000 deep) is a clear error naming the limit, in bounded memory and time.

Each size can be raised with an environment variable (in MB) for data that really needs it."""

from __future__ import annotations

import json
import os
from typing import Any

from ..errors import TunelabError

# One JSON Lines line or CSV record. 16 MB is ~4M tokens of English text: far past any context a model here trains
# on, and still a small part of memory while one row is parsed.
MAX_ROW_MB = 16.0
# A .json file is parsed whole (JSON Lines is read row by row): the text and its rows are in memory at once.
MAX_JSON_MB = 256.0
# What a .gz may unpack to; and, past GZIP_RATIO_FROM_MB, at most GZIP_RATIO times the compressed bytes read:
# text compresses 3-10x, rows that repeat a long system prompt ~150x, a zip bomb ~1000x.
MAX_GZIP_MB = 4096.0
GZIP_RATIO = 300
GZIP_RATIO_FROM_MB = 64.0
# JSON nesting: a chat row with tool calls is ~6 deep; deeper input exhausts the stack of whatever walks it later.
MAX_DEPTH = 64
MB = 1024 * 1024


def limit_bytes(name: str, default_mb: float) -> int:
    """A size limit in bytes: TUNELAB_<name> in MB when set, else the default."""
    var = f"TUNELAB_{name}"
    raw = os.environ.get(var)
    if raw is None or not raw.strip():
        return int(default_mb * MB)
    try:
        mb = float(raw)
    except ValueError:
        mb = -1.0
    if not mb > 0:
        raise TunelabError(f"{var}={raw!r}: give a size in MB greater than 0 (default {default_mb:g})")
    return int(mb * MB)


def max_row_bytes() -> int:
    return limit_bytes("MAX_ROW_MB", MAX_ROW_MB)


def max_json_bytes() -> int:
    return limit_bytes("MAX_JSON_MB", MAX_JSON_MB)


def max_gzip_bytes() -> int:
    return limit_bytes("MAX_GZIP_MB", MAX_GZIP_MB)


def mb(n: int) -> str:
    """Bytes as MB for a message: "16 MB", "2,048 MB", "0.5 MB"."""
    return f"{n / MB:,.1f}".removesuffix(".0") + " MB"


class TooDeep(ValueError):
    def __init__(self) -> None:
        super().__init__(f"JSON nested more than {MAX_DEPTH} levels deep, tunelab's limit (training rows nest "
                         "fewer than 10): the row is broken")


def too_deep(obj: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether parsed JSON nests deeper than limit (the top object is level 1); walked without recursion."""
    if not isinstance(obj, dict | list):
        return False
    stack = [(obj, 1)]
    while stack:
        o, depth = stack.pop()
        if depth > limit:
            return True
        children = o.values() if isinstance(o, dict) else o
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


def loads(text: str | bytes, brackets: int | None = None) -> Any:
    """json.loads that raises TooDeep (a ValueError) rather than RecursionError or a structure too deep to walk.
    brackets: the text's count of '[' and '{' when known; below the limit the nesting can't exceed it."""
    try:
        obj = json.loads(text)
    except RecursionError:
        raise TooDeep() from None
    if isinstance(obj, dict | list):
        if brackets is None:
            brackets = count_brackets(text)
        if brackets > MAX_DEPTH and too_deep(obj):
            raise TooDeep()
    return obj


def count_brackets(text: str | bytes) -> int:
    if isinstance(text, bytes):
        return text.count(b"[") + text.count(b"{")
    return text.count("[") + text.count("{")


# Rows with errors listed before a reader stops: each listed problem is kept in memory (and shown), so a file of
# millions of broken rows (an upload of the wrong file) would otherwise cost gigabytes to describe.
MAX_ROW_ERRORS = 10_000


def max_row_errors() -> int:
    raw = os.environ.get("TUNELAB_MAX_ROW_ERRORS", "").strip()
    if not raw:
        return MAX_ROW_ERRORS
    if not raw.isdigit() or int(raw) < 1:
        raise TunelabError(f"TUNELAB_MAX_ROW_ERRORS={raw!r}: give a whole number of rows greater than 0 "
                           f"(default {MAX_ROW_ERRORS:,})")
    return int(raw)


def stopped_reading(file: Any, errors: int) -> str:
    return (f"stopped reading {file} after {errors:,} rows with errors (TUNELAB_MAX_ROW_ERRORS): the rest of the "
            "data was not checked. Is this the right file, in the right format? Fix the rows listed first")
