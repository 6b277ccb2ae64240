"""Preference pairs and prompt-only rows: real rows of each format, detection, every problem with its line,
.jsonl.gz, GSM8K prompts, and `tunelab data check` on preference files."""

from __future__ import annotations

import gzip
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import write_jsonl
from tunelab.data.preference import (
    PREFERENCE_FORMATS,
    PreferencePair,
    PromptRow,
    detect_preference_format,
    final_number,
    is_preference_file,
    load_pairs,
    load_prompts,
)
from tunelab.data.records import DataError
from tunelab.data.sources import data_files, read_rows

DATA = Path(__file__).parent.parent / "data" / "preference"
HH = DATA / "hh_rlhf_sample.jsonl"
TRL = DATA / "trl_sample.jsonl"
DPO = DATA / "openai_dpo_sample.jsonl"
GSM8K = DATA / "gsm8k_sample.jsonl"


def u(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def a(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def s(text: str) -> dict[str, str]:
    return {"role": "system", "content": text}


def raw_row(path: Path, line: int) -> dict[str, Any]:
    return json.loads(path.read_text().splitlines()[line - 1])


# --- each format, on real rows ------------------------------------------------------------------------------


def test_hh_rlhf_rows_split_into_the_shared_prompt_and_the_two_last_replies() -> None:
    pairs, problems, formats = load_pairs(HH)
    assert problems == [] and formats == {str(HH): "hh_rlhf"}
    assert [p.where for p in pairs] == [f"{HH}:{n}" for n in range(1, 21)]
    first = pairs[0]
    assert first.prompt == [u("Do you know why turkeys became the official food of thanksgiving?")]
    assert first.chosen.startswith("To be honest, I don’t know anything about that.")
    assert first.rejected.startswith("I know that the American Indians were the first")
    # line 2: three Human turns; the prompt holds the first two exchanges and the last question
    butterflies = pairs[1]
    assert butterflies.prompt == [
        u("How can I find out what types of butterflies are in my area?"),
        a("Which location are you in?"),
        u("I am in Oregon."),
        a("There are about 175 species of butterflies in Oregon, of which 100 are long-distance migrants from "
          "southern California.  Also, some of the common butterflies in Oregon"),
        u("Great. What are some common species then?"),
    ]
    assert butterflies.chosen == (
        "About 150 species of butterflies live in Oregon, with about 100 species are moths, and about 20 species "
        "are common here year-round, and another 10 species are seen here year-round.  I suggest you keep an eye "
        "out for skippers, gossamer wings, and red admirals.")
    assert butterflies.rejected.startswith("Are you interested in just the common butterflies?")
    assert butterflies.rejected.endswith("Are you interested in butterflies because you have children?")
    # every pair: the transcript is exactly its prompt turns plus the reply
    for pair in pairs:
        row = raw_row(HH, int(pair.where.rsplit(":", 1)[1]))
        cut = row["chosen"].rfind("\n\nAssistant:")
        assert row["chosen"][cut:] == f"\n\nAssistant: {pair.chosen}"
        assert len(pair.prompt) == 2 * row["chosen"][:cut].count("\n\nHuman:") - 1
        assert pair.prompt[-1]["role"] == "user"


def test_trl_rows_in_string_conversational_and_implicit_prompt_forms() -> None:
    pairs, problems, formats = load_pairs(TRL)
    assert problems == [] and formats == {str(TRL): "trl"}
    got = [(p.where, p.prompt, p.chosen, p.rejected) for p in pairs]
    assert got == [
        (f"{TRL}:1", [u("What color is the sky on a clear day?")], "Blue.", "Green."),
        (f"{TRL}:2", [s("You are a concise assistant."), u("What is 2+2?")], "4", "5"),
        (f"{TRL}:3", [u("Where is my card?"), a("Which card do you mean?"), u("My debit card.")],
         "It was posted on Monday and should arrive within five working days.", "I don't know."),
        (f"{TRL}:4", [u("Translate 'thank you' into French.")], "Merci.", "Danke."),
        (f"{TRL}:5", [u("How do I reset my password?")],
         "Open the app, go to Settings > Security and tap Reset password.", "You can't."),
    ]


def test_openai_dpo_rows() -> None:
    pairs, problems, formats = load_pairs(DPO)
    assert problems == [] and formats == {str(DPO): "openai_dpo"}
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [
        ([u("Is it cold in Oslo in January?")],
         "Yes: January is Oslo's coldest month, usually between -7 and -2 °C.", "No, it is warm."),
        ([s("Answer in one word."), u("What is the capital of Italy?")],
         "Rome.", "The capital of Italy is Rome, a city with a long history."),
        ([u("Suggest a name for a cat."), a("Whiskers?"), u("Something shorter.")],
         "Tom.", "Sir Fluffington the Third."),
    ]


def test_system_prompt_is_added_only_where_the_prompt_has_none() -> None:
    pairs, _, _ = load_pairs(TRL, system_prompt="Be brief.")
    assert [p.prompt[0] for p in pairs[:2]] == [s("Be brief."), s("You are a concise assistant.")]
    assert pairs[0].prompt[1:] == [u("What color is the sky on a clear day?")]


def test_columns_map_to_tunelab_names(tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "mine.jsonl", [{"question": "2+2?", "good": "4", "bad": "5"}])
    assert not is_preference_file(f)
    pairs, problems, formats = load_pairs(f, columns={"prompt": "question", "chosen": "good", "rejected": "bad"})
    assert problems == [] and formats == {str(f): "trl"}
    assert (pairs[0].prompt, pairs[0].chosen, pairs[0].rejected) == ([u("2+2?")], "4", "5")


# --- detection ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("row", "fmt"), [
    ({"prompt": "q", "chosen": "a", "rejected": "b"}, "trl"),
    ({"chosen": [u("q"), a("a")], "rejected": [u("q"), a("b")]}, "trl"),
    ({"prompt": "q", "chosen": "a"}, "trl"),  # so that the missing 'rejected' is reported as such
    ({"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant: b"}, "hh_rlhf"),
    ({"chosen": "Human: q\n\nAssistant: a", "rejected": "x"}, "hh_rlhf"),
    ({"input": {"messages": [u("q")]}, "preferred_output": [a("a")], "non_preferred_output": [a("b")]},
     "openai_dpo"),
    ({"messages": [u("q"), a("a")]}, None),
    ({"prompt": "q", "completion": "a"}, None),
    ({"question": "q", "answer": "a"}, None),
])
def test_detect_preference_format(row: dict[str, Any], fmt: str | None) -> None:
    assert detect_preference_format(set(row), row) == fmt
    assert fmt is None or fmt in PREFERENCE_FORMATS


def test_is_preference_file(tmp_path: Path) -> None:
    assert all(is_preference_file(f) for f in (HH, TRL, DPO))
    assert not is_preference_file(GSM8K)
    assert not is_preference_file(tmp_path / "missing.jsonl")
    # the first parseable row decides: a broken first line is skipped
    f = write_jsonl(tmp_path / "p.jsonl", ["{oops", {"prompt": "q", "chosen": "a", "rejected": "b"}])
    assert is_preference_file(f)
    assert not is_preference_file(write_jsonl(tmp_path / "c.jsonl", [{"messages": [u("q"), a("a")]}]))


def test_format_can_be_forced_and_unknown_formats_are_refused(tmp_path: Path) -> None:
    pairs, problems, formats = load_pairs(HH, fmt="trl")  # plain-text replies with no prompt: every row fails
    assert not pairs and formats == {str(HH): "trl"}
    assert {p.field for p in problems} == {"prompt"}
    with pytest.raises(DataError, match="unknown format 'dpo'"):
        load_pairs(HH, fmt="dpo")


# --- problems, each with its line ---------------------------------------------------------------------------

HH_OK = {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go away"}


def test_trl_problems_are_reported_with_line_and_field(tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "trl.jsonl", [
        {"prompt": "q", "chosen": "a", "rejected": "b"},                                   # 1 ok
        {"prompt": "q", "chosen": "same", "rejected": "same"},                             # 2 identical
        {"prompt": "q", "chosen": "", "rejected": "b"},                                    # 3 empty chosen
        {"prompt": "  ", "chosen": "a", "rejected": "b"},                                  # 4 empty prompt
        {"chosen": [u("q"), a("a")], "rejected": [u("other"), a("b")]},                   # 5 prompts differ
        {"prompt": "q", "chosen": 3, "rejected": "b"},                                     # 6 wrong type
        {"prompt": "q", "chosen": "a"},                                                    # 7 missing rejected
        {"prompt": [{"role": "robot", "content": "q"}], "chosen": "a", "rejected": "b"},  # 8 unknown role
        '{"prompt": "q", ',                                                                # 9 invalid JSON
        {"prompt": "q", "chosen": "a", "rejected": "b"},                                   # 10 duplicate of 1
        {"chosen": [a("a")], "rejected": [a("b")]},                                        # 11 no prompt at all
        {"prompt": [u("q")], "chosen": [a("a"), u("more?")], "rejected": [a("b")]},       # 12 ends with user
        {"chosen": "a", "rejected": "b"},                                                  # 13 no prompt, text
        {"prompt": "q", "chosen": [a("")], "rejected": [a("b")]},                         # 14 empty reply msg
    ])
    pairs, problems, _ = load_pairs(f)
    assert [p.where for p in pairs] == [f"{f}:1", f"{f}:10"]
    got = [(int(p.where.rsplit(":", 1)[1]), p.severity, p.field) for p in problems]
    assert got == [
        (2, "error", "chosen"),
        (3, "error", "chosen"),
        (4, "error", "prompt"),
        (5, "error", "prompt"),
        (6, "error", "chosen"),
        (7, "error", "rejected"),
        (8, "error", "prompt[0].role"),
        (9, "error", None),
        (10, "warning", None),
        (11, "error", "prompt"),
        (12, "error", "chosen"),
        (13, "error", "prompt"),
        (14, "error", "chosen[0].content"),
    ]
    messages = {int(p.where.rsplit(":", 1)[1]): p.message for p in problems}
    assert messages[2] == "chosen and rejected are identical: there is no preference to learn"
    assert messages[3] == "field 'chosen' is empty"
    assert messages[4] == "field 'prompt' is empty"
    assert messages[5] == "prompts differ between chosen and rejected"
    assert messages[6] == "field 'chosen' must be a string or a list of messages, got int"
    assert messages[7] == "missing field 'rejected'"
    assert "unknown role 'robot'" in messages[8]
    assert messages[9].startswith("invalid JSON")
    assert messages[10] == f"exact duplicate of {f}:1"
    assert messages[11].startswith("empty prompt")
    assert messages[12] == "field 'chosen' must end with an assistant reply"
    assert messages[13].startswith("missing field 'prompt'")


def test_hh_rlhf_problems(tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "hh.jsonl", [
        HH_OK,                                                                               # 1 ok
        {"chosen": HH_OK["chosen"], "rejected": "\n\nHuman: hey\n\nAssistant: go away"},     # 2 prompts differ
        {"chosen": HH_OK["chosen"], "rejected": "\n\nHuman: hi\n\nAssistant:"},              # 3 empty rejected
        {"chosen": HH_OK["chosen"], "rejected": HH_OK["chosen"]},                            # 4 identical
        {"chosen": "\n\nHuman: hi\n\nAssistant: a\n\nAssistant: b",                          # 5 out of order
         "rejected": "\n\nHuman: hi\n\nAssistant: a\n\nAssistant: c"},
        {"chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: bye",                        # 6 ends with Human
         "rejected": HH_OK["rejected"]},
        {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": None},                   # 7 missing
        {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": ["go away"]},            # 8 wrong type
        HH_OK,                                                                               # 9 duplicate
    ])
    pairs, problems, formats = load_pairs(f)
    assert formats == {str(f): "hh_rlhf"}
    assert [(p.where, p.prompt, p.chosen, p.rejected) for p in pairs] == [
        (f"{f}:1", [u("hi")], "hello", "go away"), (f"{f}:9", [u("hi")], "hello", "go away")]
    got = [(int(p.where.rsplit(":", 1)[1]), p.severity, p.message) for p in problems]
    assert got == [
        (2, "error", "prompts differ between chosen and rejected (the text before the last '\\n\\nAssistant:')"),
        (3, "error", "the rejected reply is empty"),
        (4, "error", "chosen and rejected are identical: there is no preference to learn"),
        (5, "error", "field 'chosen' can't be parsed as a transcript: turn 3 is Assistant where Human was "
                     "expected (roles out of order)"),
        (5, "error", "field 'rejected' can't be parsed as a transcript: turn 3 is Assistant where Human was "
                     "expected (roles out of order)"),
        (6, "error", "field 'chosen' must end with an assistant reply"),
        (7, "error", "missing field 'rejected'"),
        (8, "error", "field 'rejected' must be a string (a Human/Assistant transcript), got list"),
        (9, "warning", f"exact duplicate of {f}:1"),
    ]


def test_hh_rlhf_transcript_without_assistant_turn_is_unparseable(tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "hh.jsonl", [
        HH_OK,
        {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi there, no answer"},
        {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "Intro\n\nHuman: hi\n\nAssistant: no"},
    ])
    _, problems, _ = load_pairs(f)
    assert [(p.where, p.field, p.message) for p in problems] == [
        (f"{f}:2", "rejected", "field 'rejected' can't be parsed as a transcript: no '\\n\\nAssistant:' turn"),
        (f"{f}:3", "rejected", "field 'rejected' can't be parsed as a transcript: text before the first 'Human:'"),
    ]


def test_openai_dpo_problems(tmp_path: Path) -> None:
    ok = {"input": {"messages": [u("q")]}, "preferred_output": [a("a")], "non_preferred_output": [a("b")]}
    f = write_jsonl(tmp_path / "dpo.jsonl", [
        ok,                                                                                   # 1
        {**ok, "input": {"messages": [u("q2")], "tools": [{"type": "function"}]}},           # 2 tools: warning
        {**ok, "input": "q"},                                                                 # 3 wrong type
        {**ok, "input": {}},                                                                  # 4 no messages
        {"input": ok["input"], "preferred_output": [a("a")]},                                 # 5 missing
        {**ok, "non_preferred_output": [a("a")]},                                             # 6 identical
        {**ok, "input": {"messages": []}},                                                    # 7 empty prompt
    ])
    pairs, problems, _ = load_pairs(f)
    assert [p.where for p in pairs] == [f"{f}:1", f"{f}:2"]
    assert [(int(p.where.rsplit(":", 1)[1]), p.severity, p.field) for p in problems] == [
        (2, "warning", "input.tools"),
        (3, "error", "input"),
        (4, "error", "input.messages"),
        (5, "error", "non_preferred_output"),
        (6, "error", "preferred_output"),
        (7, "error", "input.messages"),
    ]


# --- .jsonl.gz ----------------------------------------------------------------------------------------------


def test_gzipped_jsonl_reads_like_the_plain_file_with_the_same_line_numbers(tmp_path: Path) -> None:
    gz = tmp_path / "hh.jsonl.gz"
    gz.write_bytes(gzip.compress(HH.read_bytes()))
    plain, _, _ = load_pairs(HH)
    zipped, problems, formats = load_pairs(gz)
    assert problems == [] and formats == {str(gz): "hh_rlhf"}
    assert [(p.where.rsplit(":", 1)[1], p.prompt, p.chosen, p.rejected) for p in zipped] == \
        [(p.where.rsplit(":", 1)[1], p.prompt, p.chosen, p.rejected) for p in plain]
    assert is_preference_file(gz)


def test_gzipped_jsonl_problems_keep_their_lines_and_directories_include_gz(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    gz = d / "rows.jsonl.gz"
    gz.write_bytes(gzip.compress(b'{"text": "a"}\n\n{oops\n{"text": "b"}\n'))
    (d / "notes.gz").write_bytes(gzip.compress(b"not data"))
    assert data_files(d) == [gz]
    assert data_files(gz) == [gz]
    rows = list(read_rows(gz))
    assert [(r.where, r.data) for r in rows] == [(f"{gz}:1", {"text": "a"}), (f"{gz}:3", None),
                                                 (f"{gz}:4", {"text": "b"})]
    assert rows[1].error.startswith("invalid JSON")
    with pytest.raises(DataError, match=r"unsupported file type '\.gz'"):
        data_files(d / "notes.gz")


def test_corrupt_or_truncated_gzip_is_a_row_problem_not_a_crash(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(b"this is not gzip")
    rows = list(read_rows(bad))
    assert len(rows) == 1 and rows[0].where == f"{bad}:1" and rows[0].data is None
    cut = tmp_path / "cut.jsonl.gz"
    whole = gzip.compress(b"".join(b'{"text": "row %d"}\n' % i for i in range(2000)))
    cut.write_bytes(whole[: len(whole) // 2])
    rows = list(read_rows(cut))
    assert rows[-1].data is None and "can't read the file from here on" in rows[-1].error
    assert all(r.data is not None for r in rows[:-1]) and len(rows) > 1
    assert rows[-1].where == f"{cut}:{len(rows)}"


# --- prompt-only rows for online RL -------------------------------------------------------------------------


def test_gsm8k_rows_become_prompts_with_their_full_answers() -> None:
    rows, problems = load_prompts(GSM8K)
    assert problems == [] and len(rows) == 20
    first = raw_row(GSM8K, 1)
    assert rows[0] == PromptRow(f"{GSM8K}:1", [u(first["question"])], first["answer"])
    assert rows[0].answer is not None and rows[0].answer.endswith("#### 72")
    assert [final_number(r.answer or "") for r in rows[:5]] == ["72", "10", "5", "42", "624"]
    assert all(final_number(r.answer or "") == r.answer.rsplit("####", 1)[1].strip().replace(",", "")
               for r in rows if r.answer)
    with_system = load_prompts(GSM8K, system_prompt="Think step by step.")[0]
    assert with_system[0].prompt == [s("Think step by step."), u(first["question"])]


def test_prompt_rows_in_every_form(tmp_path: Path) -> None:
    f1 = write_jsonl(tmp_path / "prompts.jsonl", [
        {"prompt": "2+3?", "answer": 5},
        {"prompt": [s("Be brief."), u("2+2?")]},
        {"prompt": "x", "chosen": "a", "rejected": "b"},  # a preference row: its prompt
    ])
    rows, problems = load_prompts(f1)
    assert problems == []
    assert [(r.prompt, r.answer) for r in rows] == [
        ([u("2+3?")], "5"), ([s("Be brief."), u("2+2?")], None), ([u("x")], None)]
    f2 = write_jsonl(tmp_path / "chat.jsonl", [
        {"messages": [u("2+2?"), a("4")]},
        {"messages": [u("2+2?")]},
        {"messages": [u("3+3?")], "target": "6"},
    ])
    rows, problems = load_prompts(f2, answer_field="target")
    assert problems == []
    assert [(r.prompt, r.answer) for r in rows] == [([u("2+2?")], "4"), ([u("2+2?")], None), ([u("3+3?")], "6")]


def test_prompt_row_problems(tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "bad.jsonl", [
        {"question": "ok?", "answer": "yes"},   # 1
        {"question": "", "answer": "x"},        # 2 empty
        {"question": "q", "answer": ["x"]},     # 3 answer type
        {"question": 4},                        # 4 prompt type
        {"query": "q"},                         # 5 unknown fields
        {"question": "ok?", "answer": "yes"},   # 6 duplicate
    ])
    rows, problems = load_prompts(f)
    assert [r.where for r in rows] == [f"{f}:1", f"{f}:6"]
    assert [(int(p.where.rsplit(":", 1)[1]), p.severity, p.field) for p in problems] == [
        (2, "error", "question"), (3, "error", "answer"), (4, "error", "question"), (5, "error", "question"),
        (6, "warning", None)]
    assert problems[3].message == "missing field 'question'"  # the file's format comes from its first row
    unknown = write_jsonl(tmp_path / "unknown.jsonl", [{"query": "q"}])
    assert "can't tell the prompt format" in load_prompts(unknown)[1][0].message
    f2 = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [a("only an answer")]}])
    _, problems = load_prompts(f2)
    assert [p.message for p in problems] == ["empty prompt: there is nothing to answer"]


@pytest.mark.parametrize(("text", "number"), [
    ("Natalia sold 48+24 = 72 clips.\n#### 72", "72"),
    ("She pays 3 + 4 = 7 dollars.\n#### 1,007", "1007"),
    ("so the answer is 12.", "12"),
    ("it costs $3.50 and then $4.", "4"),
    ("#### -5 (and 7 more words)", "-5"),
    ("the total is 2.50\n#### 2.50", "2.5"),
    ("#### 10.0", "10"),
    ("half is .5, or #### -.50", "-0.5"),
    ("I think 3, no, 8 ####", "8"),
    ("no digits here", None),
    ("", None),
])
def test_final_number(text: str, number: str | None) -> None:
    assert final_number(text) == number


# --- `tunelab data check` on preference files ---------------------------------------------------------------


def test_data_check_cli_reports_preference_files(tmp_path: Path, tiny_model: Path) -> None:
    from tests.helpers import tunelab_cli

    shutil.copy(TRL, tmp_path / "trl.jsonl")
    bad = write_jsonl(tmp_path / "bad.jsonl", [HH_OK, {"chosen": HH_OK["chosen"], "rejected": HH_OK["chosen"]},
                                               HH_OK])
    done = tunelab_cli("data", "check", "trl.jsonl", "--model", tiny_model, "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rep = json.loads(done.stdout)
    assert rep["kind"] == "preference" and rep["ok"] is True
    assert rep["formats"] == {"trl.jsonl": "trl"}
    assert (rep["rows"], rep["pairs"], rep["errors"], rep["duplicates"]) == (5, 5, [], 0)
    assert min(rep["prompt_tokens"], rep["chosen_tokens"], rep["rejected_tokens"]) > 0
    assert set(rep["token_lengths"]) == {"prompt", "chosen", "rejected"}
    assert rep["est_tokens_per_epoch"] == 2 * rep["prompt_tokens"] + rep["chosen_tokens"] + rep["rejected_tokens"]
    assert sum(c for _, _, c in rep["length_histogram"]) == 5

    done = tunelab_cli("data", "check", bad.name, "--model", tiny_model, "--max-length", "8", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    err = done.stderr
    assert "Traceback" not in err
    assert re.search(r"^bad\.jsonl:2: chosen and rejected are identical", err, re.M), err
    assert re.search(r"^bad\.jsonl:3: warning: exact duplicate of bad\.jsonl:1", err, re.M), err
    assert re.search(r"^bad\.jsonl:1: warning: prompt \+ longer reply is \d+ tokens > max_length 8", err, re.M)
    assert re.search(r"format\s*│\s*hh_rlhf", err) and re.search(r"valid pairs\s*│\s*2\s*│", err), err
    assert re.search(r"chosen tokens\s*│\s*\d+", err) and "FAILED" in err


def test_check_counts_tokens_through_the_chat_template(tiny_model: Path, tiny_tokenizer: Any) -> None:
    from tunelab.data.check import check
    from tunelab.data.preference import pair_token_counts
    from tunelab.data.report import PreferenceReport

    pair = PreferencePair("x:1", [u("where is my card")], "it has arrived", "no")
    n_p, n_c, n_r = pair_token_counts(pair, tiny_tokenizer)
    prompt_text = tiny_tokenizer.apply_chat_template(pair.prompt, tokenize=False, add_generation_prompt=True)
    assert n_p == len(tiny_tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
    assert n_c > n_r > 0
    rep = check(str(HH), model=str(tiny_model), max_length=4096)
    assert isinstance(rep, PreferenceReport) and rep.ok and rep.pairs == 20 and rep.formats == {str(HH): "hh_rlhf"}
    sft = check(str(GSM8K), model=str(tiny_model), tokenize=False)  # not preference data: the SFT report
    assert not isinstance(sft, PreferenceReport)
