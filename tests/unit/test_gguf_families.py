"""GGUF export per model family: a tiny random model of each supported family exported as f32 and q8_0, loaded
back with transformers (`from_pretrained(gguf_file=...)`), gives the original's logits and passes the parity check;
a LoRA run of each, with and without a system prompt, gets a Modelfile whose template builds the prompts training
built; other families are refused with the list of supported ones."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from tests.helpers import build_family_model, make_lora_run
from tunelab.export import ExportError, export, read_manifest
from tunelab.export.gguf import ARCHITECTURES, check_supported, ollama_values
from tunelab.export.gotemplate import render
from tunelab.export.parity import parse_modelfile

# transformers' GGUF loader reads neither Qwen3's head_dim nor Gemma's query_pre_attn_scalar from the file: it
# takes the config class defaults (128, 256), which are the real checkpoints' values, so the tiny models use them.
CONFIG = {"qwen3": {"head_dim": 128}, "gemma2": {"head_dim": 256, "query_pre_attn_scalar": 256},
          "gemma3": {"head_dim": 256, "query_pre_attn_scalar": 256}}
LLAMA_CPP_ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma2": "gemma2",
                  "gemma3": "gemma3"}
# longer than the Gemma models' sliding window, so the window is exercised
TEXT = "the quick brown fox jumps over the lazy dog and my card has not arrived yet where is it please help me"


RENDERS_TRAINING = "renders every prompt to the training token ids"


def _model(family: str, path: Path) -> Path:
    """The family's tiny model, with its 1-D weights (norms, biases) moved off their initial values so that a norm
    stored without Gemma's +1, or under another tensor's name, changes the logits."""
    from transformers import AutoConfig, AutoModelForCausalLM

    build_family_model(family, path)
    cfg = AutoConfig.from_pretrained(path)
    for key, value in CONFIG.get(family, {}).items():
        setattr(cfg, key, value)
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def family_model(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """family -> its tiny model, built once for the module."""
    root, built = tmp_path_factory.mktemp("families"), {}

    def get(family: str) -> Path:
        if family not in built:  # not plain "mistral": transformers reads that name as an architecture
            built[family] = _model(family, root / f"{family}-tiny")
        return built[family]
    return get


def _logits(path: Path, ids: torch.Tensor, gguf: Path | None = None) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    kw: dict[str, Any] = {"gguf_file": gguf.name} if gguf else {}
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent if gguf else path), dtype=torch.float32, **kw)
    with torch.no_grad():
        return model.eval()(ids).logits[0]


def _metadata(file: Path) -> dict[str, Any]:
    from transformers.integrations.gguf.reader import read_gguf_metadata

    return read_gguf_metadata(str(file))[0]


def _parity(file: Path) -> dict[str, Any]:
    manifest = read_manifest(file.parent)
    assert manifest is not None
    return manifest["parity"]


@pytest.mark.parametrize("family", list(LLAMA_CPP_ARCH))
def test_family_round_trips(family: str, family_model: Any, tmp_path: Path) -> None:
    from transformers import AutoConfig, AutoTokenizer

    src = family_model(family)
    ids = AutoTokenizer.from_pretrained(src)(TEXT, return_tensors="pt").input_ids
    window = getattr(AutoConfig.from_pretrained(src), "sliding_window", None)
    assert ids.shape[1] > (window or 0)
    want = _logits(src, ids)
    f32 = export(str(src), "gguf", tmp_path / "f32", dtype="f32")  # with the parity check, as users export
    torch.testing.assert_close(_logits(src, ids, f32), want, rtol=0, atol=1e-5)
    parity = _parity(f32)
    assert parity["modelfile"]["template"] == RENDERS_TRAINING
    assert parity["targets"][0]["token_agreement"] == 1.0 and parity["targets"][0]["answers_identical"] == "3/3"

    meta = _metadata(f32)
    arch = LLAMA_CPP_ARCH[family]
    assert meta["general.architecture"] == arch
    if family.startswith("gemma"):
        assert meta[f"{arch}.attention.sliding_window"] == window
        assert meta[f"{arch}.attention.key_length"] == 256
        assert (f"{arch}.attn_logit_softcapping" in meta) == (family == "gemma2")
        modelfile = (f32.parent / "Modelfile").read_text()
        assert 'PARAMETER stop "<end_of_turn>"' in modelfile and 'PARAMETER stop "<eos>"' in modelfile
    if family == "qwen3":
        assert meta["qwen3.attention.key_length"] == 128  # not hidden/heads: llama.cpp must be told

    q8 = export(str(src), "gguf", tmp_path / "q8", quantize="q8_0")
    got = _logits(src, ids, q8)
    assert (got - want).abs().max() < 0.15 * want.abs().max()
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() >= 0.75
    assert _parity(q8)["modelfile"]["template"] == RENDERS_TRAINING


SYSTEM = "Answer in one short sentence.\n"  # as YAML's `system_prompt: |` gives it; Llama 3 trims it, Ollama doesn't
# What each family's chat template adds when no system prompt is given, which the Modelfile has to reproduce.
DEFAULT_SYSTEM = {"qwen2": "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."}
DEFAULT_FRAMING = {"llama": "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"}


@pytest.mark.parametrize("system", [None, SYSTEM], ids=["no-system", "system"])
@pytest.mark.parametrize("family", list(LLAMA_CPP_ARCH))
def test_run_modelfile_builds_the_training_prompts(family: str, system: str | None, family_model: Any,
                                                   tmp_path: Path) -> None:
    """A LoRA run's GGUF passes the parity check (its Modelfile renders each held-out prompt, with the run's system
    prompt or the template's default one, to the training ids), and the Modelfile also renders a longer
    conversation as training did."""
    from transformers import AutoTokenizer

    from tunelab.data.templates import render_chat

    run = make_lora_run(tmp_path / f"{family}-bot", family_model(family), system=system)
    file = export(str(run), "gguf", tmp_path / "out", dtype="f32")
    parity = _parity(file)
    assert parity["modelfile"]["template"] == RENDERS_TRAINING and parity["prompts"]["system_prompt"] == bool(system)
    mf = parse_modelfile((file.parent / "Modelfile").read_text())
    assert (mf["system"] or "").strip() == (system or DEFAULT_SYSTEM.get(family, "")).strip()
    if family in DEFAULT_FRAMING:
        assert DEFAULT_FRAMING[family] in mf["template"]

    tok = AutoTokenizer.from_pretrained(str(run / "tokenizer"))
    turns = ["where is my card", "it is on its way", "how long will it take", "about three days",
             "thank you very much"]
    conversation = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
    trained = ([{"role": "system", "content": system}] if system else []) + conversation
    want = render_chat(tok, trained, add_generation_prompt=True, tokenize=False)
    got = render(mf["template"], ollama_values(mf["system"], conversation))
    assert want in (got, (tok.bos_token or "") + got)  # the GGUF adds the BOS itself where the tokenizer does


def test_run_named_like_an_architecture_loads_back(family_model: Any, tmp_path: Path) -> None:
    """transformers' GGUF loader reads a llama file whose general.name is "mistral" as an architecture it can't
    load: the name written keeps the run's name recognisable without that."""
    run = make_lora_run(tmp_path / "mistral", family_model("mistral"))
    file = export(str(run), "gguf", tmp_path / "out", dtype="f32")
    assert _metadata(file)["general.name"] == "mistral-gguf"
    assert _parity(file)["targets"][0]["token_agreement"] == 1.0


def test_other_families_are_refused_with_the_supported_list(tmp_path: Path) -> None:
    src = build_family_model("phi3", tmp_path / "phi3-tiny")
    with pytest.raises(ExportError, match=r"supports these architectures.*llama.*mistral.*qwen3.*gemma2.*gemma3_text"
                                          r".*this model is 'phi3'.*--format hf"):
        export(str(src), "gguf", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _gemma(**over: Any) -> Any:
    cfg = {"model_type": "gemma2", "hidden_size": 64, "num_attention_heads": 4, "head_dim": 16,
           "query_pre_attn_scalar": 16, "num_hidden_layers": 4, "sliding_window": 32,
           "layer_types": ["sliding_attention", "full_attention"] * 2,
           "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}}
    return SimpleNamespace(**{**cfg, **over})


def test_gemma_settings_llama_cpp_would_not_honour_are_refused() -> None:
    src: Any = SimpleNamespace(labels=None)
    assert check_supported(src, _gemma()) == "gemma2"
    with pytest.raises(ExportError, match="query_pre_attn_scalar is 256 where head_dim is 16"):
        check_supported(src, _gemma(query_pre_attn_scalar=256))
    with pytest.raises(ExportError, match="every 2th"):
        check_supported(src, _gemma(layer_types=["full_attention"] * 4))
    g3 = {"model_type": "gemma3_text", "layer_types": ["sliding_attention"] * 5 + ["full_attention"],
          "num_hidden_layers": 6, "attn_logit_softcapping": None}
    full = {"rope_type": "default", "rope_theta": 1e6}
    assert check_supported(src, _gemma(**g3, rope_parameters={
        "full_attention": full, "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}})) == "gemma3"
    with pytest.raises(ExportError, match="sliding layers' rope_theta is 50000"):
        check_supported(src, _gemma(**g3, rope_parameters={
            "full_attention": full, "sliding_attention": {"rope_type": "default", "rope_theta": 50000.0}}))
    with pytest.raises(ExportError, match=r"rope scaling 'linear' \(full_attention layers\)"):
        check_supported(src, _gemma(**g3, rope_parameters={
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}))
    assert set(ARCHITECTURES.values()) == {"llama", "qwen2", "qwen3", "gemma2", "gemma3"}
