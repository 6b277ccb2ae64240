"""Read rows from .jsonl(.gz)/.json/.csv/.parquet files, directories of them, or saved datasets.

Every row carries where it came from ("file:line") so that problems can point at it.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .records import DataError, Problem

SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".csv", ".parquet")


@dataclass
class RawRow:
    where: str
    data: dict[str, Any] | None  # None when the row could not be parsed
    error: str = ""


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


class _NotUtf8(ValueError):
    def __init__(self, path: Path, data: bytes, exc: UnicodeDecodeError) -> None:
        line = data.count(b"\n", 0, exc.start) + 1
        super().__init__(f"{path}:{line}")
        self.row = RawRow(f"{path}:{line}", None, f"not valid UTF-8 (byte {exc.start}): save the file as UTF-8")


def _read_text(path: Path) -> str:
    """The whole file as text; bytes that are not UTF-8 are reported, never silently replaced."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _NotUtf8(path, data, exc) from None


def _read_jsonl(path: Path) -> Iterator[RawRow]:
    # gzip.open yields the decompressed lines, so line numbers are those of the .jsonl inside
    with (gzip.open(path, "rb") if path.name.endswith(".gz") else path.open("rb")) as f:
        n = 0
        while True:
            try:
                raw = f.readline()
            except (OSError, EOFError, zlib.error) as exc:  # a corrupt or cut-short .gz: earlier rows stand
                yield RawRow(f"{path}:{n + 1}", None, f"can't read the file from here on: {exc}")
                return
            if not raw:
                return
            n += 1
            where = f"{path}:{n}"
            try:
                line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                yield RawRow(where, None, f"not valid UTF-8 (column {exc.start + 1}): save the file as UTF-8")
                continue
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                yield RawRow(where, None, f"invalid JSON: {exc.msg} (column {exc.colno})")
                continue
            if not isinstance(obj, dict):
                yield RawRow(where, None, f"expected a JSON object, got {type(obj).__name__}")
                continue
            yield RawRow(where, obj)


def _read_json(path: Path) -> Iterator[RawRow]:
    try:
        text = _read_text(path)
    except _NotUtf8 as exc:
        yield exc.row
        return
    dec = json.JSONDecoder()
    pos = len(text) - len(text.lstrip())
    if text[pos : pos + 1] != "[":
        # A single object, or an object holding a list under "data"/"rows"
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            if exc.msg == "Extra data":  # JSON Lines saved as .json: read it as such
                yield from _read_jsonl(path)
                return
            yield RawRow(f"{path}:{exc.lineno}", None, f"invalid JSON: {exc.msg} (column {exc.colno})")
            return
        rows = obj.get("data") or obj.get("rows") if isinstance(obj, dict) else None
        if isinstance(rows, list):
            for i, r in enumerate(rows):
                where = f"{path}:row {i + 1}"
                yield RawRow(where, r) if isinstance(r, dict) else RawRow(where, None, "expected a JSON object")
        else:
            yield RawRow(f"{path}:1", None, "expected a JSON array of objects (or JSON Lines in a .jsonl file)")
        return
    pos += 1
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            return
        line = _line_of(text, pos)
        try:
            obj, pos = dec.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            yield RawRow(f"{path}:{exc.lineno}", None, f"invalid JSON: {exc.msg} (column {exc.colno})")
            return
        where = f"{path}:{line}"
        if isinstance(obj, dict):
            yield RawRow(where, obj)
        else:
            yield RawRow(where, None, f"expected a JSON object, got {type(obj).__name__}")


def _read_csv(path: Path) -> Iterator[RawRow]:
    try:
        text = _read_text(path)
    except _NotUtf8 as exc:
        yield exc.row
        return
    with io.StringIO(text, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None) or []
        prev_end = reader.line_num  # the header's last line
        for values in reader:
            where = f"{path}:{prev_end + 1}"
            prev_end = reader.line_num
            if not values:  # a blank line: skipped, but counted so later rows keep their line numbers
                continue
            if len(values) > len(header):
                yield RawRow(where, None, f"more fields than the header has ({len(header)})")
                continue
            yield RawRow(where, dict(zip(header, values + [None] * (len(header) - len(values)), strict=True)))


def _read_parquet(path: Path) -> Iterator[RawRow]:
    import pyarrow.parquet as pq

    for i, row in enumerate(pq.read_table(path).to_pylist()):
        yield RawRow(f"{path}:row {i + 1}", row)


def _read_saved_dataset(path: Path) -> Iterator[RawRow]:
    import datasets

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        ds = ds["train"] if "train" in ds else next(iter(ds.values()))
    for i, row in enumerate(ds):
        yield RawRow(f"{path}:row {i + 1}", dict(row))


_READERS = {".jsonl": _read_jsonl, ".jsonl.gz": _read_jsonl, ".json": _read_json, ".csv": _read_csv,
            ".parquet": _read_parquet}


def _suffix(path: Path) -> str:
    """The file type: ".jsonl.gz" for compressed JSON Lines, else the last suffix."""
    return ".jsonl.gz" if path.name.endswith(".jsonl.gz") else path.suffix


def is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists())


def data_files(path: str | Path) -> list[Path]:
    """The files (or saved dataset directory) that a data path stands for."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or directory")
    if is_saved_dataset(p):
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if _suffix(f) in SUFFIXES and f.is_file())
        if not files:
            raise FileNotFoundError(f"{p}: the directory holds no {', '.join(SUFFIXES)} files")
        return files
    if _suffix(p) not in SUFFIXES:
        raise DataError([Problem(str(p), f"unsupported file type '{p.suffix}'; "
                                         f"use one of {', '.join(SUFFIXES)}")])
    return [p]


def read_rows(file: Path) -> Iterator[RawRow]:
    if is_saved_dataset(file):
        return _read_saved_dataset(file)
    return _READERS[_suffix(file)](file)
