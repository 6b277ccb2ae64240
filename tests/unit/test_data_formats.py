"""Row formats -> Records, every problem of every row reported with its file:line; validation split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tunelab.data.formats import apply_columns, detect_format, explain_unknown, to_record
from tunelab.data.load import load_records
from tunelab.data.records import Record
from tunelab.data.split import overlap, split_validation


def jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def convert(data: dict[str, Any], fmt: str, system_prompt: str | None = None) -> Record:
    rec, problems = to_record("f.jsonl:1", data, fmt, system_prompt)
    assert not problems, [str(p) for p in problems]
    assert rec is not None
    return rec


def problems_of(data: dict[str, Any], fmt: str) -> list[str]:
    rec, problems = to_record("f.jsonl:7", data, fmt)
    assert rec is None and problems
    assert all(p.where == "f.jsonl:7" and p.severity == "error" for p in problems)
    return [p.message for p in problems]


# --- each format ----------------------------------------------------------------------------------


def test_chat_with_system_user_assistant_tool() -> None:
    messages = [
        {"role": "system", "content": "you are a bank assistant"},
        {"role": "user", "content": "what is the rate?"},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "rate", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "1.1"},
        {"role": "assistant", "content": "It is 1.1."},
    ]
    rec = convert({"messages": messages}, "chat")
    assert rec.kind == "chat" and rec.where == "f.jsonl:1"
    assert [m["role"] for m in rec.messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert [m["content"] for m in rec.messages] == [
        "you are a bank assistant", "what is the rate?", "", "1.1", "It is 1.1."]
    assert rec.messages[2]["tool_calls"][0]["function"]["name"] == "rate"
    assert rec.messages[3]["tool_call_id"] == "call_1" and rec.tools is None


def test_chat_weights_are_kept() -> None:
    rec = convert({"messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "bad answer", "weight": 0},
        {"role": "user", "content": "again"},
        {"role": "assistant", "content": "good answer", "weight": 1},
        {"role": "assistant", "content": "no weight"},
    ]}, "chat")
    assert [m.get("weight") for m in rec.messages] == [None, 0, None, 1, None]


def test_system_prompt_is_added_only_when_missing() -> None:
    rec = convert({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
                  "chat", system_prompt="be brief")
    assert rec.messages[0] == {"role": "system", "content": "be brief"}
    rec = convert({"messages": [{"role": "system", "content": "own"}, {"role": "user", "content": "q"},
                                {"role": "assistant", "content": "a"}]}, "chat", system_prompt="be brief")
    assert [m["content"] for m in rec.messages] == ["own", "q", "a"]


def test_alpaca_with_and_without_input() -> None:
    rec = convert({"instruction": "Translate to French", "input": "cat", "output": "chat"}, "alpaca")
    assert rec.kind == "chat"
    assert rec.messages == [{"role": "user", "content": "Translate to French\n\ncat"},
                            {"role": "assistant", "content": "chat"}]
    for data in ({"instruction": "Say hi", "output": "hi"},
                 {"instruction": "Say hi", "input": "", "output": "hi"}):
        rec = convert(data, "alpaca")
        assert rec.messages == [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi"}]
    rec = convert({"instruction": "Say hi", "output": "hi", "system": "polite"}, "alpaca")
    assert rec.messages[0] == {"role": "system", "content": "polite"}


def test_sharegpt_from_value() -> None:
    rec = convert({"conversations": [
        {"from": "system", "value": "sys"},
        {"from": "human", "value": "hello"},
        {"from": "gpt", "value": "hi there"},
        {"from": "human", "value": "bye"},
        {"from": "gpt", "value": "goodbye"},
    ]}, "sharegpt")
    assert rec.kind == "chat"
    assert [(m["role"], m["content"]) for m in rec.messages] == [
        ("system", "sys"), ("user", "hello"), ("assistant", "hi there"),
        ("user", "bye"), ("assistant", "goodbye")]


def test_completion_prompt_optional_completion_required() -> None:
    rec = convert({"prompt": "2+2=", "completion": " 4"}, "completion")
    assert (rec.kind, rec.prompt, rec.completion) == ("completion", "2+2=", " 4")
    rec = convert({"completion": "only this"}, "completion")
    assert (rec.prompt, rec.completion) == ("", "only this")
    assert problems_of({"prompt": "p"}, "completion") == ["missing field 'completion'"]


def test_text() -> None:
    rec = convert({"text": "some raw domain text"}, "text")
    assert (rec.kind, rec.text) == ("text", "some raw domain text")


def test_classification_with_banking77_column_mapping() -> None:
    row = apply_columns({"text": "my card has not arrived", "category": "card_arrival"},
                        {"text": "text", "label": "category"})
    assert row == {"text": "my card has not arrived", "label": "card_arrival"}
    rec = convert(row, "classification")
    assert (rec.kind, rec.text, rec.label) == ("classification", "my card has not arrived", "card_arrival")


def test_classification_numeric_label_becomes_text() -> None:
    rec = convert({"text": "t", "label": 3}, "classification")
    assert rec.label == "3"


def test_column_mapping_can_swap_names() -> None:
    assert apply_columns({"question": "q", "text": "the answer"}, {"text": "question", "label": "text"}) == {
        "text": "q", "label": "the answer"}
    assert apply_columns({"a": 1}, {}) == {"a": 1}
    assert apply_columns({"a": 1}, {"text": "missing"}) == {"a": 1}


def test_column_mapping_through_load_records(tmp_path: Path) -> None:
    p = tmp_path / "intents.csv"
    p.write_text("utterance,intent\nwhere is my card,card_arrival\n")
    loaded = load_records(p, columns={"text": "utterance", "label": "intent"})
    assert loaded.formats == {str(p): "classification"}
    assert [(r.text, r.label) for r in loaded.records] == [("where is my card", "card_arrival")]


# --- auto-detection -------------------------------------------------------------------------------


@pytest.mark.parametrize(("keys", "fmt"), [
    ({"messages"}, "chat"),
    ({"messages", "id"}, "chat"),
    ({"conversations"}, "sharegpt"),
    ({"instruction", "input", "output"}, "alpaca"),
    ({"instruction", "output"}, "alpaca"),
    ({"prompt", "completion"}, "completion"),
    ({"text", "label"}, "classification"),
    ({"text"}, "text"),
    ({"text", "meta"}, "text"),
    ({"question", "answer"}, None),
])
def test_detect_format(keys: set[str], fmt: str | None) -> None:
    assert detect_format(keys) == fmt


def test_unknown_fields_explained() -> None:
    assert "preference" in explain_unknown({"prompt", "chosen", "rejected"})
    msg = explain_unknown({"question", "answer"})
    assert "['answer', 'question']" in msg and "data.columns" in msg


def test_format_is_detected_per_file(tmp_path: Path) -> None:
    chat = jsonl(tmp_path / "a.jsonl", [{"messages": [{"role": "user", "content": "q"},
                                                      {"role": "assistant", "content": "a"}]}])
    share = jsonl(tmp_path / "b.jsonl", [{"conversations": [{"from": "human", "value": "q"},
                                                            {"from": "gpt", "value": "a"}]}])
    alpaca = jsonl(tmp_path / "c.jsonl", [{"instruction": "i", "output": "o"}])
    comp = jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "completion": "c"}])
    text = jsonl(tmp_path / "e.jsonl", [{"text": "t"}])
    cls = jsonl(tmp_path / "f.jsonl", [{"text": "t", "label": "l"}])
    loaded = load_records(tmp_path)
    assert not loaded.problems
    assert loaded.formats == {str(chat): "chat", str(share): "sharegpt", str(alpaca): "alpaca",
                              str(comp): "completion", str(text): "text", str(cls): "classification"}
    kinds = [r.kind for r in loaded.records]
    assert kinds == ["chat", "chat", "chat", "completion", "text", "classification"]


def test_detection_skips_unparseable_first_rows(tmp_path: Path) -> None:
    p = jsonl(tmp_path / "d.jsonl", ["{not json", {"prompt": "p", "completion": "c"}])
    loaded = load_records(p)
    assert loaded.formats == {str(p): "completion"}
    assert [e.where for e in loaded.errors] == [f"{p}:1"]
    assert [r.where for r in loaded.records] == [f"{p}:2"]


def test_unknown_format_is_reported_on_every_row(tmp_path: Path) -> None:
    p = jsonl(tmp_path / "prefs.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}] * 3)
    loaded = load_records(p)
    assert not loaded.records
    assert [e.where for e in loaded.errors] == [f"{p}:1", f"{p}:2", f"{p}:3"]
    assert "preference" in loaded.errors[0].message


def test_rows_after_an_unrecognisable_first_row_are_still_checked(tmp_path: Path) -> None:
    p = jsonl(tmp_path / "d.jsonl", [{"mesages": []}, {"messages": [{"role": "user", "content": "hi"}]}])
    loaded = load_records(p)
    assert [e.where for e in loaded.errors] == [f"{p}:1", f"{p}:2"]
    assert "no assistant message" in loaded.errors[1].message


def test_explicit_format_overrides_detection(tmp_path: Path) -> None:
    p = jsonl(tmp_path / "d.jsonl", [{"text": "t", "label": "l"}])
    loaded = load_records(p, fmt="text")
    assert loaded.formats == {str(p): "text"}
    assert [(r.kind, r.text) for r in loaded.records] == [("text", "t")]


# --- bad rows: all of them, each at its line ------------------------------------------------------

GOOD = {"messages": [{"role": "user", "content": "where is my card"},
                     {"role": "assistant", "content": "it has arrived"}]}


def test_every_bad_row_reported_at_its_line_and_good_rows_kept(tmp_path: Path) -> None:
    user = {"role": "user", "content": "hi"}
    reply = {"role": "assistant", "content": "hello"}
    p = jsonl(tmp_path / "bad.jsonl", [
        GOOD,                                                                          # 1 ok
        '{"messages": [{"role": "user", "content": "hi"}',                           # 2 invalid JSON
        {"messages": [user, {"role": "assistant", "content": 42}]},                    # 3 content number
        {"messages": "hello"},                                                         # 4 messages string
        {"conversation": [user, reply]},                                               # 5 missing field
        {"messages": [{"role": "robot", "content": "beep"}, reply]},                   # 6 unknown role
        {"messages": [user, {"role": "assistant", "content": "   "}]},                 # 7 empty content
        {"messages": [user]},                                                          # 8 no assistant
        {"messages": [user, {"role": "assistant", "content": "x", "weight": 2}]},      # 9 bad weight
        {"messages": [user, reply]},                                                   # 10 ok
        "",                                                                            # 11 blank: skipped
        {"messages": [{"content": "no role"}, reply]},                                 # 12 missing role
        {"messages": [{"role": "user", "content": "x", "weight": 0}, reply]},          # 13 weight on user
        {"messages": [user, {"role": "assistant", "content": "y", "weight": True}]},   # 14 weight bool
        {"messages": []},                                                              # 15 empty list
        {"messages": ["just text", reply]},                                            # 16 not an object
        {"messages": [user, {"role": "assistant", "content": "fine", "weight": 0},
                      {"role": "assistant", "content": "kept", "weight": 1}]},           # 17 ok
    ])
    loaded = load_records(p)
    assert loaded.rows == 16
    assert loaded.formats == {str(p): "chat"}
    assert [r.where for r in loaded.records] == [f"{p}:1", f"{p}:10", f"{p}:17"]
    assert [m.get("weight") for m in loaded.records[2].messages] == [None, 0, 1]

    by_line: dict[int, list[str]] = {}
    for e in loaded.errors:
        file, line = e.where.rsplit(":", 1)
        assert file == str(p)
        by_line.setdefault(int(line), []).append(e.message)
    assert sorted(by_line) == [2, 3, 4, 5, 6, 7, 8, 9, 12, 13, 14, 15, 16]

    def has(line: int, *words: str) -> None:
        assert any(all(w in m for w in words) for m in by_line[line]), (line, by_line[line])

    has(2, "invalid JSON")
    has(3, "messages[1].content must be a string", "int")
    has(4, "'messages' must be a list", "str")
    has(5, "missing field 'messages'")
    has(6, "unknown role 'robot'")
    has(7, "messages[1]", "empty content")
    has(8, "no assistant message")
    has(9, "weight must be 0 or 1", "2")
    has(12, "missing 'role'")
    has(13, "weight is only allowed on assistant")
    has(14, "weight must be 0 or 1", "True")
    has(15, "'messages' is empty")
    has(16, "messages[0] must be an object")


def test_one_row_with_several_problems_reports_all() -> None:
    row = {"messages": [{"role": "robot", "content": 5}, {"role": "user", "content": ""}]}
    msgs = problems_of(row, "chat")
    assert any("unknown role 'robot'" in m for m in msgs)
    assert any("messages[0].content must be a string" in m for m in msgs)
    assert any("messages[1] (user) has empty content" in m for m in msgs)
    assert any("no assistant message" in m for m in msgs)


def test_bad_rows_in_other_formats() -> None:
    assert problems_of({"instruction": "i"}, "alpaca") == ["missing field 'output'"]
    assert problems_of({"instruction": ["a"], "output": "o"}, "alpaca") == [
        "field 'instruction' must be a string, got list"]
    assert problems_of({"instruction": "i", "output": " "}, "alpaca") == ["field 'output' is empty"]
    assert problems_of({"text": True}, "text") == ["field 'text' must be a string, got bool"]
    assert problems_of({"text": "t"}, "classification") == ["missing field 'label'"]
    assert problems_of({"text": "", "label": "x"}, "classification") == ["field 'text' is empty"]
    msgs = problems_of({"conversations": [{"from": "alien", "value": "x"}, {"from": "human", "value": "hi"}]},
                       "sharegpt")
    assert any("unknown 'from' 'alien'" in m for m in msgs)
    assert any("no assistant message" in m for m in msgs)
    assert problems_of({"conversations": [{"from": "human", "value": None}, {"from": "gpt", "value": "a"}]},
                       "sharegpt") == ["conversations[0] is missing 'content'"]
    assert problems_of({"text": "t"}, "sharegpt") == ["missing field 'conversations'"]


def test_problem_fields_point_at_the_value() -> None:
    _, problems = to_record("x:1", {"messages": [{"role": "user", "content": "q"},
                                                 {"role": "assistant", "content": 1}]}, "chat")
    assert [p.field for p in problems] == ["messages[1].content"]
    assert str(problems[0]).startswith("x:1: error: ")


# --- validation split -----------------------------------------------------------------------------


def records(n: int) -> list[Record]:
    return [Record(f"f.jsonl:{i + 1}", "text", text=f"row {i}") for i in range(n)]


def test_split_same_seed_same_split() -> None:
    rows = records(50)
    a = split_validation(rows, 0.2, seed=1)
    b = split_validation(rows, 0.2, seed=1)
    assert [r.where for r in a[1]] == [r.where for r in b[1]]
    assert [r.where for r in a[0]] == [r.where for r in b[0]]
    c = split_validation(rows, 0.2, seed=2)
    assert {r.where for r in c[1]} != {r.where for r in a[1]}


def test_split_fraction_and_partition() -> None:
    rows = records(50)
    train, val = split_validation(rows, 0.2, seed=0)
    assert len(val) == 10 and len(train) == 40
    assert {r.where for r in train} | {r.where for r in val} == {r.where for r in rows}
    assert not {r.where for r in train} & {r.where for r in val}
    assert [r.where for r in train] == [r.where for r in rows if r in train]  # original order kept


def test_split_edge_cases() -> None:
    rows = records(5)
    assert split_validation(rows, 0.0, seed=0) == (rows, [])
    assert split_validation(rows[:1], 0.5, seed=0) == (rows[:1], [])
    train, val = split_validation(rows, 0.01, seed=0)
    assert len(val) == 1 and len(train) == 4  # at least one validation row


def test_overlap_counts_exact_duplicates() -> None:
    a = Record("t:1", "text", text="same")
    b = Record("t:2", "text", text="other")
    c = Record("v:1", "text", text="same")
    d = Record("v:2", "text", text="new")
    e = Record("v:3", "text", text="same")
    assert overlap([a, b], [c, d, e]) == 2
    assert overlap([a, b], [d]) == 0
    chat = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    weighted = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0}]
    assert overlap([Record("t:3", "chat", messages=chat)], [Record("v:4", "chat", messages=weighted)]) == 1
    assert overlap([Record("t:4", "classification", text="x", label="a")],
                   [Record("v:5", "classification", text="x", label="b")]) == 0
