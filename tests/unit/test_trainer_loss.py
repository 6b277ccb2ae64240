"""causal_lm_loss invariants on the tiny model: the label-only path is the plain path (loss and gradients),
the loss is normalised by the label tokens of the whole accumulated batch, and the trainer agrees."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tunelab.data.records import Record
from tunelab.data.templates import IGNORE, encode_record
from tunelab.training.collate import PadCollator
from tunelab.training.trainer import causal_lm_loss, supports_label_only_logits

CONVERSATIONS = [
    ("hello", "the quick brown fox jumps over the lazy dog"),
    ("where is my card", "my card has not arrived yet"),
    ("how do I reset my password", "reset it from the app please"),
    ("what is the capital of France", "Paris"),
]


def _rows(tokenizer) -> list[dict]:  # noqa: ANN001
    """Rows of different lengths, loss on the assistant reply only (prompt tokens carry IGNORE)."""
    out = []
    for user, reply in CONVERSATIONS:
        rec = Record("t:1", "chat", messages=[{"role": "user", "content": user},
                                              {"role": "assistant", "content": reply}])
        enc = encode_record(rec, tokenizer)
        out.append({"input_ids": enc.input_ids, "labels": enc.labels})
    return out


@pytest.fixture(scope="module")
def rows(tiny_tokenizer) -> list[dict]:  # noqa: ANN001
    return _rows(tiny_tokenizer)


@pytest.fixture(scope="module")
def collate(tiny_tokenizer) -> PadCollator:  # noqa: ANN001
    return PadCollator(tiny_tokenizer.pad_token_id)


def _base(tiny_model: Path):  # noqa: ANN202
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32)
    model.eval()  # no dropout anywhere: both paths must see the same function
    return model


def _lora(tiny_model: Path):  # noqa: ANN202
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    # init_lora_weights=False: B is random too, so that A and B both get non-zero gradients
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear",
                     init_lora_weights=False, task_type="CAUSAL_LM")
    model = get_peft_model(_base(tiny_model), cfg)
    model.eval()
    return model


def _loss_and_grads(model, batches, num_items, label_only) -> tuple[float, dict[str, torch.Tensor]]:  # noqa: ANN001
    model.zero_grad(set_to_none=True)
    total = 0.0
    for batch in batches:
        loss = causal_lm_loss(model, batch, num_items, label_only)
        loss.backward()
        total += loss.item()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()
             if p.requires_grad and p.grad is not None}
    return total, grads


def _assert_grads_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys() and a
    nonzero = 0
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
        nonzero += bool(a[name].abs().sum() > 0)
    assert nonzero >= len(a) // 2, "most trainable tensors should get a gradient"


def _label_tokens(batch: dict[str, torch.Tensor]) -> int:
    return int((batch["labels"][:, 1:] != IGNORE).sum())


def test_tiny_model_takes_the_label_only_path(tiny_model: Path) -> None:
    assert supports_label_only_logits(_base(tiny_model))
    assert supports_label_only_logits(_lora(tiny_model))


def test_label_only_logits_only_at_label_positions(tiny_model: Path, rows, collate) -> None:  # noqa: ANN001
    model = _lora(tiny_model)
    batch = collate(rows)
    seen: list[tuple[int, ...]] = []
    head = model.get_base_model().get_output_embeddings()
    hook = head.register_forward_hook(lambda mod, args, out: seen.append(tuple(out.shape)))
    try:
        causal_lm_loss(model, batch, None, label_only=True)
    finally:
        hook.remove()
    assert seen == [(_label_tokens(batch), head.out_features)]  # [N label tokens, V], never [B, T, V]


@pytest.mark.parametrize("wrap", ["lora", "full"])
def test_label_only_equals_plain_path(tiny_model: Path, rows, collate, wrap: str) -> None:  # noqa: ANN001
    model = _lora(tiny_model) if wrap == "lora" else _base(tiny_model).requires_grad_(True)
    batch = collate(rows)
    for num_items in (None, _label_tokens(batch) + 7):
        plain, g_plain = _loss_and_grads(model, [batch], num_items, label_only=False)
        fast, g_fast = _loss_and_grads(model, [batch], num_items, label_only=True)
        assert fast == pytest.approx(plain, rel=1e-5)
        _assert_grads_close(g_fast, g_plain)
    if wrap == "lora":
        assert all("lora_" in n for n in g_fast), "only the adapter is trainable"


@pytest.mark.parametrize("label_only", [True, False])
def test_loss_is_mean_token_cross_entropy(tiny_model: Path, rows, collate, label_only: bool) -> None:  # noqa: ANN001
    """num_items=None: the mean over the batch's label tokens, exactly what the HF model's own loss is."""
    model = _base(tiny_model)
    batch = collate(rows)
    with torch.no_grad():
        ours = causal_lm_loss(model, batch, None, label_only).item()
        ref = model(**batch).loss.item()
    assert ours == pytest.approx(ref, rel=1e-5)


@pytest.mark.parametrize("label_only", [True, False])
def test_grad_accumulation_matches_one_big_batch(tiny_model: Path, rows, collate, label_only: bool) -> None:  # noqa: ANN001
    """1 batch of 4 == 2 accumulated batches of 2 (each padded on its own), when num_items is the label
    count of the whole accumulated batch."""
    model = _lora(tiny_model)
    big = collate(rows)
    halves = [collate(rows[:2]), collate(rows[2:])]
    n = _label_tokens(big)
    assert n == sum(_label_tokens(h) for h in halves)
    assert min(h["input_ids"].shape[1] for h in halves) < big["input_ids"].shape[1]  # padding differs
    one, g_one = _loss_and_grads(model, [big], n, label_only)
    acc, g_acc = _loss_and_grads(model, halves, n, label_only)
    assert acc == pytest.approx(one, rel=1e-5)
    _assert_grads_close(g_acc, g_one)
    # averaging per-micro-batch means would not match (rows differ in label count): the normalisation
    # by the whole batch's label tokens is what makes them equal
    naive = sum(causal_lm_loss(model, h, None, label_only).item() for h in halves) / 2
    assert abs(naive - one) > 1e-3 > abs(acc - one) * 100


# --- the trainer: what it passes as num_items, and accumulation end to end -------------------------

def _write_chat(path: Path) -> Path:
    lines = [json.dumps({"messages": [{"role": "user", "content": u}, {"role": "assistant", "content": a}]})
             for u, a in CONVERSATIONS]
    path.write_text("\n".join(lines) + "\n")
    return path


def _train(tiny_model: Path, tmp_path: Path, name: str, *extra: str) -> list[dict]:
    import tunelab

    data = _write_chat(tmp_path / "chat.jsonl")
    cfg = tunelab.load_config(None, [
        f"name={name}", f"output_dir={tmp_path / 'runs'}", f"model.base={tiny_model}", f"data.train={data}",
        "data.val_fraction=0", "peft.dropout=0", "train.group_by_length=false", "train.warmup_ratio=0",
        "train.learning_rate=1e-2", "train.lr_scheduler=constant", "train.threads=1", "model.precision=fp32",
        *extra])
    result = tunelab.train(cfg)
    assert result.status == "completed"
    return [json.loads(ln) for ln in (result.run_dir / "metrics.jsonl").read_text().splitlines()
            if "loss" in json.loads(ln)]


def test_trainer_logs_mean_token_loss(tiny_model: Path, tmp_path: Path, rows, collate) -> None:  # noqa: ANN001
    """Step 1 of a run on all four rows logs the base model's mean token loss (LoRA starts as a no-op):
    the trainer's num_items counts the shifted labels, as causal_lm_loss does."""
    logged = _train(tiny_model, tmp_path, "one-batch", "train.batch_size=4", "train.max_steps=1")
    with torch.no_grad():
        ref = _base(tiny_model)(**collate(rows)).loss.item()
    assert logged[0]["step"] == 1
    assert logged[0]["loss"] == pytest.approx(ref, rel=1e-5)


def test_trainer_grad_accumulation(tiny_model: Path, tmp_path: Path) -> None:
    """batch 4 x accumulate 1 and batch 2 x accumulate 2: same logged loss and gradient norm per step."""
    one = _train(tiny_model, tmp_path, "bs4", "train.batch_size=4", "train.grad_accum=1", "train.max_steps=3")
    acc = _train(tiny_model, tmp_path, "bs2x2", "train.batch_size=2", "train.grad_accum=2",
                 "train.max_steps=3")
    assert [r["step"] for r in one] == [r["step"] for r in acc] == [1, 2, 3]
    for a, b in zip(one, acc, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-3)
    assert one[-1]["loss"] < one[0]["loss"]


def test_trainer_label_only_switch_trains_the_same(tiny_model: Path, tmp_path: Path) -> None:
    """train.label_only_logits on (default) and off: the same run, step by step."""
    on = _train(tiny_model, tmp_path, "label-only", "train.batch_size=2", "train.max_steps=3")
    off = _train(tiny_model, tmp_path, "plain", "train.batch_size=2", "train.max_steps=3",
                 "train.label_only_logits=false")
    assert [r["step"] for r in on] == [r["step"] for r in off] == [1, 2, 3]
    for a, b in zip(on, off, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
