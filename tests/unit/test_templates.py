"""Records -> tokens with loss only where the model should learn; data report over encoded rows."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import CHATS, write_jsonl
from tunelab.data.records import Record, RowError
from tunelab.data.report import histogram, prepare
from tunelab.data.templates import (
    DEFAULT_CLASSIFY_PROMPT,
    IGNORE,
    Encoded,
    assistant_spans,
    classification_messages,
    encode_record,
    humanize,
    truncate,
)

CONVERSATION = [
    {"role": "system", "content": "you are a helpful assistant"},
    {"role": "user", "content": "where is my card"},
    {"role": "assistant", "content": "it has arrived"},
    {"role": "user", "content": "thanks"},
    {"role": "assistant", "content": "you are welcome"},
]


def chat(messages: list[dict[str, Any]]) -> Record:
    return Record("f.jsonl:1", "chat", messages=messages)


def trained_text(tok: Any, enc: Encoded) -> str:
    return tok.decode([lab for lab in enc.labels if lab != IGNORE])


def check_aligned(enc: Encoded) -> None:
    assert len(enc.labels) == len(enc.input_ids)
    assert all(lab in (IGNORE, tid) for lab, tid in zip(enc.labels, enc.input_ids, strict=True))


# --- chat -----------------------------------------------------------------------------------------


def test_multi_turn_trains_exactly_the_assistant_replies(tiny_tokenizer: Any) -> None:
    enc = encode_record(chat(CONVERSATION), tiny_tokenizer)
    check_aligned(enc)
    assert trained_text(tiny_tokenizer, enc) == "it has arrived<|im_end|>you are welcome<|im_end|>"
    rendered = tiny_tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert tiny_tokenizer.decode(enc.input_ids) == rendered  # the whole conversation is the input


def test_trained_tokens_are_contiguous_per_reply(tiny_tokenizer: Any) -> None:
    enc = encode_record(chat(CONVERSATION), tiny_tokenizer)
    runs: list[list[int]] = []
    prev = IGNORE
    for lab in enc.labels:
        if lab != IGNORE:
            if prev == IGNORE:
                runs.append([])
            runs[-1].append(lab)
        prev = lab
    replies = [tiny_tokenizer.decode(r) for r in runs]
    assert replies == ["it has arrived<|im_end|>", "you are welcome<|im_end|>"]


def test_assistant_spans_cover_content_and_end_of_turn(tiny_tokenizer: Any) -> None:
    full, spans = assistant_spans(tiny_tokenizer, CONVERSATION)
    assert [full[s:e] for s, e in spans] == ["it has arrived<|im_end|>", "you are welcome<|im_end|>"]


def test_weight_zero_reply_is_not_trained(tiny_tokenizer: Any) -> None:
    messages = [dict(m) for m in CONVERSATION]
    messages[2]["weight"] = 0
    enc = encode_record(chat(messages), tiny_tokenizer)
    check_aligned(enc)
    assert trained_text(tiny_tokenizer, enc) == "you are welcome<|im_end|>"
    messages[4]["weight"] = 0
    enc = encode_record(chat(messages), tiny_tokenizer)
    assert enc.trained_tokens == 0


def test_weight_one_is_the_default(tiny_tokenizer: Any) -> None:
    messages = [dict(m) for m in CONVERSATION]
    messages[2]["weight"] = 1
    enc = encode_record(chat(messages), tiny_tokenizer)
    assert trained_text(tiny_tokenizer, enc) == "it has arrived<|im_end|>you are welcome<|im_end|>"


def test_train_on_all_trains_every_token(tiny_tokenizer: Any) -> None:
    enc = encode_record(chat(CONVERSATION), tiny_tokenizer, train_on="all")
    assert enc.labels == enc.input_ids
    assert enc.trained_tokens == len(enc.input_ids)


def test_first_message_from_assistant(tiny_tokenizer: Any) -> None:
    msgs = [{"role": "assistant", "content": "how can I help"}, {"role": "user", "content": "my card"},
            {"role": "assistant", "content": "it has arrived"}]
    enc = encode_record(chat(msgs), tiny_tokenizer)
    check_aligned(enc)
    assert trained_text(tiny_tokenizer, enc) == "how can I help<|im_end|>it has arrived<|im_end|>"


def test_tool_turns_are_not_trained(tiny_tokenizer: Any) -> None:
    msgs = [{"role": "user", "content": "rate?"}, {"role": "assistant", "content": "checking"},
            {"role": "tool", "content": "1.1"}, {"role": "assistant", "content": "it is 1.1"}]
    enc = encode_record(chat(msgs), tiny_tokenizer)
    assert trained_text(tiny_tokenizer, enc) == "checking<|im_end|>it is 1.1<|im_end|>"


# --- completion, text, classification -------------------------------------------------------------


def test_completion_trains_only_completion_and_eos(tiny_tokenizer: Any) -> None:
    rec = Record("f:1", "completion", prompt="the capital of France is", completion=" Paris")
    enc = encode_record(rec, tiny_tokenizer)
    check_aligned(enc)
    assert trained_text(tiny_tokenizer, enc) == " Paris<|im_end|>"
    assert tiny_tokenizer.decode(enc.input_ids) == "the capital of France is Paris<|im_end|>"
    n_prompt = len(tiny_tokenizer("the capital of France is", add_special_tokens=False)["input_ids"])
    assert enc.labels[:n_prompt] == [IGNORE] * n_prompt
    assert IGNORE not in enc.labels[n_prompt:]


def test_completion_train_on_all_and_empty_prompt(tiny_tokenizer: Any) -> None:
    rec = Record("f:1", "completion", prompt="the capital of France is", completion=" Paris")
    enc = encode_record(rec, tiny_tokenizer, train_on="all")
    assert enc.labels == enc.input_ids
    enc = encode_record(Record("f:1", "completion", completion="hello world"), tiny_tokenizer)
    assert trained_text(tiny_tokenizer, enc) == "hello world<|im_end|>"
    assert enc.labels == enc.input_ids


def test_text_trains_everything_plus_eos(tiny_tokenizer: Any) -> None:
    enc = encode_record(Record("f:1", "text", text="the quick brown fox"), tiny_tokenizer)
    assert enc.labels == enc.input_ids
    assert tiny_tokenizer.decode(enc.input_ids) == "the quick brown fox<|im_end|>"


def test_classification_trains_only_the_label(tiny_tokenizer: Any) -> None:
    rec = Record("f:2", "classification", text="my card has not arrived", label="card_arrival")
    enc = encode_record(rec, tiny_tokenizer, label_text=humanize(rec.label))
    check_aligned(enc)
    assert trained_text(tiny_tokenizer, enc) == "card arrival<|im_end|>"
    rendered = tiny_tokenizer.decode(enc.input_ids)
    assert DEFAULT_CLASSIFY_PROMPT in rendered and "my card has not arrived" in rendered
    enc = encode_record(rec, tiny_tokenizer, system_prompt="Pick the intent.")
    assert trained_text(tiny_tokenizer, enc) == "card_arrival<|im_end|>"  # raw label without label_text
    assert "Pick the intent." in tiny_tokenizer.decode(enc.input_ids)


def test_classification_messages_and_humanize() -> None:
    assert humanize("card_arrival") == "card arrival"
    assert humanize("lost_or_stolen_card ") == "lost or stolen card"
    msgs = classification_messages("text", None, None)
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert msgs[0]["content"] == DEFAULT_CLASSIFY_PROMPT
    msgs = classification_messages("text", "lbl", "sys")
    assert msgs == [{"role": "system", "content": "sys"}, {"role": "user", "content": "text"},
                    {"role": "assistant", "content": "lbl"}]


# --- truncation -----------------------------------------------------------------------------------


def test_truncate_keeps_labels_aligned(tiny_tokenizer: Any) -> None:
    enc = encode_record(chat(CONVERSATION), tiny_tokenizer)
    n = len(enc.input_ids)
    for max_length in (1, n // 2, n - 1):
        cut = truncate(enc, max_length)
        assert cut.truncated
        assert cut.input_ids == enc.input_ids[:max_length]
        assert cut.labels == enc.labels[:max_length]
        check_aligned(cut)
    assert truncate(enc, n) is enc and truncate(enc, n + 10) is enc


def test_truncate_leaves_class_index_labels_alone() -> None:
    cut = truncate(Encoded([1, 2, 3, 4], 7), 2)
    assert cut.input_ids == [1, 2] and cut.labels == 7 and cut.trained_tokens == 0


# --- prepare(): encoding plus the data report -----------------------------------------------------


def test_prepare_counts_tokens_duplicates_and_errors(tmp_path: Path, tiny_tokenizer: Any) -> None:
    p = write_jsonl(tmp_path / "d.jsonl", [
        {"prompt": "2+2=", "completion": " 4"},
        {"prompt": "the capital of France is", "completion": " Paris"},
        {"prompt": "2+2=", "completion": " 4"},
        {"prompt": "x"},
    ])
    examples, rep = prepare(p, lambda r: encode_record(r, tiny_tokenizer), max_length=512)
    assert (rep.rows, rep.valid_rows, rep.duplicates) == (4, 3, 1)
    assert [e.where for e in rep.errors] == [f"{p}:4"]
    assert [(w.where, w.severity) for w in rep.warnings] == [(f"{p}:3", "warning")]
    assert f"duplicate of {p}:1" in rep.warnings[0].message
    encs = [encode_record(e.record, tiny_tokenizer) for e in examples]
    assert rep.completion_tokens == sum(e.trained_tokens for e in encs)
    assert rep.prompt_tokens == sum(len(e.input_ids) - e.trained_tokens for e in encs)
    assert rep.est_tokens_per_epoch == rep.prompt_tokens + rep.completion_tokens
    assert sum(c for _, _, c in rep.length_histogram) == 3
    assert not rep.ok


def test_prepare_truncates_or_drops_long_rows(tmp_path: Path, tiny_tokenizer: Any) -> None:
    p = write_jsonl(tmp_path / "d.jsonl", [
        {"text": "hi"},
        {"text": "the quick brown fox jumps over the lazy dog " * 3},
    ])
    encode = lambda r: encode_record(r, tiny_tokenizer)  # noqa: E731
    examples, rep = prepare(p, encode, max_length=8)
    assert rep.ok and rep.truncated == 1 and rep.dropped_too_long == 0
    assert max(len(e.input_ids) for e in examples) == 8
    assert [w.where for w in rep.warnings] == [f"{p}:2"] and "truncated" in rep.warnings[0].message
    examples, rep = prepare(p, encode, max_length=8, too_long="drop")
    assert rep.dropped_too_long == 1 and rep.valid_rows == 1
    assert [e.record.where for e in examples] == [f"{p}:1"]


def test_prepare_drops_rows_with_nothing_left_to_learn(tmp_path: Path, tiny_tokenizer: Any) -> None:
    p = write_jsonl(tmp_path / "d.jsonl", [{"messages": CONVERSATION}])
    examples, rep = prepare(p, lambda r: encode_record(r, tiny_tokenizer), max_length=4)
    assert not examples and rep.valid_rows == 0 and rep.truncated == 1 and rep.dropped_too_long == 1
    assert any("nothing left to learn" in w.message for w in rep.warnings)


def test_prepare_reports_encoder_row_errors(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}])

    def encode(rec: Record) -> Encoded:
        if rec.label == "y":
            raise RowError("label 'y' is not in classification.labels", field="label")
        return Encoded([1, 2], 0)

    examples, rep = prepare(p, encode)
    assert [e.record.where for e in examples] == [f"{p}:1"]
    assert [(e.where, e.field) for e in rep.errors] == [(f"{p}:2", "label")]
    assert rep.labels == {"x": 1, "y": 1}


def test_prepare_without_encoder_only_validates(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "d.jsonl", [{"text": "a"}, {"text": "a"}])
    examples, rep = prepare(p, None)
    assert len(examples) == 2 and rep.duplicates == 1 and rep.est_tokens_per_epoch == 0


@pytest.mark.parametrize("lengths", [[5], [1, 2, 3, 100], list(range(10, 50)), [7, 7, 7]])
def test_histogram_counts_every_length(lengths: list[int]) -> None:
    bins = histogram(lengths)
    assert sum(c for _, _, c in bins) == len(lengths)
    assert bins[0][0] == min(lengths) and bins[-1][1] >= max(lengths)
    assert len(bins) <= 8
    for lo, hi, c in bins:
        assert c == sum(lo <= n <= hi for n in lengths)
    assert histogram([]) == []


def test_fallback_mask_finds_the_reply_after_the_prompt(tiny_tokenizer) -> None:  # noqa: ANN001
    """A template whose generation prompt differs from how it renders replies takes the fallback path;
    the reply text also appears in the user turn, and only the reply itself must be trained."""
    import copy

    from tunelab.data.records import Record
    from tunelab.data.templates import IGNORE, encode_record

    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ 'assistant says:' }}{% endif %}")
    rec = Record("x:1", "chat", messages=[{"role": "user", "content": "I am not positive"},
                                          {"role": "assistant", "content": "positive"}])
    enc = encode_record(rec, tok)
    trained = tok.decode([t for t, lab in zip(enc.input_ids, enc.labels, strict=True) if lab != IGNORE])
    assert trained == "positive<|im_end|>"


# --- regression: rows without tools ---------------------------------------------------------------

FALLBACK_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'assistant says:' }}{% endif %}")
# sha256(json([input_ids, labels]))[:16] of each row below, as tunelab encoded them before function-calling rows
# were supported (the same for the template that takes the fallback path). Regenerate only if the tiny tokenizer
# in tests/helpers.py changes.
BEFORE_TOOLS = {
    "conversation": "3b7e78202bc6c184", "weight0": "f5f6e82ba13abc17", "train_on_all": "fe9af936ad4d8b87",
    "first_assistant": "4b8d1c9e3fafa054", "tool_role": "7e3782746d3b4a5d", "classification": "a0c3f79d857e0584",
    "completion": "3530fa5953d7e9df", "chats0": "ac659c56e021e4ed", "chats1": "bc699f9a7819041f",
    "chats2": "7f6d8f88be412065", "chats3": "5d775eb56310be2b", "chats4": "80ade5a364356586",
}


def _regression_rows() -> list[tuple[str, Record, dict[str, Any]]]:
    weighted = [dict(m) for m in CONVERSATION]
    weighted[2]["weight"] = 0
    rows = [
        ("conversation", chat(CONVERSATION), {}),
        ("weight0", chat(weighted), {}),
        ("train_on_all", chat(CONVERSATION), {"train_on": "all"}),
        ("first_assistant", chat([{"role": "assistant", "content": "how can I help"},
                                  {"role": "user", "content": "my card"},
                                  {"role": "assistant", "content": "it has arrived"}]), {}),
        ("tool_role", chat([{"role": "user", "content": "rate?"}, {"role": "assistant", "content": "checking"},
                            {"role": "tool", "content": "1.1"}, {"role": "assistant", "content": "it is 1.1"}]), {}),
        ("classification", Record("f:2", "classification", text="my card has not arrived", label="card_arrival"),
         {"label_text": "card arrival"}),
        ("completion", Record("f:1", "completion", prompt="the capital of France is", completion=" Paris"), {}),
    ]
    rows += [(f"chats{i}", chat([{"role": "user", "content": u}, {"role": "assistant", "content": a}]), {})
             for i, (u, a) in enumerate(CHATS)]
    return rows


def test_rows_without_tools_encode_exactly_as_before_function_calling(tiny_tokenizer: Any) -> None:
    fallback = copy.deepcopy(tiny_tokenizer)
    fallback.chat_template = FALLBACK_TEMPLATE
    for tok in (tiny_tokenizer, fallback):
        for name, rec, kwargs in _regression_rows():
            if tok is fallback and rec.kind != "chat":
                continue
            enc = encode_record(rec, tok, **kwargs)
            digest = hashlib.sha256(json.dumps([enc.input_ids, enc.labels]).encode()).hexdigest()[:16]
            assert digest == BEFORE_TOOLS[name], name
