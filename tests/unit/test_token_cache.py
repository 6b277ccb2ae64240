"""The tokenisation cache: a hit only for the same bytes, tokenizer and settings."""

from __future__ import annotations

from pathlib import Path

from tunelab.data.cache import cached


def test_cache_hits_only_for_the_same_file_tokenizer_and_settings(tmp_path: Path, tiny_tokenizer) -> None:  # noqa: ANN001
    data = tmp_path / "rows.jsonl"
    data.write_text('{"text": "hello"}\n')
    calls: list[int] = []

    def build() -> list[int]:
        calls.append(1)
        return [len(calls)]

    assert cached(data, tiny_tokenizer, {"max_length": 8}, build) == ([1], False)
    assert cached(data, tiny_tokenizer, {"max_length": 8}, build) == ([1], True)  # same: no tokenising
    assert cached(data, tiny_tokenizer, {"max_length": 9}, build) == ([2], False)  # a setting changed
    data.write_text('{"text": "hello there"}\n')
    assert cached(data, tiny_tokenizer, {"max_length": 8}, build) == ([3], False)  # the file changed
    other = tiny_tokenizer.__class__.from_pretrained(tiny_tokenizer.name_or_path)
    other.chat_template = "{{ messages }}"
    assert cached(data, other, {"max_length": 8}, build) == ([4], False)  # the tokenizer changed
    copy = tmp_path / "copy.jsonl"
    copy.write_bytes(data.read_bytes())
    assert cached(copy, tiny_tokenizer, {"max_length": 8}, build) == ([5], False)  # rows name their file
    assert len(calls) == 5


def test_a_broken_entry_is_rebuilt(tmp_path: Path, tiny_tokenizer) -> None:  # noqa: ANN001
    import os

    data = tmp_path / "rows.jsonl"
    data.write_text('{"text": "x"}\n')
    cached(data, tiny_tokenizer, {}, lambda: "first")
    for entry in (Path(os.environ["TUNELAB_HOME"]) / "tokenized").glob("*.pkl"):
        entry.write_bytes(b"not a pickle")
    assert cached(data, tiny_tokenizer, {}, lambda: "again") == ("again", False)


def test_train_reuses_tokenised_rows(tiny_model: Path, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """A second run on the same file does not tokenise it again, and trains the same."""
    import tunelab.recipes.sft as sft
    from tests.helpers import train_conversations as _train

    first = _train(tiny_model, tmp_path, "first", "train.batch_size=2", "train.max_steps=2")
    calls: list[str] = []
    real = sft.encode_loaded
    monkeypatch.setattr(sft, "encode_loaded", lambda *a, **k: calls.append("x") or real(*a, **k))
    second = _train(tiny_model, tmp_path, "second", "train.batch_size=2", "train.max_steps=2")
    assert calls == []
    assert [r["loss"] for r in second] == [r["loss"] for r in first]
    _train(tiny_model, tmp_path, "no-cache", "train.batch_size=2", "train.max_steps=2", "data.cache=false")
    assert calls == ["x"]
