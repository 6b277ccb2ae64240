"""Quality filters: each fires on what it should and leaves the rest alone."""

from __future__ import annotations

import pytest

from tunelab.config.curate import QualityConfig
from tunelab.data.curate.quality import quality
from tunelab.data.curate.rows import Finding, Row
from tunelab.data.records import Record
from tunelab.errors import TunelabError

SIGNATURE = "Kind regards, the Acme support team (ticket 4411)"
ANSWERS = ["You can reset your password from the login screen.", "Your card should arrive within five working days.",
           "Transfers to other banks take one to two days.", "We charge no fee for the first two top ups a month.",
           "You can freeze your card in the app under Security.", "Exchange rates are updated every minute.",
           "Pending payments clear once the merchant confirms them.", "Your statement is under Accounts, Documents.",
           "Yes, Apple Pay works with every card we issue.", "Refunds show up within five days of the merchant's.",
           ]


def chat(where: str, user: str, assistant: str, system: str | None = None) -> Row:
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return Row(where, {"messages": messages}, Record(where, kind="chat", messages=messages))


def by_filter(found: list[Finding], name: str) -> dict[str, Finding]:
    return {f.where: f for f in found if f.detail["filter"] == name}


OFF = {"empty": False, "max_chars": None, "boilerplate": False}


def test_empty_replies_dropped_preference_rows_skipped() -> None:
    rows = [chat("d:1", "hi", "   "), chat("d:2", "hi", "k"), chat("d:3", "hi", "ok"),
            Row("d:4", {"prompt": "hi", "chosen": "", "rejected": "x"}),
            Row("d:5", {"text": "?", "label": "1"}, Record("d:5", kind="classification", text="?", label="1")),
            Row("d:6", {"text": "my card is lost", "label": "1"},
                Record("d:6", kind="classification", text="my card is lost", label="1")),
            Row("d:7", {"prompt": "Say:", "completion": ""}, Record("d:7", kind="completion", prompt="Say:"))]
    found = by_filter(quality(rows, QualityConfig(boilerplate=False)), "empty")
    assert set(found) == {"d:1", "d:2", "d:5", "d:7"}  # one-character labels ("1") are fine, a "?" text is not
    assert found["d:1"].action == "drop" and found["d:1"].reason.startswith("empty reply")
    assert found["d:2"].detail == {"filter": "empty", "chars": 1, "min_chars": 2}
    assert quality(rows, QualityConfig(empty=False, boilerplate=False)) == []


def test_extreme_length_dropped_once() -> None:
    rows = [chat("l:1", "question", "x" * 600), chat("l:2", "question", "fine"), chat("l:3", "q", "")]
    found = quality(rows, QualityConfig(max_chars=500, boilerplate=False))
    assert [(f.where, f.detail["filter"]) for f in found] == [("l:3", "empty"), ("l:1", "length")]
    assert found[1].detail == {"filter": "length", "chars": len("question\n" + "x" * 600), "max_chars": 500}
    assert quality(rows, QualityConfig(max_chars=None, empty=False, boilerplate=False)) == []


def test_language_drops_confident_other_language_only() -> None:
    rows = [chat("g:1", "Wann kommt meine neue Karte an?",
                 "Ihre Karte wird innerhalb von fünf Werktagen per Post zugestellt."),
            chat("g:2", "When will my new card arrive?", "Your card is posted within five working days."),
            chat("g:3", "Danke", "Bitte"),  # too short to judge: kept
            chat("g:4", "ok", "gracias"),
            chat("g:5", "Translate 'good morning' into German.", "Guten Morgen.",
                 system="Du bist ein hilfreicher Assistent, der immer sehr ausführlich auf Deutsch antwortet."),
            Row("g:6", {"text": "Mi tarjeta no ha llegado todavía, ¿cuándo llegará?", "label": "card_arrival"},
                Record("g:6", kind="classification", text="Mi tarjeta no ha llegado todavía, ¿cuándo llegará?",
                       label="card_arrival"))]
    found = by_filter(quality(rows, QualityConfig(language="en", **OFF)), "language")
    assert set(found) == {"g:1", "g:6"}
    assert found["g:1"].action == "drop" and found["g:1"].reason.startswith("language: de (")
    assert found["g:1"].reason.endswith("), expected en")
    assert found["g:1"].detail["language"] == "de" and found["g:1"].detail["confidence"] >= 0.9
    assert found["g:6"].detail["language"] == "es"
    de = by_filter(quality(rows, QualityConfig(language="de", **OFF)), "language")
    assert "g:2" in de and "g:1" not in de
    assert quality(rows, QualityConfig(**OFF)) == []  # no language set: not judged
    with pytest.raises(TunelabError, match="ISO 639-1"):
        quality(rows, QualityConfig(language="english", **OFF))


def signed_rows(n: int = 20, signed: int = 6) -> list[Row]:
    rows = []
    for i in range(n):
        answer = ANSWERS[i % len(ANSWERS)]
        if i < signed:  # the same signature, with other ticket numbers, case and spacing
            variant = SIGNATURE if i % 2 else SIGNATURE.upper().replace(", ", ",   ")
            answer += "\n\n" + variant.replace("4411", str(4411 + 7 * i))
        # a system prompt and a user line repeated in every row are by design, not boilerplate
        rows.append(chat(f"b:{i + 1}", f"Customer question number {i} about my account, please help\nrow {i}",
                         answer, system="You are the helpful support assistant of Acme Bank."))
    return rows


def test_boilerplate_flagged_with_its_line() -> None:
    rows = signed_rows()
    found = quality(rows, QualityConfig())
    assert [f.where for f in found] == [f"b:{i}" for i in range(1, 7)]
    f = found[1]
    assert f.action == "flag" and f.step == "quality" and f.detail["filter"] == "boilerplate"
    assert f.detail["rows"] == [6] and "kind regards" in f.detail["lines"][0].lower()
    assert "repeats in 6 rows" in f.reason
    assert rows[1].record is not None and SIGNATURE.replace("4411", "4418") in rows[1].text()  # only flagged
    # below the share (6 of 20 = 30%) or under 3 rows: nothing
    assert quality(rows, QualityConfig(boilerplate_share=0.5)) == []
    assert quality(signed_rows(n=4, signed=2), QualityConfig(boilerplate_share=0.1)) == []
    assert quality(rows, QualityConfig(boilerplate=False)) == []


def test_boilerplate_stripped_as_changes() -> None:
    rows = signed_rows()
    found = quality(rows, QualityConfig(strip_boilerplate=True))
    assert len(found) == 6 and {f.action for f in found} == {"change"}
    assert found[0].reason.startswith("removed boilerplate line")
    for row, answer in zip(rows[:6], ANSWERS, strict=False):
        assert row.reply() == answer  # signature and the blank line before it gone
        assert row.data["messages"][-1]["content"] == answer  # the user's form too
        assert row.record is not None and row.record.messages[0]["role"] == "system"
    assert rows[7].reply() == ANSWERS[7]


def test_dropped_rows_get_no_later_findings() -> None:
    rows = signed_rows()
    rows[0] = chat("b:1", "Wann kommt meine neue Karte an?", "Ihre Karte kommt innerhalb von fünf Werktagen.\n\n"
                   + SIGNATURE)
    found = quality(rows, QualityConfig(language="en"))
    b1 = [f for f in found if f.where == "b:1"]
    assert [(f.action, f.detail["filter"]) for f in b1] == [("drop", "language")]
    assert len([f for f in found if f.detail["filter"] == "boilerplate"]) == 5
