"""Read rows from .jsonl/.json/.csv (each also .gz) and .parquet files, directories of them, or saved datasets.

Every row carries where it came from ("file:line") so that problems can point at it. Files are read as streams
within the limits of limits.py: a line, a record, a .json file or a .gz past its limit is a problem that names the
limit, never a file read whole into memory.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import limits
from .limits import MB, mb
from .records import DataError, Problem

SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".csv", ".csv.gz", ".parquet")
BUFFER = MB  # read size: skipping a 2 GB line in 8 KB reads takes seconds, in 1 MB reads a fraction of one
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_NOT_TEXT = ("this is a binary file, or text not saved as UTF-8 (UTF-16 puts a NUL in every other byte): "
             "save it as UTF-8")
_DIRTY = re.compile("[\x00\udc80-\udcff]")  # a NUL, or a byte that was not UTF-8 (decoded with surrogateescape)
_SURROGATE = re.compile("[\ud800-\udfff]")  # from a JSON escape like \ud800 with no other half: not a character
_BLANK_LINES = re.compile(rb"(?:\r?\n)*")
_BETWEEN = re.compile(r"\s*")
_BETWEEN_ROWS = re.compile(r"[ \t\r\n,]*")  # skipped in C: a run of a million spaces is no slower than one row
_LONE_CR = re.compile(r"(?<=\r)(?!\n)")  # old Mac line ends: csv reads each as a line, as io with newline="" does


@dataclass
class RawRow:
    where: str
    data: dict[str, Any] | None  # None when the row could not be parsed
    error: str = ""


class _Unreadable(Exception):
    """The rest of a file can't be read (a limit hit, a damaged .gz): said once, at the row where it happened."""

    line: int | None = None  # where it happened, when the reader that raised it knows better than its caller


class _Gunzip(io.RawIOBase):
    """A .gz file's decompressed bytes, refused past what plausible data unpacks to (a zip bomb's size or ratio)."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("rb", buffering=BUFFER)
        self._gz = gzip.GzipFile(fileobj=self._file, mode="rb")
        self._out = 0
        self._cap = limits.max_gzip_bytes()

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = self._gz.readinto1(b)  # what one read gives: rows before a cut-short end still come
        self._out += n
        if self._out > self._cap:
            raise _Unreadable(f"the file unpacks to over {mb(self._cap)}, the limit for a .gz (TUNELAB_MAX_GZIP_MB); "
                              "stopped reading here: if the data is real, give it uncompressed")
        if self._out > limits.GZIP_RATIO_FROM_MB * MB and self._out > limits.GZIP_RATIO * self._file.tell():
            raise _Unreadable(f"the file unpacks to over {mb(self._out)}, more than {limits.GZIP_RATIO} times its "
                              "compressed size: training data doesn't compress that well (is it a zip bomb?); "
                              "stopped reading here: if the data is real, give it uncompressed")
        return n

    def close(self) -> None:
        try:
            self._gz.close()
        finally:
            self._file.close()
            super().close()


def _open(path: Path) -> io.BufferedReader:
    if path.name.endswith(".gz"):
        return io.BufferedReader(_Gunzip(path), BUFFER)
    return io.BufferedReader(io.FileIO(path, "rb"), BUFFER)


def _unreadable(exc: Exception) -> str:
    """A read that failed part way (a damaged or cut-short .gz, a disk error), in words."""
    return f"can't read the file from here on: {exc}"


def _lines(f: io.BufferedReader, limit: int) -> Iterator[tuple[int, bytes | None, int]]:
    """(line number, line with its newline, size) for each line that is not blank; a line over limit comes as
    (n, None, its size): read past in pieces, never held whole."""
    n = past = 0  # lines read; the long line being read past, if one is
    try:
        while raw := f.readline(limit + 1):
            n += 1
            if raw in (b"\n", b"\r\n"):  # runs of blank lines are skipped in C: a file of newlines is no slower
                while blanks := _BLANK_LINES.match(f.peek(BUFFER)[:BUFFER]).end():  # type: ignore[union-attr]
                    n += f.read(blanks).count(b"\n")
                continue
            if len(raw) <= limit or raw.endswith(b"\n"):
                yield n, raw, len(raw)
                continue
            del raw
            past = n
            size = _read_past_line(f, limit + 1)
            past = 0
            yield n, None, size
    except _Unreadable as exc:
        exc.line = past or n + 1
        raise


def _read_past_line(f: io.BufferedReader, size: int) -> int:
    """Read to the end of the line being read, in pieces into one buffer; returns the line's whole size."""
    if not f.seekable():  # a .gz: what it may unpack to is bounded by _Gunzip
        while piece := f.readline(BUFFER):
            size += len(piece)
            if piece.endswith(b"\n"):
                break
        return size
    buf = bytearray(BUFFER)  # readline would make a new 1 MB bytes object per piece: 4-20x slower
    while n := f.readinto(buf):
        end = buf.find(b"\n", 0, n)
        if end >= 0:
            f.seek(end + 1 - n, io.SEEK_CUR)  # back to the start of the next line
            return size + end + 1
        size += n
    return size


def _too_long(size: int, limit: int) -> str:
    return (f"the line is {mb(size)} long, over the {mb(limit)} limit for one row (TUNELAB_MAX_ROW_MB): JSON Lines "
            "has one row per line; split this row, or raise the limit if it is real")


def _parse_line(where: str, raw: bytes, first: bool) -> RawRow | None:
    """One JSON Lines line as a row (None for a blank line). The checks for what a hostile line holds (NULs, deep
    nesting) run only where the line fails to parse or could hold it, so that good rows pay next to nothing."""
    try:
        line = raw.decode("utf-8-sig" if first else "utf-8")
    except UnicodeDecodeError as exc:
        return RawRow(where, None, f"not valid UTF-8 (column {exc.start + 1}, byte 0x{raw[exc.start]:02X}): "
                      "save the file as UTF-8")
    try:
        obj = json.loads(line)
    except RecursionError:
        return RawRow(where, None, str(limits.TooDeep()))
    except ValueError as exc:  # json.JSONDecodeError, or a number of over 4,300 digits
        if not line.strip():
            return None
        nul = line.find("\0")
        if nul >= 0:
            return RawRow(where, None, f"a NUL byte at column {nul + 1}: {_NOT_TEXT}")
        return RawRow(where, None, _invalid(exc))
    if not isinstance(obj, dict):
        return RawRow(where, None, f"expected a JSON object, got {type(obj).__name__}")
    if limits.count_brackets(raw) > limits.MAX_DEPTH and limits.too_deep(obj):
        return RawRow(where, None, str(limits.TooDeep()))
    if (b"\\ud" in raw or b"\\uD" in raw) and (bad := _unpaired(obj)):
        return RawRow(where, None, bad)
    return RawRow(where, obj)


def _unpaired(obj: Any) -> str | None:
    """What is wrong with the first field holding half of a UTF-16 surrogate pair (JSON can escape one; no text
    encoding can hold it, so a tokenizer or a UTF-8 file would fail on it later); None if none does."""
    stack: list[tuple[Any, str]] = [(obj, "")]
    while stack:
        o, at = stack.pop()
        if isinstance(o, str):
            if found := _SURROGATE.search(o):
                return (f"field '{at}' holds \\u{ord(found.group()):04x}, half of a surrogate pair and not a "
                        "character: the text was cut or badly written; fix or remove it")
        elif isinstance(o, dict):
            for k, v in reversed(o.items()):
                if _SURROGATE.search(k):
                    return f"a field name in '{at or 'the row'}' holds half of a surrogate pair, not a character"
                stack.append((v, f"{at}.{k}" if at else k))
        elif isinstance(o, list):
            stack.extend((v, f"{at}[{i}]") for i, v in reversed(list(enumerate(o))))
    return None


def _invalid(exc: ValueError) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"invalid JSON: {exc.msg} (column {exc.colno})"
    return f"invalid JSON: {str(exc).split(';')[0]}"  # Python's own advice after the ';' is not for users


def _read_jsonl(path: Path) -> Iterator[RawRow]:
    # .gz: the decompressed lines, so line numbers are those of the .jsonl inside
    limit = limits.max_row_bytes()
    n = 0
    try:
        with _open(path) as f:
            for n, raw, size in _lines(f, limit):
                where = f"{path}:{n}"
                if raw is None:
                    yield RawRow(where, None, _too_long(size, limit))
                    continue
                if n == 1 and raw.startswith(UTF16_BOMS):
                    yield RawRow(where, None, "the file is UTF-16 text: save it as UTF-8")
                    return
                row = _parse_line(where, raw, n == 1)
                if row is not None:
                    yield row
    except _Unreadable as exc:  # earlier rows stand
        yield RawRow(f"{path}:{exc.line or n + 1}", None, str(exc))
    except (OSError, EOFError, zlib.error) as exc:
        yield RawRow(f"{path}:{n + 1}", None, _unreadable(exc))


def _read_whole(path: Path) -> bytearray:
    """A whole-file format's bytes, refused past the limit: read in pieces, as a .gz's size is known only then."""
    limit = limits.max_json_bytes()
    data = bytearray()
    with _open(path) as f:
        while piece := f.read(BUFFER):
            data += piece
            if len(data) > limit:
                raise _Unreadable(f"the file is over {mb(limit)}, the most tunelab reads whole for a .json file "
                                  "(TUNELAB_MAX_JSON_MB): save it as JSON Lines (.jsonl, one row per line), which "
                                  "is read row by row")
    return data


def _read_json(path: Path) -> Iterator[RawRow]:
    try:
        data = _read_whole(path)
    except _Unreadable as exc:
        yield RawRow(str(path), None, str(exc))
        return
    except (OSError, EOFError, zlib.error) as exc:
        yield RawRow(f"{path}:1", None, _unreadable(exc))
        return
    if data.startswith(UTF16_BOMS):
        yield RawRow(f"{path}:1", None, "the file is UTF-16 text: save it as UTF-8")
        return
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        yield RawRow(f"{path}:{line}", None, f"not valid UTF-8 (byte 0x{data[exc.start]:02X}): save the file as UTF-8")
        return
    del data
    if "\0" in text:
        line = text.count("\n", 0, text.index("\0")) + 1
        yield RawRow(f"{path}:{line}", None, f"a NUL byte: {_NOT_TEXT}")
        return
    yield from _json_rows(path, text)


def _json_rows(path: Path, text: str) -> Iterator[RawRow]:
    brackets = limits.count_brackets(text)
    escapes = "\\ud" in text or "\\uD" in text  # rows may hold an unpaired surrogate: look in each
    pos = _BETWEEN.match(text).end()  # type: ignore[union-attr]
    if text[pos : pos + 1] != "[":
        # A single object, or an object holding a list under "data"/"rows"
        try:
            obj = limits.loads(text, brackets)
        except limits.TooDeep as exc:
            yield RawRow(f"{path}:1", None, str(exc))
            return
        except ValueError as exc:  # json.JSONDecodeError, or a number of over 4,300 digits
            if getattr(exc, "msg", "") == "Extra data":  # JSON Lines saved as .json: read it as such
                yield from _read_jsonl(path)
                return
            yield RawRow(f"{path}:{getattr(exc, 'lineno', 1)}", None, _invalid(exc))
            return
        rows = obj.get("data") or obj.get("rows") if isinstance(obj, dict) else None
        if isinstance(rows, list):
            for i, r in enumerate(rows):
                where = f"{path}:row {i + 1}"
                if not isinstance(r, dict):
                    yield RawRow(where, None, "expected a JSON object")
                elif escapes and (bad := _unpaired(r)):
                    yield RawRow(where, None, bad)
                else:
                    yield RawRow(where, r)
        else:
            yield RawRow(f"{path}:1", None, "expected a JSON array of objects (or JSON Lines in a .jsonl file)")
        return
    dec = json.JSONDecoder()
    pos += 1
    line, counted = 1, 0  # the line of text[counted], counted forward only: a count from 0 per row is quadratic
    while True:
        pos = _BETWEEN_ROWS.match(text, pos).end()  # type: ignore[union-attr]
        if pos >= len(text) or text[pos] == "]":
            return
        line += text.count("\n", counted, pos)
        counted = pos
        where, start = f"{path}:{line}", pos
        try:
            obj, pos = dec.raw_decode(text, pos)
        except RecursionError:
            yield RawRow(where, None, str(limits.TooDeep()))
            return
        except ValueError as exc:  # json.JSONDecodeError, or a number of over 4,300 digits
            yield RawRow(f"{path}:{getattr(exc, 'lineno', line)}", None, _invalid(exc))
            return
        # walked in Python only where this row's own text could be too deep or hold an escaped surrogate
        deep = text.count("[", start, pos) + text.count("{", start, pos) > limits.MAX_DEPTH
        escaped = escapes and (text.find("\\ud", start, pos) >= 0 or text.find("\\uD", start, pos) >= 0)
        if deep and limits.too_deep(obj):
            yield RawRow(where, None, str(limits.TooDeep()))
        elif isinstance(obj, dict) and escaped and (bad := _unpaired(obj)):
            yield RawRow(where, None, bad)
        elif isinstance(obj, dict):
            yield RawRow(where, obj)
        else:
            yield RawRow(where, None, f"expected a JSON object, got {type(obj).__name__}")


class _CsvLines:
    """A CSV file's lines for csv.reader, decoded (bytes that are not UTF-8 kept as surrogates, to be named per
    field), with the size of the record being read: past the row limit it stops, rather than let an unclosed
    quote turn the rest of a large file into one field held in memory. Lines are counted here (runs of blank
    lines between records are skipped in C), so that each record knows the line it starts on."""

    def __init__(self, f: io.BufferedReader, limit: int) -> None:
        self.f, self.limit = f, limit
        self.n = 0  # lines read
        self.start = 1  # the line the record being read starts on
        self.size = 0  # bytes of the record being read
        self.dirty = False  # the record has a NUL or a byte that is not UTF-8
        self.fresh = True  # no line of the next record read yet
        self.first = True
        self._pending: list[str] = []  # lines split at lone CRs, still to give
        self._suspect = False  # the physical line being given has a NUL or bytes that are not UTF-8

    def new_record(self) -> None:
        self.size, self.dirty, self.fresh = 0, False, True

    def where(self) -> int:
        """The line a record that can't be read starts on."""
        return self.n + 1 if self.fresh else self.start

    def __iter__(self) -> _CsvLines:
        return self

    def __next__(self) -> str:
        if self._pending:
            return self._give(self._pending.pop())
        raw = self.f.readline(self.limit + 1)
        if not raw:
            raise StopIteration
        if self.fresh and raw in (b"\n", b"\r\n"):  # a blank line between records: one reaches csv, the rest not
            self.first, self._suspect = False, False
            text = self._give(raw.decode())
            while blanks := _BLANK_LINES.match(self.f.peek(BUFFER)[:BUFFER]).end():  # type: ignore[union-attr]
                self.n += self.f.read(blanks).count(b"\n")
            return text
        self.size += len(raw)
        if self.size > self.limit:
            raise _Unreadable(f"the CSV record starting on this line is over {mb(self.limit)}, the limit for one "
                              "row (TUNELAB_MAX_ROW_MB): is a quote (\") left open? Stopped reading the file here")
        if self.first and raw.startswith(UTF16_BOMS):
            raise _Unreadable("the file is UTF-16 text: save it as UTF-8")
        encoding = "utf-8-sig" if self.first else "utf-8"
        self.first = False
        try:
            text = raw.decode(encoding)
            self._suspect = b"\0" in raw
        except UnicodeDecodeError:
            text, self._suspect = raw.decode(encoding, errors="surrogateescape"), True
        if "\r" in text and not (text.endswith("\r\n") and text.count("\r") == 1):  # not plain CRLF
            parts = [p for p in _LONE_CR.split(text) if p]
            self._pending = parts[:0:-1]
            return self._give(parts[0])
        return self._give(text)

    def _give(self, text: str) -> str:
        """A line for csv: counted, and the record marked dirty only if this line holds what was wrong."""
        self.n += 1
        if self.fresh:
            self.start, self.fresh = self.n, False
        if self._suspect and _DIRTY.search(text):
            self.dirty = True
        return text


def _dirty_fields(names: list[str], values: list[str]) -> str:
    """What is wrong in a record that has a NUL or bytes that are not UTF-8, by field."""
    bad = [(n, v) for n, v in zip(names, values, strict=False) if _DIRTY.search(v)]
    if not bad:  # in the header itself, or in a field past the header's
        return f"a NUL byte, or bytes that are not UTF-8: {_NOT_TEXT}"
    name, value = bad[0]
    more = f" (and {len(bad) - 1} more field{'s' if len(bad) > 2 else ''})" if len(bad) > 1 else ""
    name = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    if "\0" in value:
        return f"field {name!r}{more} holds a NUL byte: {_NOT_TEXT}"
    byte = value.encode("utf-8", "surrogateescape")[_DIRTY.search(value).start():][:1]  # type: ignore[union-attr]
    return f"field {name!r}{more} is not valid UTF-8 (byte 0x{byte.hex().upper()}): save the file as UTF-8"


def _read_csv(path: Path) -> Iterator[RawRow]:
    limit = limits.max_row_bytes()
    csv.field_size_limit(max(csv.field_size_limit(), limit))  # records are held to the limit by _CsvLines
    lines: _CsvLines | None = None
    try:
        with _open(path) as f:
            lines = _CsvLines(f, limit)
            reader = csv.reader(lines)
            header = next(reader, None) or []
            if lines.dirty:
                yield RawRow(f"{path}:1", None, f"the header: {_dirty_fields([], header)}")
                return
            lines.new_record()
            for values in reader:
                where = f"{path}:{lines.start}"
                dirty = lines.dirty
                lines.new_record()
                if not values:  # a blank line: skipped, but counted so later rows keep their line numbers
                    continue
                if len(values) > len(header):
                    yield RawRow(where, None, f"more fields than the header has ({len(header)})")
                elif dirty:
                    yield RawRow(where, None, _dirty_fields(header, values))
                else:
                    yield RawRow(where, dict(zip(header, values + [None] * (len(header) - len(values)), strict=True)))
    except _Unreadable as exc:
        yield RawRow(f"{path}:{lines.where() if lines else 1}", None, str(exc))
    except csv.Error as exc:
        yield RawRow(f"{path}:{lines.where() if lines else 1}", None, f"can't read the CSV from here on: {exc}")
    except (OSError, EOFError, zlib.error) as exc:
        yield RawRow(f"{path}:{lines.where() if lines else 1}", None, _unreadable(exc))


def _read_parquet(path: Path) -> Iterator[RawRow]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 0
    try:
        with pq.ParquetFile(path) as pf:  # closed too when a reader stops early (the error budget)
            for batch in pf.iter_batches(batch_size=1024):  # a batch at a time, not the table
                for row in batch.to_pylist():
                    n += 1
                    yield RawRow(f"{path}:row {n}", row)
    except (pa.ArrowException, OSError, ValueError) as exc:
        yield RawRow(f"{path}:row {n + 1}", None, f"can't read the Parquet file{' from here on' if n else ''}: it is "
                     f"damaged, cut short or not Parquet ({exc}); write it again")


def _read_saved_dataset(path: Path) -> Iterator[RawRow]:
    import datasets

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        ds = ds["train"] if "train" in ds else next(iter(ds.values()))
    for i, row in enumerate(ds):
        yield RawRow(f"{path}:row {i + 1}", dict(row))


_READERS = {".jsonl": _read_jsonl, ".jsonl.gz": _read_jsonl, ".json": _read_json, ".json.gz": _read_json,
            ".csv": _read_csv, ".csv.gz": _read_csv, ".parquet": _read_parquet}


def _suffix(path: Path) -> str:
    """The file type: ".jsonl.gz" for compressed JSON Lines (and so on), else the last suffix."""
    return next((s for s in SUFFIXES if s.endswith(".gz") and path.name.endswith(s)), path.suffix)


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
    if not p.is_file():  # a device or a pipe (/dev/zero named data.jsonl) has no end to read to
        raise DataError([Problem(str(p), "not a regular file: give a data file or a directory of them")])
    return [p]


def read_rows(file: Path) -> Iterator[RawRow]:
    if is_saved_dataset(file):
        return _read_saved_dataset(file)
    return _READERS[_suffix(file)](file)
