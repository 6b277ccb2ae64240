"""Reading rows from files, directories and saved datasets, each row with the right file:line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunelab.data.load import load_records
from tunelab.data.records import DataError
from tunelab.data.sources import data_files, read_rows

BANKING77 = Path(__file__).resolve().parents[2] / "src" / "tunelab" / "examples" / "banking77" / "train.csv"
CLASSIFY = {"text": "text", "label": "category"}


def rows(path: Path) -> list[tuple[str, dict | None, str]]:
    return [(r.where, r.data, r.error) for r in read_rows(path)]


# --- JSON Lines -----------------------------------------------------------------------------------


def test_jsonl_lines_count_blank_lines(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    p.write_text('{"text": "a"}\n\n   \n{"text": "b"}\n[1, 2]\n{oops\n{"text": "c"}')
    got = rows(p)
    assert [w for w, _, _ in got] == [f"{p}:1", f"{p}:4", f"{p}:5", f"{p}:6", f"{p}:7"]
    assert got[0][1] == {"text": "a"} and got[1][1] == {"text": "b"} and got[4][1] == {"text": "c"}
    assert got[2][1] is None and "expected a JSON object, got list" in got[2][2]
    assert got[3][1] is None and "invalid JSON" in got[3][2]


def test_jsonl_with_byte_order_mark(tmp_path: Path) -> None:
    p = tmp_path / "bom.jsonl"
    p.write_bytes(b'\xef\xbb\xbf{"text": "hello"}\n{"text": "bye"}\n')
    assert [(w, d) for w, d, _ in rows(p)] == [(f"{p}:1", {"text": "hello"}), (f"{p}:2", {"text": "bye"})]


# --- JSON arrays ----------------------------------------------------------------------------------


def test_json_array_rows_get_their_start_line(tmp_path: Path) -> None:
    p = tmp_path / "d.json"
    p.write_text(
        "[\n"                                   # 1
        '  {"text": "one"},\n'                  # 2
        "  {\n"                                 # 3
        '    "text": "two",\n'                  # 4
        '    "label": "x"\n'                    # 5
        "  },\n"                                # 6
        "  42,\n"                               # 7
        '  {"text": "three"}\n'                 # 8
        "]\n"
    )
    got = rows(p)
    assert [w for w, _, _ in got] == [f"{p}:2", f"{p}:3", f"{p}:7", f"{p}:8"]
    assert got[1][1] == {"text": "two", "label": "x"}
    assert got[2][1] is None and "got int" in got[2][2]


def test_json_array_invalid_json_reports_the_line(tmp_path: Path) -> None:
    p = tmp_path / "d.json"
    p.write_text('[\n  {"text": "one"},\n  {"text": tw}\n]\n')
    got = rows(p)
    assert got[0][:2] == (f"{p}:2", {"text": "one"})
    assert got[1][0] == f"{p}:3" and got[1][1] is None and "invalid JSON" in got[1][2]


def test_json_object_with_data_list(tmp_path: Path) -> None:
    p = tmp_path / "d.json"
    p.write_text(json.dumps({"data": [{"text": "a"}, "nope", {"text": "b"}]}))
    got = rows(p)
    assert [w for w, _, _ in got] == [f"{p}:row 1", f"{p}:row 2", f"{p}:row 3"]
    assert got[1][1] is None


def test_json_single_object_is_an_error(tmp_path: Path) -> None:
    p = tmp_path / "d.json"
    p.write_text('{"text": "a"}')
    [(where, data, err)] = rows(p)
    assert where == f"{p}:1" and data is None and "JSON array" in err


def test_json_with_byte_order_mark(tmp_path: Path) -> None:
    p = tmp_path / "d.json"
    p.write_bytes(b'\xef\xbb\xbf[{"text": "a"}]')
    assert [(w, d) for w, d, _ in rows(p)] == [(f"{p}:1", {"text": "a"})]


# --- CSV ------------------------------------------------------------------------------------------


def test_csv_line_numbers_header_is_line_one(tmp_path: Path) -> None:
    p = tmp_path / "d.csv"
    p.write_text(
        "text,category\n"            # 1
        "card not here,card_arrival\n"  # 2
        '"two\nlines",top_up\n'      # 3-4
        "\n"                         # 5 (blank)
        "third,exchange_rate\n"      # 6
        "too,many,fields\n"          # 7
        "short\n"                    # 8
    )
    got = rows(p)
    assert [w for w, _, _ in got] == [f"{p}:{n}" for n in (2, 3, 6, 7, 8)]
    assert got[0][1] == {"text": "card not here", "category": "card_arrival"}
    assert got[1][1] == {"text": "two\nlines", "category": "top_up"}
    assert got[2][1] == {"text": "third", "category": "exchange_rate"}
    assert got[3][1] is None and "more fields than the header" in got[3][2]
    assert got[4][1] == {"text": "short", "category": None}


def test_csv_problems_point_at_the_right_line(tmp_path: Path) -> None:
    p = tmp_path / "d.csv"
    p.write_text("text,category\nok,a\n\n,b\nfine,\n")
    loaded = load_records(p, columns=CLASSIFY)
    assert [r.where for r in loaded.records] == [f"{p}:2"]
    assert {(e.where, e.field) for e in loaded.errors} == {(f"{p}:4", "text"), (f"{p}:5", "label")}


def test_csv_with_byte_order_mark(tmp_path: Path) -> None:
    p = tmp_path / "excel.csv"
    p.write_bytes("text,category\nhello,greeting\n".encode("utf-8-sig"))
    loaded = load_records(p, columns=CLASSIFY)
    assert not loaded.problems
    assert [(r.text, r.label) for r in loaded.records] == [("hello", "greeting")]


def test_banking77_example_loads_with_column_mapping() -> None:
    loaded = load_records(BANKING77, columns=CLASSIFY)
    assert not loaded.problems
    assert loaded.formats == {str(BANKING77): "classification"}
    assert loaded.rows == len(loaded.records) > 100
    first = loaded.records[0]
    assert first.where == f"{BANKING77}:2"
    assert first.text and first.label and " " not in first.label


# --- parquet, directories, saved datasets ---------------------------------------------------------


def test_parquet_rows(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["a", "", "c"], "label": ["x", "y", "z"]}), p)
    assert [w for w, _, _ in rows(p)] == [f"{p}:row 1", f"{p}:row 2", f"{p}:row 3"]
    loaded = load_records(p)
    assert [(r.where, r.text, r.label) for r in loaded.records] == [
        (f"{p}:row 1", "a", "x"), (f"{p}:row 3", "c", "z")]
    assert [(e.where, e.field) for e in loaded.errors] == [(f"{p}:row 2", "text")]


def test_directory_of_files_each_with_its_own_format(tmp_path: Path) -> None:
    d = tmp_path / "data"
    (d / "nested").mkdir(parents=True)
    chat = d / "a_chat.jsonl"
    chat.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "hello"}]}) + "\n")
    alpaca = d / "nested" / "b_alpaca.json"
    alpaca.write_text(json.dumps([{"instruction": "say hi", "output": "hi"}]))
    labels = d / "c_labels.csv"
    labels.write_text("text,label\nmy card,card_arrival\n,oops\n")
    (d / "README.md").write_text("not data")
    assert data_files(d) == [chat, labels, alpaca]
    loaded = load_records(d)
    assert loaded.formats == {str(chat): "chat", str(alpaca): "alpaca", str(labels): "classification"}
    assert loaded.rows == 4
    assert sorted(r.where for r in loaded.records) == sorted([f"{chat}:1", f"{alpaca}:1", f"{labels}:2"])
    assert [e.where for e in loaded.errors] == [f"{labels}:3"]


def test_saved_dataset(tmp_path: Path) -> None:
    import datasets

    path = tmp_path / "saved"
    datasets.Dataset.from_dict({"prompt": ["2+2=", "3+3="], "completion": [" 4", ""]}).save_to_disk(str(path))
    assert data_files(path) == [path]
    loaded = load_records(path)
    assert loaded.formats == {str(path): "completion"}
    assert [(r.where, r.prompt, r.completion) for r in loaded.records] == [(f"{path}:row 1", "2+2=", " 4")]
    assert [(e.where, e.field) for e in loaded.errors] == [(f"{path}:row 2", "completion")]


def test_saved_dataset_dict_uses_train_split(tmp_path: Path) -> None:
    import datasets

    path = tmp_path / "saved_dict"
    datasets.DatasetDict({
        "test": datasets.Dataset.from_dict({"text": ["from test"]}),
        "train": datasets.Dataset.from_dict({"text": ["from train", "again"]}),
    }).save_to_disk(str(path))
    loaded = load_records(path)
    assert [r.text for r in loaded.records] == ["from train", "again"]


# --- paths that can't be used ---------------------------------------------------------------------


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such file"):
        data_files(tmp_path / "nope.jsonl")


def test_directory_without_data_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="holds no"):
        data_files(tmp_path)


def test_unsupported_file_type_is_a_user_error(tmp_path: Path) -> None:
    p = tmp_path / "notes.txt"
    p.write_text("hello")
    with pytest.raises(DataError, match=r"unsupported file type '\.txt'"):
        data_files(p)


def test_unknown_format_is_a_user_error(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    p.write_text('{"text": "a"}\n')
    with pytest.raises(DataError, match="unknown format 'markdown'"):
        load_records(p, fmt="markdown")


def test_json_lines_in_a_json_file_are_read_as_json_lines(tmp_path: Path) -> None:
    from tunelab.data.sources import read_rows

    p = tmp_path / "rows.json"
    p.write_text('{"text": "a"}\n{"text": "b"}\n{oops\n')
    rows = list(read_rows(p))
    assert [r.data for r in rows[:2]] == [{"text": "a"}, {"text": "b"}]
    assert rows[2].where == f"{p}:3" and rows[2].error.startswith("invalid JSON")


def test_bytes_that_are_not_utf8_are_reported_with_their_line(tmp_path: Path) -> None:
    from tunelab.data.sources import read_rows

    jl = tmp_path / "latin1.jsonl"
    jl.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n{"text": "fine"}\n')
    rows = list(read_rows(jl))
    assert [r.data for r in rows if r.data] == [{"text": "ok"}, {"text": "fine"}]
    assert rows[1].where == f"{jl}:2" and "not valid UTF-8" in rows[1].error

    cs = tmp_path / "latin1.csv"
    cs.write_bytes(b"text,label\nok,a\ncaf\xe9,b\n")
    rows = list(read_rows(cs))
    assert [r.data for r in rows] == [{"text": "ok", "label": "a"}, None]  # the bad row only, as in JSON Lines
    assert rows[1].where == f"{cs}:3" and "field 'text' is not valid UTF-8" in rows[1].error
