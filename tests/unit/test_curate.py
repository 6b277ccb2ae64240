"""Curation: duplicates, leaks and contamination found on real rows; the curated copy written whole, every row
removed or changed listed with its reason; a run with data.curate trains on the curated rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunelab.config.curate import CurateConfig
from tunelab.data.curate.dups import clusters, duplicates, normalize
from tunelab.data.curate.leaks import contamination, leaks
from tunelab.data.curate.rows import Finding, Row
from tunelab.data.curate.run import FINDINGS_JSON, curate, curate_files, read, write
from tunelab.data.records import DataError, Record

DATA = Path(__file__).parents[1] / "data" / "curate"


def _rows(texts: list[str], split: str = "train", labels: list[str] | None = None) -> list[Row]:
    labels = labels or ["a"] * len(texts)
    return [Row(f"{split}.csv:{i + 2}", {"text": t, "label": lab},
                Record(f"{split}.csv:{i + 2}", "classification", text=t, label=lab), split)  # type: ignore[arg-type]
            for i, (t, lab) in enumerate(zip(texts, labels, strict=True))]


def test_normalize_ignores_case_punctuation_and_spacing() -> None:
    assert normalize("  How do I   top-up my CARD?? ") == normalize("how do i top up my card")


def test_near_duplicates_cluster_and_keep_the_first() -> None:
    texts = ["How do I track the card you sent me?", "I lost my wallet on the train yesterday",
             "How do I track the card you sent to me?", "how do i track the card you sent me",
             "What is the exchange rate for euros today?"]
    groups = clusters(texts, 0.8)
    assert [[i for i, _ in g] for g in groups] == [[0, 2, 3]]
    found = duplicates(_rows(texts, labels=["a", "b", "a", "c", "d"]), 0.8)
    assert [f.where for f in found] == ["train.csv:4", "train.csv:5"]
    assert all(f.action == "drop" and f.detail["kept"] == "train.csv:2" for f in found)
    assert "exact duplicate" in found[1].reason and "near-duplicate" in found[0].reason
    assert "labelled 'c' here, 'a' there" in found[1].reason  # conflicting labels are named


def test_leaks_find_validation_rows_that_copy_training_rows() -> None:
    train = _rows(["Why was my card payment declined at the shop?", "Can I change my PIN at an ATM?"])
    val = _rows(["why was my card payment declined at the shop", "Where do I see my balance?"], "validation")
    found = leaks(train, val, 0.8, "drop")
    assert [(f.where, f.detail["train"]) for f in found] == [("validation.csv:2", "train.csv:2")]
    assert leaks(train, [], 0.8, "drop") == []


def test_contamination_by_shared_ngram_and_by_near_copy() -> None:
    evaluation = _rows(["The quick brown fox jumps over the lazy dog near the river bank today",
                        "Is my card still active?"], "eval")
    train = _rows(["a story: the quick brown fox jumps over the lazy dog near a farm",
                   "is my card still active", "Something else entirely, about loans and mortgages"])
    found = contamination(train, evaluation, 8, 0.8)
    assert [f.where for f in found] == ["train.csv:2", "train.csv:3"]
    assert "shares 8 words" in found[0].reason and "copies evaluation row" in found[1].reason


def test_read_keeps_the_users_keys_and_flags_unreadable_rows(tmp_path: Path) -> None:
    f = tmp_path / "rows.jsonl"
    f.write_text('{"text": "hello there", "category": "greet"}\n{not json\n{"text": "bye now", "category": "b"}\n')
    rows, found = read(str(f), columns={"text": "text", "label": "category"})
    assert [r.data for r in rows] == [{"text": "hello there", "category": "greet"}, {"text": "bye now",
                                                                                  "category": "b"}]
    assert rows[0].record is not None and rows[0].record.label == "greet"
    assert [(x.where, x.step, x.action) for x in found] == [(f"{f}:2", "unreadable", "drop")]


def test_curating_the_shipped_support_rows_finds_each_planted_fault(tmp_path: Path) -> None:
    cfg = CurateConfig(quality={"language": "en"})
    result = curate_files([str(DATA / "support.jsonl")], cfg)
    by = {(f.where.rsplit(":", 1)[1], f.step): f for f in result.findings}
    assert by[("25", "duplicates")].action == "drop" and "exact duplicate of" in by[("25", "duplicates")].reason
    assert by[("26", "duplicates")].action == "drop"
    assert by[("27", "personal_data")].action == "change" and by[("28", "personal_data")].action == "change"
    assert by[("29", "format")].action == "drop" and "empty content" in by[("29", "format")].reason
    assert by[("30", "quality")].action == "drop" and "language: de" in by[("30", "quality")].reason
    kept = {r.where.rsplit(":", 1)[1]: r for r in result.train}
    assert "25" not in kept and "29" not in kept and len(result.train) == 30 - 4
    text = json.dumps(kept["27"].data)
    assert "maria.lopez@example.com" not in text and "<EMAIL>" in text and "<PHONE>" in text
    assert "4111" not in json.dumps(kept["28"].data)
    # the report never shows personal data, even for rows it removed
    assert all("4111 1111" not in t and "maria.lopez" not in t for t in result.texts.values())

    out = tmp_path / "curated"
    written = write(result, out, lambda r: "<html>page</html>")
    lines = Path(written[str(DATA / "support.jsonl")]).read_text().splitlines()
    assert len(lines) == 26 and all("messages" in json.loads(x) for x in lines)
    saved = json.loads((out / FINDINGS_JSON).read_text())
    assert saved["kept"] == {"train": 26, "validation": 0} and saved["read"]["train"] == 30
    dropped = {f["where"] for f in saved["findings"] if f["action"] == "drop"}
    assert len(dropped) == 4  # nothing dropped without a finding: 30 read, 26 kept, 4 listed
    # writing again over a curated copy is fine; over another directory it is refused
    write(result, out)
    other = tmp_path / "other"
    other.mkdir()
    (other / "mine.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a curated copy"):
        write(result, other)
    assert (other / "mine.txt").read_text() == "keep me"


def test_an_interrupted_write_leaves_no_directory_that_looks_complete(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    result = curate(_rows(["one row here", "another row there"]), CurateConfig(labels="off"))

    def broken(_: object) -> str:
        raise OSError("disk full")

    with pytest.raises(OSError):
        write(result, tmp_path / "out", broken)
    assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())


def test_a_dropped_row_is_gone_for_the_steps_after_it() -> None:
    rows = _rows(["Call me at +1 415 555 0132 about my card", "call me at +1 415 555 0132 about my card"])
    result = curate(rows, CurateConfig(labels="off"))
    steps = [(f.where, f.step) for f in result.findings]
    assert ("train.csv:3", "duplicates") in steps and ("train.csv:3", "personal_data") not in steps
    assert isinstance(result.findings[0], Finding) and len(result.train) == 1
