"""The GPU switches, exercised on a CPU wherever they can be: QLoRA through bitsandbytes' CPU backend, gradient
checkpointing (the same loss and gradients; auto from a memory budget), the attention that keeps packed rows apart
(the choice, and each implementation against rows run alone; on CUDA where there is one) and Liger's switch."""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import (
    CLI_ENV,
    REPO,
    assert_grads_close,
    chat_and_text_rows,
    label_tokens,
    loss_and_grads,
    tiny_lora,
)
from tunelab.config import ConfigError, load_config
from tunelab.training import auto
from tunelab.training.collate import PadCollator
from tunelab.training.packing import FLASH, FLEX, VARLEN, PackCollator, packed_attention, use_varlen_attention
from tunelab.training.trainer import causal_lm_loss

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA GPU on this machine")
BNB = importlib.util.find_spec("bitsandbytes") is not None
BNB_DIR = Path(os.environ.get("TUNELAB_BNB_PATH", REPO / ".venv" / "extras" / "bnb"))  # where `make test` puts it


@pytest.fixture(scope="module")
def rows(tiny_tokenizer) -> list[dict]:  # noqa: ANN001
    return chat_and_text_rows(tiny_tokenizer)


# --- QLoRA -------------------------------------------------------------------------------------------

def test_quantize_needs_an_adapter_method() -> None:
    with pytest.raises(ConfigError, match="model.quantize=4bit .*peft.method lora or dora"):
        load_config(None, ["data.train=x.jsonl", "model.quantize=4bit", "peft.method=full"])


def test_quantize_without_bitsandbytes_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name))
    with pytest.raises(ConfigError, match=r"pip install 'tunelab\[gpu\]'"):
        load_config(None, ["data.train=x.jsonl", "model.quantize=8bit"])


QLORA_RUN = """
import sys
from pathlib import Path

import torch
from bitsandbytes.nn import Linear4bit

from tests.helpers import train_conversations
from tunelab.models.load import ModelRef, load, starting_model

base, work = Path(sys.argv[1]), Path(sys.argv[2])
model = starting_model(ModelRef("dir", str(base)), quantize="4bit")
q = model.model.layers[0].self_attn.q_proj
assert isinstance(q, Linear4bit) and q.weight.quant_type == "nf4" and q.weight.quant_state.nested, q
assert q.compute_dtype == torch.bfloat16, q.compute_dtype
losses = train_conversations(base, work, "qlora", "model.quantize=4bit", "train.max_steps=2",
                             "train.gradient_checkpointing=true")
assert len(losses) >= 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in losses), losses
lm = load(str(work / "runs" / "qlora"))
assert torch.isfinite(lm.model(input_ids=torch.tensor([[5, 6, 7, 8]])).logits).all()
assert any("lora_A" in n for n, _ in lm.model.named_parameters())
"""


def _with_bitsandbytes() -> dict[str, str] | None:
    """The environment of a process that can import bitsandbytes: this one's, or with `make test`'s copy beside
    the virtual environment on its path (kept out of it: every process imports peft, which imports bitsandbytes
    when it can, and pays for it); None when neither has it."""
    if BNB:
        return {}
    if not (BNB_DIR / "bitsandbytes").is_dir():
        return None
    return {"PYTHONPATH": os.pathsep.join(p for p in (str(BNB_DIR), os.environ.get("PYTHONPATH")) if p)}


def test_qlora_trains_saves_and_reloads(tiny_model: Path, tmp_path: Path) -> None:
    """model.quantize=4bit on bitsandbytes' CPU backend: the base loads as NF4 (double-quantized, bf16 compute),
    two steps train the adapter, which is saved and loads back. In a process of its own, with bitsandbytes."""
    env = _with_bitsandbytes()
    if env is None:
        pytest.skip(f"bitsandbytes is not installed here nor in {BNB_DIR} (pip install 'tunelab[gpu]')")
    r = subprocess.run([sys.executable, "-c", QLORA_RUN, str(tiny_model), str(tmp_path)], cwd=REPO,
                       env=os.environ | CLI_ENV | env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]


# --- gradient checkpointing ----------------------------------------------------------------------------

def test_checkpointing_gives_the_same_loss_and_gradients(tiny_model: Path, tiny_tokenizer, rows) -> None:  # noqa: ANN001
    model = tiny_lora(tiny_model)
    batch = PadCollator(tiny_tokenizer.pad_token_id)(rows)
    n = label_tokens(batch)
    model.train()  # checkpointing only recomputes in training mode (the model has no dropout)
    ref, g_ref = loss_and_grads(model, [batch], n, True)
    model.get_base_model().gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert model.get_base_model().model.gradient_checkpointing
    got, g_got = loss_and_grads(model, [batch], n, True)
    assert got == pytest.approx(ref, rel=1e-6)
    assert_grads_close(g_got, g_ref)


@pytest.mark.parametrize(("setting", "need", "limit", "on"), [
    ("auto", 9000.0, 8192, True),   # the estimate without it is over the budget
    ("auto", 4000.0, 8192, False),  # it fits: no recomputation
    ("auto", None, None, False),    # no estimate (a run started without plan.fit): as configured, off
    ("true", 10.0, 8192, True), ("false", 9000.0, 8192, False),  # set: as set, whatever the estimate
])
def test_checkpointing_auto_rule(setting: str, need: float | None, limit: int | None, on: bool) -> None:
    cfg = load_config(None, ["data.train=x.jsonl", f"train.gradient_checkpointing={setting}"])
    assert auto.gradient_checkpointing(cfg, need, limit) is on


@pytest.mark.parametrize(("budget", "on"), [(100_000, False), (3_000, True)])
def test_fitter_settles_checkpointing_from_a_faked_budget(monkeypatch: pytest.MonkeyPatch, budget: int,
                                                          on: bool) -> None:
    """train.fit off, checkpointing auto: the fitter estimates the run without it (faked here) and turns it on
    only when that does not fit the memory budget; the summary says what it chose, the config carries it."""
    from rich.console import Console

    from tunelab.plan import fit as plan_fit
    from tunelab.plan.estimate import Estimate

    cfg = load_config(None, ["data.train=x.jsonl", "train.fit='off'", f"train.memory_limit_mib={budget}"])
    monkeypatch.setattr(plan_fit, "quick_bound_mib", lambda *a: 4_000.0)  # over half the small budget: estimate
    monkeypatch.setattr(plan_fit, "estimate", lambda c: Estimate(3_500.0, 60.0, budget, {}, {}, {}, {}))
    load_module = importlib.import_module("tunelab.models.load")
    monkeypatch.setattr(load_module, "resolve", lambda ref: type("R", (), {"path": "."})())
    monkeypatch.setattr(load_module, "param_count", lambda path: 135_000_000)
    prepared = type("P", (), {"data": type("D", (), {"train": []})()})()
    fitted, noted = plan_fit.fitter(Console(quiet=True))(cfg, prepared)
    assert fitted.train.gradient_checkpointing is on
    assert noted["gradient_checkpointing"]["auto"] is on
    assert auto.hyperparams(fitted, n_params=1, lengths=[8]).to_dict()["gradient_checkpointing"] is on


# --- packed rows: which attention, and each against rows run alone ------------------------------------------

@pytest.mark.parametrize(("device", "flash", "flex", "want"), [
    ("cpu", True, True, VARLEN), ("cuda", True, True, FLASH), ("cuda", False, True, FLEX),
    ("cuda", False, False, VARLEN)])
def test_packed_attention_choice(device: str, flash: bool, flex: bool, want: str) -> None:
    assert packed_attention(device, flash_attn=flash, flex=flex) == want


def _packed_vs_padded(tiny_model: Path, tokenizer, rows, impl: str | None, device: str, grads: bool,  # noqa: ANN001
                      bf16: bool = False) -> None:
    model = tiny_lora(tiny_model).to(device)
    pad = {k: v.to(device) for k, v in PadCollator(tokenizer.pad_token_id)(rows).items()}
    packed = {k: v.to(device) for k, v in PackCollator()(rows).items()}
    n = label_tokens(pad)
    with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16), torch.set_grad_enabled(grads):
        ref, g_ref = (loss_and_grads(model, [pad], n, True) if grads
                      else (causal_lm_loss(model, pad, n, True).item(), {}))
        chosen = use_varlen_attention(model, impl)
        got, g_got = (loss_and_grads(model, [packed], n, True) if grads
                      else (causal_lm_loss(model, packed, n, True).item(), {}))
        again = causal_lm_loss(model, pad, n, True).item()  # padded batches still attend as before
    assert impl is None or chosen == impl
    rel = 2e-2 if bf16 else 1e-5
    assert got == pytest.approx(ref, rel=rel) and again == pytest.approx(ref, rel=rel)
    if grads and not bf16:
        assert_grads_close(g_got, g_ref)
    elif grads:
        for k in g_ref:
            torch.testing.assert_close(g_got[k], g_ref[k], rtol=5e-2, atol=5e-3)


def test_explicit_mask_on_cpu_keeps_rows_apart(tiny_model: Path, tiny_tokenizer, rows) -> None:  # noqa: ANN001
    """sdpa given no padding mask: transformers builds the block-diagonal mask from the rows' positions."""
    _packed_vs_padded(tiny_model, tiny_tokenizer, rows, "sdpa", "cpu", grads=True)


def test_flex_attention_forward_on_cpu(tiny_model: Path, tiny_tokenizer, rows,  # noqa: ANN001
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """FlexAttention's document mask, forward only: torch has no FlexAttention backward pass on a CPU. Run
    uncompiled (compiling it on a CPU takes ~40 s here): the mask transformers builds is what is checked."""
    from transformers.utils import is_torch_flex_attn_available

    if not is_torch_flex_attn_available():
        pytest.skip("this torch has no FlexAttention")
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    from transformers import masking_utils
    from transformers.integrations import flex_attention as hf_flex

    monkeypatch.setattr(masking_utils, "create_block_mask", lambda **kw: create_block_mask(**kw | {"_compile": False}))
    monkeypatch.setattr(hf_flex.WrappedFlexAttention, "__call__", lambda self: flex_attention)
    _packed_vs_padded(tiny_model, tiny_tokenizer, rows, FLEX, "cpu", grads=False)


@needs_cuda
@pytest.mark.parametrize("impl", [None, FLEX, VARLEN, FLASH])
def test_packed_equals_padded_on_cuda(tiny_model: Path, tiny_tokenizer, rows, impl: str | None) -> None:  # noqa: ANN001
    """On a GPU, under bf16 autocast as training runs there: each attention (None: this machine's choice)."""
    from transformers.utils import is_flash_attn_2_available

    if impl == FLASH and not is_flash_attn_2_available():
        pytest.skip("flash-attn is not installed")
    _packed_vs_padded(tiny_model, tiny_tokenizer, rows, impl, "cuda", grads=True, bf16=True)


# --- Liger ---------------------------------------------------------------------------------------------

def test_liger_auto_is_off_without_the_package_or_a_gpu() -> None:
    cfg = load_config(None, ["data.train=x.jsonl"])
    installed = importlib.util.find_spec("liger_kernel") is not None
    assert auto.liger(cfg) is (installed and CUDA)
    assert auto.loading(cfg) == {"quantize": "none", "liger": installed and CUDA}


def test_liger_true_without_the_package_or_gpu_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "liger_kernel" else real(name))
    with pytest.raises(ConfigError, match=r"train.liger=true needs liger-kernel.*pip install 'tunelab\[gpu\]'"):
        load_config(None, ["data.train=x.jsonl", "train.liger=true"])
    cfg = load_config(None, ["data.train=x.jsonl"])
    cfg.train.liger = True  # built elsewhere (e.g. a job's config), run here
    with pytest.raises(ConfigError, match="liger-kernel"):
        auto.liger(cfg)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "liger_kernel" else
                        real(name))
    monkeypatch.setattr("tunelab.device.device", lambda: "cpu")
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        auto.liger(cfg)


@pytest.mark.parametrize("setting", ["auto", "true"])
def test_trl_configs_checkpoint_only_as_tunelab_decides(tmp_path: Path, setting: str) -> None:
    """TRL's configs default to gradient checkpointing on: tunelab says its choice either way (on where checkpointing
    was left on, online DPO sampled without a KV cache, 35x slower)."""
    from trl import DPOConfig, GRPOConfig

    from tunelab.training.trl_common import trl_kwargs

    cfg = load_config(None, ["data.train=x.jsonl", f"train.gradient_checkpointing={setting}"])
    hp = auto.hyperparams(cfg, n_params=1, lengths=[8])
    for config_cls in (DPOConfig, GRPOConfig):
        args = config_cls(**trl_kwargs(cfg, hp, tmp_path, has_val=False))
        assert args.gradient_checkpointing is (setting == "true")
