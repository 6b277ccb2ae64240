"""Hostile data files (a 2 GB line, a zip bomb, JSON nested 100,000 deep, bytes that are not UTF-8, NULs, 10,000
CSV columns, broken Parquet): each is tunelab's own error naming the file, the place and the limit hit, read in
bounded memory and time; never a MemoryError, RecursionError, UnicodeDecodeError, csv.Error or hang."""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import tunelab_cli
from tunelab.config.curate import CurateConfig
from tunelab.data import limits
from tunelab.data.curate.run import curate_files
from tunelab.data.load import load_records
from tunelab.data.preference import load_pairs_report
from tunelab.data.records import DataError
from tunelab.data.sources import data_files, read_rows
from tunelab.errors import TunelabError

GB = 1024**3
USER = {"role": "user", "content": "where is my card"}
REPLY = {"role": "assistant", "content": "it has arrived"}
GOOD = json.dumps({"messages": [USER, REPLY]}).encode()


def errors(path: Path, **kw: Any) -> list[str]:
    """The errors training would report; the preference reader and curation (which reads rows itself) meet the
    same file too, and may only give tunelab's own error."""
    with contextlib.suppress(TunelabError):
        load_pairs_report(path)
    with contextlib.suppress(TunelabError):
        curate_files([str(path)], CurateConfig(labels="off"))
    return [str(p) for p in load_records(path, **kw).errors]


def only_error(path: Path) -> str:
    [err] = errors(path)
    return err


# --- bounded memory, measured in a process of its own ------------------------------------------------------

BOUNDED = """
import json, resource, sys
cap = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))  # reading a 2 GB line or a bomb whole would be a MemoryError
from tunelab.data.load import load_records
out = {p: [str(x) for x in load_records(p).problems] for p in sys.argv[2:]}
# this process's peak RSS (ru_maxrss would include the parent's: it survives exec)
peak = next(ln for ln in open("/proc/self/status") if ln.startswith("VmHWM:"))
print(json.dumps({"problems": out, "peak_mb": int(peak.split()[1]) // 1024}))
"""
ADDRESS_SPACE = 1 * GB  # the readers need ~50 MB; Python and tunelab.data import in far less than this


def _sparse(path: Path, prefix: bytes, size: int) -> Path:
    """A file of `size` bytes that takes no disk: the prefix, then a hole that reads as NULs."""
    with path.open("wb") as f:
        f.write(prefix)
        f.truncate(size)
    if path.stat().st_blocks * 512 > 64 * 1024**2:
        path.unlink()
        pytest.skip(f"{path.parent}'s filesystem has no sparse files: a 2 GB test file would take 2 GB of disk")
    return path


def _bomb(path: Path, unpacked: int) -> Path:
    """A .gz of `unpacked` NUL bytes in ~1/1000 of that: one compressed 16 MB member, repeated (gzip allows it)."""
    member = gzip.compress(b"\0" * (16 * 1024**2), 9)
    with path.open("wb") as f:
        for _ in range(unpacked // (16 * 1024**2)):
            f.write(member)
    return path


def test_a_2gb_line_and_a_10gb_zip_bomb_are_errors_read_in_bounded_memory(tmp_path: Path) -> None:
    if sys.platform != "linux":
        pytest.skip("RLIMIT_AS bounds a process's memory on Linux only")
    try:
        line = _sparse(tmp_path / "line.jsonl", b'{"messages": "', 2 * GB)
    except OSError as exc:
        pytest.skip(f"can't make a 2 GB sparse file here: {exc}")
    bomb = _bomb(tmp_path / "bomb.jsonl.gz", 10 * GB)
    assert bomb.stat().st_size < 16 * 1024**2
    proc = subprocess.run([sys.executable, "-c", BOUNDED, str(ADDRESS_SPACE), str(line), str(bomb)],
                          capture_output=True, text=True, timeout=300)
    line.unlink()  # sparse, but its 2 GB of page cache go with it
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout)
    [too_long] = got["problems"][str(line)]
    assert too_long.startswith(f"{line}:1: error: the line is 2,048 MB long, over the 16 MB limit for one row")
    assert "TUNELAB_MAX_ROW_MB" in too_long
    [unpacked] = got["problems"][str(bomb)]
    assert unpacked.startswith(f"{bomb}:1: error: the file unpacks to over ")
    assert f"more than {limits.GZIP_RATIO} times its compressed size" in unpacked and "zip bomb" in unpacked
    assert got["peak_mb"] < 200, got  # 16 MB of one row at most, plus the interpreter (~50 MB in all)


def test_an_80mb_line_is_never_held_whole_and_the_rows_around_it_are_read(tmp_path: Path) -> None:
    p = tmp_path / "long.jsonl"
    with p.open("wb") as f:
        f.write(GOOD + b"\n" + b'{"messages": "' + b"x" * (80 * 1024**2) + b'"}\n' + GOOD + b"\n")
    tracemalloc.start()
    try:
        loaded = load_records(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [r.where for r in loaded.records] == [f"{p}:1", f"{p}:3"]
    [err] = loaded.errors
    assert err.where == f"{p}:2" and "the line is 80 MB long, over the 16 MB limit for one row" in err.message
    assert peak < 40 * 1024**2, peak  # the limit's 16 MB and a read buffer; the line itself is 80 MB


def test_a_flood_of_broken_rows_stops_after_the_error_budget(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The wrong file uploaded (a million rows, each broken) is described in bounded memory, not row by row."""
    p = tmp_path / "flood.jsonl"
    p.write_bytes(b"{}\n" * 200_000)
    monkeypatch.setenv("TUNELAB_MAX_ROW_ERRORS", "500")
    for loaded in (load_records(p), load_pairs_report(str(p))):
        assert len(loaded.problems) == 501 and loaded.rows == 500
        assert loaded.problems[-1].where == f"{p}:501"
        last = loaded.problems[-1].message
        assert "stopped reading" in last and "500 rows with errors" in last
    monkeypatch.setenv("TUNELAB_MAX_ROW_ERRORS", "none")
    with pytest.raises(TunelabError, match="TUNELAB_MAX_ROW_ERRORS='none'"):
        load_records(p)


def test_the_row_limit_can_be_raised_and_a_bad_value_is_a_user_error(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "d.jsonl"
    p.write_bytes(json.dumps({"text": "y" * 3 * 1024**2}).encode() + b"\n")
    monkeypatch.setenv("TUNELAB_MAX_ROW_MB", "2")
    assert "over the 2 MB limit for one row" in only_error(p)
    monkeypatch.setenv("TUNELAB_MAX_ROW_MB", "4")
    assert load_records(p).records and not load_records(p).problems
    monkeypatch.setenv("TUNELAB_MAX_ROW_MB", "lots")
    with pytest.raises(TunelabError, match="TUNELAB_MAX_ROW_MB='lots': give a size in MB"):
        load_records(p)


# --- gzip ---------------------------------------------------------------------------------------------------


def test_a_bomb_of_short_lines_stops_at_the_ratio_and_earlier_rows_stand(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "GZIP_RATIO_FROM_MB", 2)  # the default 64 MB costs a second to unpack
    p = tmp_path / "lines.jsonl.gz"
    with p.open("wb") as f:
        f.write(gzip.compress(GOOD + b"\n"))
        member = gzip.compress((b" " * 999 + b"\n") * 4096, 9)  # blank lines: nothing to report, only to unpack
        for _ in range(100):
            f.write(member)
    loaded = load_records(p)
    assert [r.where for r in loaded.records] == [f"{p}:1"]
    [err] = loaded.errors
    assert "unpacks to over " in err.message and "more than 300 times its compressed size" in err.message


def test_runs_of_blank_lines_are_skipped_fast_and_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a line at a time, 100 MB of newlines took minutes; and a .gz of them is a bomb that no ratio check stops early
    jl = tmp_path / "blank.jsonl"
    jl.write_bytes(b"\n" * 2_000_000 + GOOD + b"\n" + b"\r\n" * 10 + b"{oops\n")
    loaded = load_records(jl)
    assert [r.where for r in loaded.records] == [f"{jl}:2000001"]
    assert [e.where for e in loaded.errors] == [f"{jl}:2000012"]
    cs = tmp_path / "blank.csv"
    cs.write_bytes(b"text,label\n" + b"\n" * 2_000_000 + b'"two\n\n\nlines",x\n' + b"\r\n" * 10 + b"last,y\n")
    assert [(r.where, r.text) for r in load_records(cs).records] == [(f"{cs}:2000002", "two\n\n\nlines"),
                                                                     (f"{cs}:2000016", "last")]
    monkeypatch.setattr(limits, "GZIP_RATIO_FROM_MB", 2)
    gz = tmp_path / "blank.csv.gz"
    gz.write_bytes(gzip.compress(b"text,label\n" + b"\n" * 50_000_000, 9))
    [err] = load_records(gz).errors
    assert "more than 300 times its compressed size" in err.message


def test_a_gz_past_the_size_limit_is_an_error_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "big.jsonl.gz"
    rows = b"".join(json.dumps({"text": os.urandom(300).hex()}).encode() + b"\n" for _ in range(2000))
    p.write_bytes(gzip.compress(rows))  # hex compresses ~2x: no bomb, just more than the limit allows
    monkeypatch.setenv("TUNELAB_MAX_GZIP_MB", "0.5")
    loaded = load_records(p)
    assert loaded.records and "unpacks to over 0.5 MB, the limit for a .gz (TUNELAB_MAX_GZIP_MB)" in \
        loaded.errors[-1].message


def test_json_and_csv_can_be_gzipped_too(tmp_path: Path) -> None:
    (tmp_path / "a.json.gz").write_bytes(gzip.compress(b'[{"text": "one"}, {"text": "two"}]'))
    (tmp_path / "b.csv.gz").write_bytes(gzip.compress(b"text,label\nhello,greeting\n"))
    assert data_files(tmp_path) == [tmp_path / "a.json.gz", tmp_path / "b.csv.gz"]
    loaded = load_records(tmp_path)
    assert not loaded.problems
    assert [(r.where, r.text) for r in loaded.records] == [
        (f"{tmp_path / 'a.json.gz'}:1", "one"), (f"{tmp_path / 'a.json.gz'}:1", "two"),
        (f"{tmp_path / 'b.csv.gz'}:2", "hello")]


def test_a_json_gz_bomb_stops_at_the_json_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNELAB_MAX_JSON_MB", "1")
    p = _bomb(tmp_path / "bomb.json.gz", 32 * 1024**2)
    err = only_error(p)
    assert err.startswith(f"{p}: error: the file is over 1 MB, the most tunelab reads whole for a .json file")
    assert "TUNELAB_MAX_JSON_MB" in err and "JSON Lines" in err


# --- whole-file JSON --------------------------------------------------------------------------------------


def test_a_json_file_past_the_limit_suggests_json_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNELAB_MAX_JSON_MB", "1")
    p = tmp_path / "big.json"
    p.write_text(json.dumps([{"text": "z" * 1000}] * 1500))
    assert "over 1 MB, the most tunelab reads whole for a .json file (TUNELAB_MAX_JSON_MB): save it as JSON " \
        "Lines (.jsonl, one row per line)" in only_error(p)


def test_a_large_json_array_is_read_in_one_pass_with_each_rows_line(tmp_path: Path) -> None:
    # each row's line was counted from the top of the file: 20,000 rows took ~50 s, 40,000 ~210 s
    p = tmp_path / "alpaca.json"
    p.write_text(json.dumps([{"instruction": f"say {i}", "output": str(i)} for i in range(20_000)], indent=1))
    rows = list(read_rows(p))
    assert len(rows) == 20_000 and rows[-1].where == f"{p}:{2 + 4 * 19_999}" and rows[-1].data == {
        "instruction": "say 19999", "output": "19999"}


# --- nesting, numbers -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,body", [
    ("array.jsonl", b"[" * 100_000 + b"\n"),
    ("field.jsonl", b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"),
    ("shallow_enough_for_json.jsonl", b'{"messages": ' + b"[" * 900 + b"]" * 900 + b"}\n"),
    ("array.json", b"[" + b"[" * 100_000),
    ("object.json", b'{"data": ' + b"[" * 100_000),
    ("row.json", b'[{"text": "a"}, {"text": ' + b"[" * 900 + b"]" * 900 + b"}]"),
])
def test_deeply_nested_json_is_an_error_not_a_recursion_error(tmp_path: Path, name: str, body: bytes) -> None:
    p = tmp_path / name
    p.write_bytes(body)
    errs = errors(p)
    assert any(f"JSON nested more than {limits.MAX_DEPTH} levels deep" in e and e.startswith(f"{p}:") for e in errs)


def test_deep_tool_call_arguments_are_a_row_error(tmp_path: Path) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "[" * 100_000}}
    row = {"messages": [USER, {"role": "assistant", "tool_calls": [call]},
                        {"role": "tool", "tool_call_id": "c1", "content": "ok"}, REPLY]}
    p = tmp_path / "calls.jsonl"
    p.write_text(json.dumps(row) + "\n")
    assert f"{p}:1: error: messages[1].tool_calls[0].function.arguments: JSON nested more than" in errors(p)[0]


def test_a_number_of_5000_digits_is_a_row_error(tmp_path: Path) -> None:
    # Python refuses int strings over 4,300 digits with a ValueError that is not a JSONDecodeError: it was a crash
    big = "1" * 5000
    (tmp_path / "n.jsonl").write_text(f'{{"text": {big}}}\n{{"text": "fine"}}\n')
    (tmp_path / "n.json").write_text(f'[{{"text": {big}}}]')
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": f'{{"n": {big}}}'}}
    (tmp_path / "c.jsonl").write_text(json.dumps({"messages": [USER, {"role": "assistant", "tool_calls": [call]},
                                                               {"role": "tool", "tool_call_id": "c1",
                                                                "content": "ok"}, REPLY]}) + "\n")
    for name in ("n.jsonl", "n.json", "c.jsonl"):
        err = errors(tmp_path / name)[0]  # the call's result then answers no call: a second error in c.jsonl
        assert "invalid JSON" in err or "is not valid JSON" in err
        assert "4300 digits" in err and "sys.set_int_max_str_digits" not in err


# --- bytes that are not text ------------------------------------------------------------------------------------


def test_invalid_utf8_in_every_field_names_the_line_and_field(tmp_path: Path) -> None:
    jl = tmp_path / "bad.jsonl"
    jl.write_bytes(b'{"text": "a\xff\xfe", "label": "\xff"}\n{"text": "fine", "label": "ok"}\n')
    err = only_error(jl)
    assert err.startswith(f"{jl}:1: error: not valid UTF-8 (column 12, byte 0xFF)") and "save the file as UTF-8" in err

    cs = tmp_path / "bad.csv"
    cs.write_bytes(b"text,label\nfine,ok\n\"a\xff\xfe\",\xfe\n")
    assert only_error(cs) == (f"{cs}:3: error: field 'text' (and 1 more field) is not valid UTF-8 (byte 0xFF): "
                              "save the file as UTF-8")
    assert [r.text for r in load_records(cs).records] == ["fine"]

    header = tmp_path / "header.csv"
    header.write_bytes(b"te\xffxt,label\nfine,ok\n")
    assert only_error(header).startswith(f"{header}:1: error: the header: ")

    js = tmp_path / "bad.json"
    js.write_bytes(b'[\n{"text": "fine"},\n{"text": "\xff"}\n]')
    assert only_error(js).startswith(f"{js}:3: error: not valid UTF-8 (byte 0xFF)")


def test_nul_bytes_are_named_as_such(tmp_path: Path) -> None:
    jl = tmp_path / "nul.jsonl"
    jl.write_bytes(b'{"text": "a\x00b"}\n\x00\x00\x00\n{"text": "ok"}\n')
    assert [e.split(": error: ")[0] for e in errors(jl)] == [f"{jl}:1", f"{jl}:2"]
    assert all("a NUL byte at column" in e and "save it as UTF-8" in e for e in errors(jl))
    cs = tmp_path / "nul.csv"
    cs.write_bytes(b"text,label\na\x00b,x\nok,y\n")
    assert only_error(cs).startswith(f"{cs}:2: error: field 'text' holds a NUL byte")
    js = tmp_path / "nul.json"
    js.write_bytes(b'[\n{"text": "ok"},\n{"text": "a\x00"}]')
    assert only_error(js).startswith(f"{js}:3: error: a NUL byte")


def test_half_a_surrogate_pair_is_a_row_error_not_a_crash_in_the_tokenizer_or_curation(tmp_path: Path) -> None:
    # JSON can escape half of a UTF-16 pair; the tokenizer (TypeError) and the curated copy (UnicodeEncodeError)
    # then failed on it. A whole pair (an escaped emoji) is a character and stays.
    jl = tmp_path / "half.jsonl"
    jl.write_text("".join(json.dumps({"messages": [{"role": "user", "content": text}, REPLY]}) + "\n"
                          for text in ("hi \ud800", "\U0001f600")))  # written as \\ud800 and \\ud83d\\ude00
    js = tmp_path / "half.json"
    js.write_text('[{"text": "fine"}, {"text": "cut \\udfff", "label": "x"}]')
    assert only_error(jl) == (f"{jl}:1: error: field 'messages[0].content' holds \\ud800, half of a surrogate pair "
                              "and not a character: the text was cut or badly written; fix or remove it")
    assert load_records(jl).records[0].messages[0]["content"] == "\U0001f600"
    assert only_error(js).startswith(f"{js}:1: error: field 'text' holds \\udfff")
    done = tunelab_cli("data", "curate", jl.name, "--out", "curated", cwd=tmp_path)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert len((tmp_path / "curated" / jl.name).read_text().splitlines()) == 1


def test_utf16_files_are_told_to_be_saved_as_utf8(tmp_path: Path) -> None:
    for name, text in (("u.jsonl", '{"text": "a"}\n{"text": "b"}\n'), ("u.csv", "text,label\na,b\n"),
                       ("u.json", '[{"text": "a"}]')):
        p = tmp_path / name
        p.write_bytes(text.encode("utf-16"))
        assert only_error(p) == f"{p}:1: error: the file is UTF-16 text: save it as UTF-8"


# --- CSV ---------------------------------------------------------------------------------------------------------


def test_a_csv_with_10000_columns_is_read_and_only_the_mapped_ones_are_used(tmp_path: Path) -> None:
    p = tmp_path / "wide.csv"
    others = [f"c{i}" for i in range(9998)]
    with p.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["question", *others, "category"])
        for i in range(50):
            w.writerow([f"question {i}", *["v"] * 9998, f"label{i % 3}"])
    loaded = load_records(p, columns={"text": "question", "label": "category"})
    assert not loaded.problems and len(loaded.records) == 50
    assert (loaded.records[-1].text, loaded.records[-1].label) == ("question 49", "label1")


def test_a_csv_field_past_the_csv_modules_limit_is_read(tmp_path: Path) -> None:
    p = tmp_path / "long.csv"
    p.write_text(f'text,label\n"{"w " * 200_000}",x\n')  # 400 KB: csv's own limit is 128 KB (csv.Error)
    [rec] = load_records(p).records
    assert len(rec.text) == 400_000


def test_an_unclosed_quote_stops_at_the_row_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNELAB_MAX_ROW_MB", "1")
    p = tmp_path / "quote.csv"
    p.write_text('text,label\nfine,ok\n"oops,x\n' + "more text,y\n" * 200_000)
    err = only_error(p)
    assert err.startswith(f"{p}:3: error: the CSV record starting on this line is over 1 MB, the limit for one row "
                          "(TUNELAB_MAX_ROW_MB): is a quote (\") left open?")


def test_old_mac_line_ends_still_read(tmp_path: Path) -> None:
    p = tmp_path / "mac.csv"
    p.write_bytes(b"text,label\rhello,greeting\r\"two\rlines\",x\rbye,farewell\r")
    loaded = load_records(p)
    assert not loaded.problems
    assert [(r.where, r.text) for r in loaded.records] == [(f"{p}:2", "hello"), (f"{p}:3", "two\rlines"),
                                                           (f"{p}:5", "bye")]


# --- Parquet -----------------------------------------------------------------------------------------------------


def test_corrupt_truncated_or_fake_parquet_is_an_error(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    whole = io.BytesIO()
    pq.write_table(pa.table({"text": [f"row {i}" for i in range(100)]}), whole)
    data = whole.getvalue()
    cases = {"cut.parquet": data[: len(data) // 2], "fake.parquet": b"PAR1 not parquet PAR1",
             "empty.parquet": b"", "garbled.parquet": data[:8] + os.urandom(len(data) - 16) + data[-8:]}
    for name, body in cases.items():
        p = tmp_path / name
        p.write_bytes(body)
        errs = errors(p)
        assert errs, name
        assert errs[-1].startswith(f"{p}:row ") and "can't read the Parquet file" in errs[-1]
        assert "write it again" in errs[-1]


# --- paths -----------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_a_pipe_or_device_is_refused_not_read_forever(tmp_path: Path) -> None:
    fifo = tmp_path / "data.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match="not a regular file"):
        load_records(fifo)


# --- as users meet them ------------------------------------------------------------------------------------------


def test_data_check_names_each_hostile_file_and_never_shows_a_traceback(tiny_model: Path, tmp_path: Path) -> None:
    d = tmp_path / "data"
    d.mkdir()
    (d / "good.jsonl").write_bytes(GOOD + b"\n")
    (d / "deep.jsonl").write_bytes(b"[" * 100_000 + b"\n")
    (d / "latin1.csv").write_bytes(b"text,label\ncaf\xe9,x\n")
    (d / "nul.jsonl").write_bytes(b'{"messages": "\x00"}\n')
    (d / "cut.parquet").write_bytes(b"PAR1 cut")
    (d / "bomb.jsonl.gz").write_bytes(gzip.compress(b"\0" * (20 * 1024**2)))  # over the row limit
    (d / "half.jsonl").write_text('{"text": "\\udc00"}\n')  # the tokenizer raised TypeError on it
    done = tunelab_cli("data", "check", "data", "--model", str(tiny_model), cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    text = " ".join(done.stderr.split())
    for name, said in [("deep.jsonl:1", "JSON nested more than"), ("latin1.csv:2", "field 'text' is not valid UTF-8"),
                       ("nul.jsonl:1", "a NUL byte"), ("cut.parquet:row 1", "can't read the Parquet file"),
                       ("bomb.jsonl.gz:1", "the line is 20 MB long, over the 16 MB limit for one row"),
                       ("half.jsonl:1", "field 'text' holds \\udc00")]:
        assert f"{name}: {said}" in text, (name, text[-3000:])


def test_a_job_with_a_hostile_training_file_fails_its_check_with_the_reason(
        tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.helpers import config
    from tunelab.config.load import dump_config
    from tunelab.jobs.check import main

    data = tmp_path / "upload.jsonl.gz"
    data.write_bytes(gzip.compress(GOOD + b"\n" + b"[" * 100_000 + b"\n"))
    cfg_file = tmp_path / "job.yaml"
    cfg_file.write_text(dump_config(config(tiny_model, tmp_path, "job", data)))
    assert main(str(cfg_file)) == 1
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["ok"] is False and result["kind"] == "data"
    assert f"{data}:2: error: JSON nested more than" in result["message"]


def test_every_kind_of_file_the_jobs_service_stores_can_be_read() -> None:
    from tunelab.data.sources import SUFFIXES
    from tunelab.jobs.files import KNOWN_SUFFIXES

    assert set(KNOWN_SUFFIXES) <= set(SUFFIXES)  # an uploaded .csv.gz was stored, then "unsupported file type"
