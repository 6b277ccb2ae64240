"""Weight-only int8 layers (serve --dtype int8): close to fp32, adapters on top as on any linear layer, and the
engine keeping every computation on its own thread."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from tests.helpers import build_tiny_model, make_adapter
from tunelab.models.weight_int8 import Int8Linear, is_quantized, quantize_linears


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), init_std=0.2)


def load(path: Path, int8: bool = False) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    if int8:
        quantize_linears(model)
    return model


def test_every_linear_layer_is_int8_and_close_to_fp32(tiny: Path) -> None:
    ref, q = load(tiny), load(tiny, int8=True)
    assert is_quantized(q) and not is_quantized(ref)
    assert all(type(m) is not torch.nn.Linear for m in q.modules())
    assert q.lm_head.weight.dtype == torch.int8
    assert q.get_input_embeddings().weight.dtype == torch.float32  # the embeddings stay as they were
    ids = torch.tensor([[5, 17, 42, 9, 3, 77]])
    with torch.inference_mode():
        a, b = ref(ids).logits, q(ids).logits
    assert (a - b).abs().max() / a.abs().max() < 0.05


def test_prefill_and_decoding_paths_agree(tiny: Path) -> None:
    """A prompt goes through the dequantized weight, a decoded token through the int8 kernel: the same numbers."""
    layer = Int8Linear(torch.nn.Linear(64, 96))
    x = torch.randn(3, 5, 64)
    together = layer(x)
    one_by_one = torch.cat([layer(x[:, i : i + 1]) for i in range(5)], dim=1)
    assert torch.allclose(together, one_by_one, atol=2e-2, rtol=2e-2)
    assert torch.allclose(together, x @ layer.dequantized(torch.float32).t() + layer.bias, atol=3e-2, rtol=3e-2)


def test_a_lora_adapter_adds_to_the_int8_layers_in_fp32(tiny: Path, tmp_path: Path) -> None:
    from peft import PeftModel

    adapter = make_adapter(tiny, tmp_path / "a", 1)
    ids = torch.tensor([[5, 17, 42, 9]])
    with torch.inference_mode():
        ref = PeftModel.from_pretrained(load(tiny), adapter).eval()
        q = PeftModel.from_pretrained(load(tiny, int8=True), adapter).eval()
        lora_a = next(p for n, p in q.named_parameters() if "lora_A" in n)
        assert lora_a.dtype == torch.float32
        with ref.disable_adapter():
            base_ref = ref(ids).logits
        with q.disable_adapter():
            base_q = q(ids).logits
        delta_ref, delta_q = ref(ids).logits - base_ref, q(ids).logits - base_q
    assert delta_ref.abs().max() > 0.1  # the adapter really changes the answer
    assert (delta_q - delta_ref).abs().max() / delta_ref.abs().max() < 0.1


def test_the_engine_runs_model_work_on_its_own_thread(tiny: Path, tmp_path: Path) -> None:
    from tunelab.models.load import load_tokenizer
    from tunelab.serve.engine import Engine

    engine = Engine(load(tiny, int8=True), load_tokenizer(str(tiny)), base_name="base")
    seen: list[str] = []

    def where() -> str:
        seen.append(threading.current_thread().name)
        return seen[-1]

    assert engine._owned(where).startswith("tunelab-model-setup")  # not started: a thread of its own, which then ends
    engine.start()
    try:
        assert engine._owned(where) == "tunelab-engine"
        engine.add_adapter("a", make_adapter(tiny, tmp_path / "a", 2), {})
        assert "a" in engine.adapters
        assert len(engine.prompt_embedding([5, 6, 7])) == 64
        with pytest.raises(ZeroDivisionError):  # the caller gets the error; the engine goes on
            engine._owned(lambda: 1 / 0)
        assert engine._owned(where) == "tunelab-engine"
    finally:
        engine.stop()


def test_dora_adapters_are_refused_on_an_int8_base(tiny: Path, tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tunelab.models.load import load_tokenizer
    from tunelab.serve.engine import Engine

    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny), LoraConfig(
        r=4, target_modules="all-linear", use_dora=True)).save_pretrained(tmp_path / "dora")
    engine = Engine(load(tiny, int8=True), load_tokenizer(str(tiny)), base_name="base")
    with pytest.raises(ValueError, match="DoRA adapter needs the base's float weights"):
        engine.add_adapter("dora", tmp_path / "dora", {})
    assert not engine.adapters and is_quantized(engine.model)
    from peft.tuners.lora import LoraLayer

    assert not any(isinstance(m, LoraLayer) for m in engine.model.modules())  # rolled back to the plain base
