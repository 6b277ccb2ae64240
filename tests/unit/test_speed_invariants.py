"""Every speed path against the plain one, on the tiny model: chunked LM head + cross-entropy, padding-free
packing with per-row attention, and both switched on in a real run through the trainer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers import (
    assert_grads_close,
    chat_and_text_rows,
    label_tokens,
    loss_and_grads,
    tiny_base,
    tiny_lora,
    train_conversations,
)
from tunelab.data.templates import IGNORE
from tunelab.training.chunked_ce import linear_cross_entropy
from tunelab.training.collate import PadCollator
from tunelab.training.packing import PackCollator, use_varlen_attention
from tunelab.training.trainer import causal_lm_loss


def _grads(model, batch, num_items=None, label_only=True, chunk=0) -> tuple[float, dict[str, torch.Tensor]]:  # noqa: ANN001
    model.zero_grad(set_to_none=True)
    loss = causal_lm_loss(model, batch, num_items, label_only, chunk)
    loss.backward()
    return loss.item(), {n: p.grad.detach().clone() for n, p in model.named_parameters()
                         if p.requires_grad and p.grad is not None}


@pytest.fixture(scope="module")
def rows(tiny_tokenizer) -> list[dict]:  # noqa: ANN001
    return chat_and_text_rows(tiny_tokenizer)


# --- chunked LM head + cross-entropy ---------------------------------------------------------------

@pytest.mark.parametrize("wrap", ["lora", "full"])
@pytest.mark.parametrize("chunk", [1, 5, 10_000])
def test_chunked_loss_equals_plain_path(tiny_model: Path, tiny_tokenizer, rows, wrap: str, chunk: int) -> None:  # noqa: ANN001
    """Same loss and gradients (LoRA weights, or every weight including the tied head) in any chunk size."""
    model = tiny_lora(tiny_model) if wrap == "lora" else tiny_base(tiny_model).requires_grad_(True)
    batch = PadCollator(tiny_tokenizer.pad_token_id)(rows)
    for num_items in (None, label_tokens(batch) + 3):
        plain, g_plain = _grads(model, batch, num_items, label_only=False)
        fast, g_fast = _grads(model, batch, num_items, chunk=chunk)
        assert fast == pytest.approx(plain, rel=1e-5)
        assert_grads_close(g_fast, g_plain)
    if wrap == "full":
        assert "model.embed_tokens.weight" in g_fast or "lm_head.weight" in g_fast  # the head got its gradient


def test_chunked_loss_under_bf16_autocast(tiny_model: Path, tiny_tokenizer, rows) -> None:  # noqa: ANN001
    """Under autocast the chunks run the head in bf16 as the plain path does: bf16-close, not exact."""
    model = tiny_lora(tiny_model)
    batch = PadCollator(tiny_tokenizer.pad_token_id)(rows)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain, g_plain = _grads(model, batch)
        fast, g_fast = _grads(model, batch, chunk=4)
    assert fast == pytest.approx(plain, rel=1e-3)
    for name in g_plain:
        torch.testing.assert_close(g_fast[name], g_plain[name], rtol=2e-2, atol=2e-3)


def test_chunked_loss_without_grad_is_the_value_only() -> None:
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50, bias=True)
    hidden, labels = torch.randn(13, 8), torch.randint(0, 50, (13,))
    ref = torch.nn.functional.cross_entropy(head(hidden), labels, reduction="sum")
    with torch.no_grad():
        got = linear_cross_entropy(hidden, head, labels, chunk=4)
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)
    grads = torch.autograd.grad(linear_cross_entropy(hidden.requires_grad_(), head, labels, chunk=4),
                                [hidden, head.weight, head.bias])
    refs = torch.autograd.grad(torch.nn.functional.cross_entropy(head(hidden), labels, reduction="sum"),
                               [hidden, head.weight, head.bias])
    for g, r in zip(grads, refs, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)


# --- padding-free packing ---------------------------------------------------------------------------

def test_pack_collator_layout(rows) -> None:  # noqa: ANN001
    batch = PackCollator()(rows[:2])
    n0, n1 = len(rows[0]["input_ids"]), len(rows[1]["input_ids"])
    assert batch["input_ids"].shape == (1, n0 + n1)
    assert batch["cu_seq_lens_q"].tolist() == [0, n0, n0 + n1]
    assert batch["position_ids"][0].tolist() == list(range(n0)) + list(range(n1))
    assert batch["labels"][0, n0].item() == IGNORE  # nothing predicts a row's first token from the row before


@pytest.mark.parametrize("label_only", [True, False])
@pytest.mark.parametrize("attention", ["matmul", "sdpa"])
def test_packed_batch_equals_rows_run_alone(tiny_model: Path, tiny_tokenizer, rows, label_only: bool,  # noqa: ANN001
                                            attention: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The loss of a packed batch is the loss of its rows padded together, and the sum of each row run alone;
    gradients too, through both per-row attentions (matmuls for short rows, sdpa for long ones)."""
    import tunelab.training.packing as packing

    monkeypatch.setattr(packing, "EAGER_MAX_LEN", 10_000 if attention == "matmul" else 0)
    model = tiny_lora(tiny_model)
    padded = PadCollator(tiny_tokenizer.pad_token_id)(rows)
    n = label_tokens(padded)
    ref, g_ref = _grads(model, padded, n, label_only)
    alone = sum(causal_lm_loss(model, PadCollator(tiny_tokenizer.pad_token_id)([r]), n, label_only).item()
                for r in rows)
    use_varlen_attention(model)
    packed = PackCollator()(rows)
    assert label_tokens(packed) == n
    got, g_got = _grads(model, packed, n, label_only)
    assert got == pytest.approx(ref, rel=1e-5) and got == pytest.approx(alone, rel=1e-5)
    assert_grads_close(g_got, g_ref)
    # ordinary (padded) batches still work on the switched model: evaluation and generation use them
    assert causal_lm_loss(model, padded, n, label_only).item() == pytest.approx(ref, rel=1e-5)


@pytest.mark.parametrize("lengths", [[7], [3, 9], [4, 4, 4], [1, 2, 30, 5, 5], [12, 3, 40, 8, 22, 5, 17, 9]])
def test_rows_attention_equals_attention_row_by_row(lengths: list[int]) -> None:
    """The padded batches of row_layout (two, of at least two rows, repeating a row where short) give each row's
    causal attention and gradients exactly as the row-by-row loop does, GQA included."""
    import tunelab.training.packing as packing

    torch.manual_seed(0)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    q, k, v = (torch.randn(1, h, sum(lengths), 8, requires_grad=True) for h in (6, 2, 2))
    module = torch.nn.Module()
    layout = packing.row_layout(cu)
    assert layout is not None and len(layout["gather"]) == 2 and all(len(g) >= 2 for g in layout["gather"])
    loop, _ = packing._varlen_attention(module, q, k, v, None, cu_seq_lens_q=cu)
    batched, _ = packing._varlen_attention(module, q, k, v, None, cu_seq_lens_q=cu, **{packing.ROWS: layout})
    assert batched.shape == loop.shape == (1, sum(lengths), 6, 8)
    torch.testing.assert_close(batched, loop)
    g = torch.randn_like(loop)
    for a, b in zip(torch.autograd.grad(batched, (q, k, v), g), torch.autograd.grad(loop, (q, k, v), g), strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(("heads", "groups"), [(6, 2), (4, 4), (9, 3), (8, 1)])
def test_matmul_attention_equals_sdpa(heads: int, groups: int) -> None:
    """The matmul attention (query heads grouped per shared key/value head, one longer query each) gives sdpa's
    causal grouped-query attention and its gradients, with or without an explicit scale."""
    import torch.nn.functional as F

    from tunelab.training.packing import _causal_attention

    torch.manual_seed(0)
    q, k, v = (torch.randn(3, h, 11, 8, dtype=torch.float64, requires_grad=True) for h in (heads, groups, groups))
    for scaling in (None, 0.3):
        got = _causal_attention(q, k, v, scaling)
        ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True, scale=scaling).transpose(1, 2)
        torch.testing.assert_close(got, ref)
        g = torch.randn_like(ref)
        for a, b in zip(torch.autograd.grad(got, (q, k, v), g), torch.autograd.grad(ref, (q, k, v), g), strict=True):
            torch.testing.assert_close(a, b)


def test_rows_too_long_for_matmul_attention_keep_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    import tunelab.training.packing as packing

    monkeypatch.setattr(packing, "EAGER_MAX_LEN", 10)
    assert packing.row_layout(torch.tensor([0, 5, 16])) is None
    assert packing.row_layout(torch.tensor([0, 5, 15])) is not None


def test_compiled_layers_serve_training_steps_only(tiny_model: Path, tiny_tokenizer, rows) -> None:  # noqa: ANN001
    """Compiled layers give the eager loss and gradients; calls without gradients (evaluation, generation) run
    the eager layers and compile nothing; undoing leaves the layers as they were."""
    from torch._dynamo.utils import counters

    from tunelab.training.compiled import compile_for_training

    model = tiny_lora(tiny_model)
    use_varlen_attention(model)
    packed = PackCollator()(rows)
    ref, g_ref = _grads(model, packed)
    before = counters["stats"]["unique_graphs"]
    undo = compile_for_training(model)
    got, g_got = _grads(model, packed)
    assert got == pytest.approx(ref, rel=1e-5)
    assert_grads_close(g_got, g_ref)
    frames = counters["stats"]["unique_graphs"]
    assert frames - before == 1  # one graph for every layer, the first one's included (its input needs a gradient)
    with torch.no_grad():
        assert causal_lm_loss(model, packed, None, True).item() == pytest.approx(ref, rel=1e-5)
        model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=3, do_sample=False)
    assert counters["stats"]["unique_graphs"] == frames
    undo()
    layers = model.get_base_model().get_decoder().layers
    assert all("forward" not in layer.__dict__ for layer in layers)
    assert not hasattr(model.get_base_model(), "_require_grads_hook")


def test_plain_sdpa_packing_leaks_across_rows(tiny_model: Path, rows) -> None:  # noqa: ANN001
    """Why the per-row attention exists: the same packed row through plain sdpa with one causal mask gives
    a different loss, because later rows attend to earlier ones."""
    model = tiny_lora(tiny_model)
    packed = PackCollator()(rows)
    leaky = {k: v for k, v in packed.items() if k != "cu_seq_lens_q"}
    with torch.no_grad():
        a = causal_lm_loss(model, leaky, None, True).item()
        use_varlen_attention(model)
        b = causal_lm_loss(model, packed, None, True).item()
    assert abs(a - b) > 1e-4


# --- the switches in a real run ---------------------------------------------------------------------

@pytest.mark.parametrize("switch", ["train.packing=true", "train.loss_chunk_tokens=0",
                                    "train.gradient_checkpointing=true", "train.compile=true"])
def test_speed_switches_train_the_same(tiny_model: Path, tmp_path: Path, switch: str) -> None:
    """A run with a speed path switched on/off logs the same loss and gradient norm at every step."""
    common = ("train.batch_size=2", "train.max_steps=3", "train.loss_chunk_tokens=3")
    ref = train_conversations(tiny_model, tmp_path, "ref", *common)
    other = train_conversations(tiny_model, tmp_path, "other", *common, switch)
    assert [r["step"] for r in ref] == [r["step"] for r in other] == [1, 2, 3]
    for a, b in zip(ref, other, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)


# --- micro-batches bounded in tokens ----------------------------------------------------------------

@pytest.mark.parametrize("packed", [False, True])
def test_split_by_tokens_pieces_add_up_to_the_batch(tiny_model: Path, tiny_tokenizer, rows, packed: bool) -> None:  # noqa: ANN001
    """Pieces of at most max_tokens tokens, covering every row once; their gradients (normalised by the
    whole batch's label count) sum to the whole batch's."""
    from tunelab.training.collate import split_by_tokens

    model = tiny_lora(tiny_model)
    if packed:
        use_varlen_attention(model)
    batch = (PackCollator() if packed else PadCollator(tiny_tokenizer.pad_token_id))(rows)
    n = label_tokens(batch)
    whole, g_whole = _grads(model, batch, n)
    longest = max(len(r["input_ids"]) for r in rows)
    pieces = split_by_tokens(batch, longest + 1)
    assert len(pieces) > 1 and all(p["input_ids"].numel() <= longest + 1 for p in pieces)
    assert sum(label_tokens(p) for p in pieces) == n
    total, grads = loss_and_grads(model, pieces, n, True)
    assert total == pytest.approx(whole, rel=1e-5)
    assert_grads_close(grads, g_whole)


def test_max_batch_tokens_trains_the_same(tiny_model: Path, tmp_path: Path) -> None:
    common = ("train.batch_size=4", "train.max_steps=3")
    ref = train_conversations(tiny_model, tmp_path, "whole", *common, "train.max_batch_tokens=null")
    split = train_conversations(tiny_model, tmp_path, "split", *common, "train.max_batch_tokens=20")
    for a, b in zip(ref, split, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)


# --- frozen weights held in bf16 ---------------------------------------------------------------------

@pytest.mark.skipif(not __import__("tunelab.device", fromlist=["x"]).cpu_has_bf16(),
                    reason="bf16 training needs a CPU with bf16 support")
def test_frozen_bf16_trains_the_same_and_restores_fp32(tiny_model: Path, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """Under bf16 autocast, frozen weights held in bf16 give the same steps as fp32 ones cast at every use;
    after training the model has the base's exact fp32 weights again."""
    from transformers import AutoModelForCausalLM

    from tunelab.training import frozen

    restored: list = []
    real = frozen.restore_fp32

    def spy(model, kept):  # noqa: ANN001, ANN202
        real(model, kept)
        restored.append((model, list(kept)))

    monkeypatch.setattr(frozen, "restore_fp32", spy)
    common = ("train.batch_size=2", "train.max_steps=3", "model.precision=bf16")
    on = train_conversations(tiny_model, tmp_path, "frozen-bf16", *common)
    off = train_conversations(tiny_model, tmp_path, "frozen-fp32", *common, "train.frozen_bf16=false")
    for a, b in zip(on, off, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-3)
    model, names = restored[0]
    assert names and not restored[1][1]  # held in bf16 in the first run only
    base = dict(AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32).named_parameters())
    for name in names:
        w = dict(model.named_modules())[name].weight
        assert w.dtype == torch.float32
        assert torch.equal(w, base[name.removeprefix("base_model.model.").removesuffix(".base_layer") + ".weight"])


# --- compiled layers: when auto compiles ----------------------------------------------------------------------

@pytest.mark.parametrize(("overrides", "rows", "expected"), [
    ([], 64, False),  # too few tokens to earn the compilation back
    ([], 640, True),
    (["peft.method=full"], 640, False),
    (["peft.method=dora"], 640, False),
    (["train.packing=false"], 640, False),
    (["train.gradient_checkpointing=true"], 640, False),
    (["train.compile=true"], 64, True),
    (["train.compile=false"], 640, False),
])
def test_auto_compiles_long_packed_lora_runs(overrides: list[str], rows: int, expected: bool,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from tunelab.config import load_config
    from tunelab.training import auto

    monkeypatch.setattr("tunelab.device.device", lambda: "cpu")  # auto compiles on CPUs only

    cfg = load_config(None, ["data.train=x.jsonl", "train.epochs=1", *overrides])
    hp = auto.hyperparams(cfg, n_params=135_000_000, lengths=[100] * rows)
    assert hp.compile is expected and hp.to_dict()["compile"] is expected  # recorded in resolved.json
    assert auto.max_batch_tokens(cfg, expected) == (1024 if expected else 512)
    assert auto.max_batch_tokens(load_config(None, ["train.max_batch_tokens=64"]), expected) == 64


def test_auto_never_compiles_for_a_classification_head() -> None:
    from tunelab.config import load_config
    from tunelab.training import auto

    cfg = load_config(None, ["data.train=x.jsonl", "train.epochs=1"])
    assert auto.hyperparams(cfg, n_params=135_000_000, lengths=[100] * 640, head=True).compile is False


def test_compiling_without_a_cxx_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.compile builds CPU kernels with a C++ compiler: auto trains uncompiled without one, true says what
    to install."""
    from tunelab.config import ConfigError, load_config
    from tunelab.training import auto

    monkeypatch.setattr("tunelab.device.device", lambda: "cpu")
    monkeypatch.setattr("tunelab.training.compiled.cxx_compiler", lambda: None)
    cfg = load_config(None, ["data.train=x.jsonl", "train.epochs=1"])
    assert auto.hyperparams(cfg, n_params=135_000_000, lengths=[100] * 640).compile is False
    with pytest.raises(ConfigError, match=r"train.compile=true needs a C\+\+ compiler.*apt-get install g\+\+"):
        auto.hyperparams(load_config(None, ["data.train=x.jsonl", "train.compile=true"]), n_params=1, lengths=[9])


@pytest.mark.parametrize(("set_before", "expected"), [(None, "128"), ("512", "512")])
def test_a_run_bounds_onednn_primitive_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             set_before: str | None, expected: str) -> None:
    """Packed batches bring new matmul shapes at every step; oneDNN's cache of them is bounded for a run (a value
    the user set stays)."""
    import os

    from tunelab.config import load_config
    from tunelab.recipes.dispatch import run

    if set_before is None:
        monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", set_before)
    with pytest.raises(Exception):  # noqa: B017, PT011 (no data: the run stops before training, the setting is made)
        run(load_config(None, [f"data.train={tmp_path / 'missing.jsonl'}", f"output_dir={tmp_path}"]))
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == expected
