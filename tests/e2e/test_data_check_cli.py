"""`tunelab data check` as a user runs it: the tiny model's tokenizer, exit codes, output. Files are passed by
relative path (cwd is the test's directory), as a user types them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.helpers import CliResult, tunelab_cli, write_jsonl

REPORT_KEYS = {"rows", "valid_rows", "errors", "duplicates", "prompt_tokens", "completion_tokens",
               "length_histogram", "est_tokens_per_epoch"}


def run_check(cwd: Path, model: Path, *args: str) -> CliResult:
    return tunelab_cli("data", "check", *args, "--model", str(model), cwd=cwd)


def flat(text: str) -> str:
    return " ".join(text.split())


USER = {"role": "user", "content": "where is my card"}
REPLY = {"role": "assistant", "content": "it has arrived"}


@pytest.fixture()
def bad_chat(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "bad.jsonl", [
        {"messages": [USER, REPLY]},                                                   # 1 ok
        '{"messages": [',                                                              # 2 invalid JSON
        {"messages": [USER, {"role": "assistant", "content": 3}]},                     # 3 content number
        {"messages": "where is my card"},                                              # 4 messages string
        {"msgs": [USER, REPLY]},                                                       # 5 missing field
        {"messages": [{"role": "robot", "content": "beep"}, REPLY]},                   # 6 unknown role
        {"messages": [USER, {"role": "assistant", "content": ""}]},                    # 7 empty content
        {"messages": [USER]},                                                          # 8 no assistant
        {"messages": [USER, {**REPLY, "weight": 0.5}]},                                # 9 bad weight
        {"messages": [{"role": "user", "content": "thanks"}, REPLY]},                  # 10 ok
    ])


@pytest.fixture()
def clean_completion(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "clean.jsonl", [
        {"prompt": "2+2=", "completion": " 4"},                                        # 1
        {"prompt": "hi", "completion": " hello"},                                      # 2
        {"prompt": "2+2=", "completion": " 4"},                                        # 3 duplicate of 1
        {"prompt": "the capital of France is", "completion": " Paris and of Italy is Rome"},  # 4 too long
    ])


def test_errors_exit_1_and_every_error_is_printed_with_its_line(bad_chat: Path, tiny_model: Path) -> None:
    done = run_check(bad_chat.parent, tiny_model, bad_chat.name)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    err = done.stderr
    expected = {
        2: "invalid JSON",
        3: "messages[1].content must be a string, got int",
        4: "field 'messages' must be a list of messages, got str",
        5: "missing field 'messages'",
        6: "unknown role 'robot'",
        7: "messages[1] (assistant) has empty content",
        8: "no assistant message",
        9: "messages[1].weight must be 0 or 1, got 0.5",
    }
    for line, message in expected.items():
        assert re.search(rf"^bad\.jsonl:{line}: ", err, re.M), f"line {line} not reported:\n{err}"
        assert message in flat(err), message
    reported = {int(n) for n in re.findall(r"^bad\.jsonl:(\d+): (?!warning)", err, re.M)}
    assert reported == set(expected)  # the good rows 1 and 10 are not reported
    assert re.search(r"valid rows\s*│\s*2\s*│", err), err
    assert re.search(r"errors\s*│\s*8\s*│", err), err
    assert "FAILED" in err


def test_clean_file_exits_0_with_duplicate_and_length_warnings(clean_completion: Path,
                                                               tiny_model: Path) -> None:
    done = run_check(clean_completion.parent, tiny_model, clean_completion.name, "--max-length", "8")
    assert done.returncode == 0, done.stderr
    err = done.stderr
    assert re.search(r"^clean\.jsonl:3: warning: exact duplicate of clean\.jsonl:1", err, re.M), err
    assert re.search(r"^clean\.jsonl:4: warning: \d+ tokens > max_length 8: truncated", err, re.M), err
    assert not re.search(r"^clean\.jsonl:[12]: ", err, re.M)
    assert re.search(r"exact duplicates\s*│\s*1\s*│", err), err
    assert re.search(r"over 8 tokens\s*│\s*1 truncated, 0 dropped", err), err
    assert "OK" in err and "FAILED" not in err


def test_json_report_is_parseable(clean_completion: Path, tiny_model: Path) -> None:
    done = run_check(clean_completion.parent, tiny_model, clean_completion.name,
                     "--max-length", "8", "--json")
    assert done.returncode == 0, done.stderr
    rep = json.loads(done.stdout)
    assert set(rep) >= REPORT_KEYS
    assert rep["ok"] is True
    assert (rep["rows"], rep["valid_rows"], rep["errors"], rep["duplicates"]) == (4, 4, [], 1)
    assert rep["truncated"] == 1 and rep["max_length"] == 8
    assert rep["formats"] == {"clean.jsonl": "completion"}
    assert rep["prompt_tokens"] > 0 and rep["completion_tokens"] > 0
    assert rep["est_tokens_per_epoch"] == rep["prompt_tokens"] + rep["completion_tokens"]
    hist = rep["length_histogram"]
    assert sum(count for _, _, count in hist) == rep["valid_rows"]
    assert max(hi for _, hi, count in hist if count) >= 8 >= min(lo for lo, _, count in hist if count)
    assert [w["where"] for w in rep["warnings"]] == ["clean.jsonl:3", "clean.jsonl:4"]


def test_json_report_of_a_csv_with_errors_and_column_mapping(tmp_path: Path, tiny_model: Path) -> None:
    (tmp_path / "intents.csv").write_text(
        "utterance,category\n"                    # 1
        "my card has not arrived,card_arrival\n"  # 2
        '"lost my card\nyesterday",lost_card\n'    # 3-4
        "\n"                                      # 5
        "top up please,\n"                        # 6 no label
        "where is my card,card_arrival\n"         # 7
    )
    done = run_check(tmp_path, tiny_model, "intents.csv", "--text-column", "utterance",
                     "--label-column", "category", "--json")
    assert done.returncode == 1, done.stderr
    rep = json.loads(done.stdout)
    assert set(rep) >= REPORT_KEYS and rep["ok"] is False
    assert rep["formats"] == {"intents.csv": "classification"}
    assert (rep["rows"], rep["valid_rows"]) == (4, 3)
    assert [(e["where"], e["field"]) for e in rep["errors"]] == [("intents.csv:6", "label")]
    assert rep["labels"] == {"card_arrival": 2, "lost_card": 1}
    assert rep["completion_tokens"] > 0 and rep["est_tokens_per_epoch"] > rep["completion_tokens"]


def test_unusable_path_is_a_clean_error(tmp_path: Path, tiny_model: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello\n")
    done = run_check(tmp_path, tiny_model, "notes.txt")
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "unsupported file type '.txt'" in flat(done.stderr)
