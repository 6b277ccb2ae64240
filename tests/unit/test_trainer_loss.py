"""causal_lm_loss invariants on the tiny model: the label-only path is the plain path (loss and gradients),
the loss is normalised by the label tokens of the whole accumulated batch, and the trainer agrees."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers import (
    assert_grads_close,
    conversation_rows,
    label_tokens,
    loss_and_grads,
    tiny_base,
    tiny_lora,
    train_conversations,
)
from tunelab.training.collate import PadCollator
from tunelab.training.trainer import causal_lm_loss, supports_label_only_logits


@pytest.fixture(scope="module")
def rows(tiny_tokenizer) -> list[dict]:  # noqa: ANN001
    return conversation_rows(tiny_tokenizer)


@pytest.fixture(scope="module")
def collate(tiny_tokenizer) -> PadCollator:  # noqa: ANN001
    return PadCollator(tiny_tokenizer.pad_token_id)


def test_tiny_model_takes_the_label_only_path(tiny_model: Path) -> None:
    assert supports_label_only_logits(tiny_base(tiny_model))
    assert supports_label_only_logits(tiny_lora(tiny_model))


def test_label_only_logits_only_at_label_positions(tiny_model: Path, rows, collate) -> None:  # noqa: ANN001
    model = tiny_lora(tiny_model)
    batch = collate(rows)
    seen: list[tuple[int, ...]] = []
    head = model.get_base_model().get_output_embeddings()
    hook = head.register_forward_hook(lambda mod, args, out: seen.append(tuple(out.shape)))
    try:
        causal_lm_loss(model, batch, None, label_only=True)
    finally:
        hook.remove()
    assert seen == [(label_tokens(batch), head.out_features)]  # [N label tokens, V], never [B, T, V]


@pytest.mark.parametrize("wrap", ["lora", "full"])
def test_label_only_equals_plain_path(tiny_model: Path, rows, collate, wrap: str) -> None:  # noqa: ANN001
    model = tiny_lora(tiny_model) if wrap == "lora" else tiny_base(tiny_model).requires_grad_(True)
    batch = collate(rows)
    for num_items in (None, label_tokens(batch) + 7):
        plain, g_plain = loss_and_grads(model, [batch], num_items, label_only=False)
        fast, g_fast = loss_and_grads(model, [batch], num_items, label_only=True)
        assert fast == pytest.approx(plain, rel=1e-5)
        assert_grads_close(g_fast, g_plain)
    if wrap == "lora":
        assert all("lora_" in n for n in g_fast), "only the adapter is trainable"


@pytest.mark.parametrize("label_only", [True, False])
def test_loss_is_mean_token_cross_entropy(tiny_model: Path, rows, collate, label_only: bool) -> None:  # noqa: ANN001
    """num_items=None: the mean over the batch's label tokens, exactly what the HF model's own loss is."""
    model = tiny_base(tiny_model)
    batch = collate(rows)
    with torch.no_grad():
        ours = causal_lm_loss(model, batch, None, label_only).item()
        ref = model(**batch).loss.item()
    assert ours == pytest.approx(ref, rel=1e-5)


@pytest.mark.parametrize("label_only", [True, False])
def test_grad_accumulation_matches_one_big_batch(tiny_model: Path, rows, collate, label_only: bool) -> None:  # noqa: ANN001
    """1 batch of 4 == 2 accumulated batches of 2 (each padded on its own), when num_items is the label
    count of the whole accumulated batch."""
    model = tiny_lora(tiny_model)
    big = collate(rows)
    halves = [collate(rows[:2]), collate(rows[2:])]
    n = label_tokens(big)
    assert n == sum(label_tokens(h) for h in halves)
    assert min(h["input_ids"].shape[1] for h in halves) < big["input_ids"].shape[1]  # padding differs
    one, g_one = loss_and_grads(model, [big], n, label_only)
    acc, g_acc = loss_and_grads(model, halves, n, label_only)
    assert acc == pytest.approx(one, rel=1e-5)
    assert_grads_close(g_acc, g_one)
    # averaging per-micro-batch means would not match (rows differ in label count): the normalisation
    # by the whole batch's label tokens is what makes them equal
    naive = sum(causal_lm_loss(model, h, None, label_only).item() for h in halves) / 2
    assert abs(naive - one) > 1e-3 > abs(acc - one) * 100


# --- the trainer: what it passes as num_items, and accumulation end to end -------------------------

def test_trainer_logs_mean_token_loss(tiny_model: Path, tmp_path: Path, rows, collate) -> None:  # noqa: ANN001
    """Step 1 of a run on all four rows logs the base model's mean token loss (LoRA starts as a no-op):
    the trainer's num_items counts the shifted labels, as causal_lm_loss does."""
    logged = train_conversations(tiny_model, tmp_path, "one-batch", "train.batch_size=4", "train.max_steps=1")
    with torch.no_grad():
        ref = tiny_base(tiny_model)(**collate(rows)).loss.item()
    assert logged[0]["step"] == 1
    assert logged[0]["loss"] == pytest.approx(ref, rel=1e-5)


def test_trainer_grad_accumulation(tiny_model: Path, tmp_path: Path) -> None:
    """batch 4 x accumulate 1 and batch 2 x accumulate 2: same logged loss and gradient norm per step."""
    one = train_conversations(tiny_model, tmp_path, "bs4", "train.batch_size=4", "train.grad_accum=1",
                              "train.max_steps=3")
    acc = train_conversations(tiny_model, tmp_path, "bs2x2", "train.batch_size=2", "train.grad_accum=2",
                              "train.max_steps=3")
    assert [r["step"] for r in one] == [r["step"] for r in acc] == [1, 2, 3]
    for a, b in zip(one, acc, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-3)
    assert one[-1]["loss"] < one[0]["loss"]


def test_trainer_label_only_switch_trains_the_same(tiny_model: Path, tmp_path: Path) -> None:
    """train.label_only_logits on (default) and off: the same run, step by step."""
    on = train_conversations(tiny_model, tmp_path, "label-only", "train.batch_size=2", "train.max_steps=3")
    off = train_conversations(tiny_model, tmp_path, "plain", "train.batch_size=2", "train.max_steps=3",
                 "train.label_only_logits=false")
    assert [r["step"] for r in on] == [r["step"] for r in off] == [1, 2, 3]
    for a, b in zip(on, off, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
