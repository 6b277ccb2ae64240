"""`tunelab serve --engine llama.cpp`: the base as GGUF and each PEFT adapter as a llama.cpp LoRA give the answers
the torch model gives (f32 files: the same greedy tokens), behind the torch engine's queue and streaming."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.helpers import build_tiny_model
from tunelab.export.source import ExportError
from tunelab.serve.engine import GenRequest, Sampling
from tunelab.serve.llama_engine import available

if (why := available()) is not None:
    pytest.skip(f"llama.cpp engine not tested: {why}", allow_module_level=True)

from tunelab.serve.llama_engine import LlamaCppEngine, base_gguf, file_type  # noqa: E402

PROMPTS = [[5, 6, 7, 8], [5, 6, 7, 9, 10, 11], [40, 41, 42]]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("llama-tiny"), init_std=0.2)


@pytest.fixture(scope="module")
def engine(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaCppEngine]:
    from transformers import AutoModelForCausalLM

    from tunelab.models.load import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny).eval()
    tok = load_tokenizer(str(tiny))
    work = tmp_path_factory.mktemp("llama-work")
    path = base_gguf(str(tiny), model, tok, "f32", work, "tiny")
    assert file_type(path) == "f32"
    eng = LlamaCppEngine(model, tok, path, base_name="base", workdir=work)
    eng.start()
    yield eng
    eng.stop()


def lora(base: Path, out: Path, seed: int, **config: object) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = LoraConfig(**({"r": 4, "target_modules": "all-linear", "init_lora_weights": False} | config))
    get_peft_model(AutoModelForCausalLM.from_pretrained(base), cfg).save_pretrained(out)
    return out


def ask(engine: LlamaCppEngine, prompt: list[int], adapter: str | None = None, **sampling: object) -> str:
    async def run() -> str:
        req = GenRequest("m", adapter, [prompt], Sampling(**({"temperature": 0.0, "max_tokens": 12} | sampling)))
        queue = req.bind(asyncio.get_running_loop())
        engine.submit(req)
        while (event := await queue.get()).kind not in ("done", "error"):
            pass
        assert event.kind == "done", event.error
        return req.texts.get(0, "")

    return asyncio.run(run())


def torch_answer(model: torch.nn.Module, tok: object, prompt: list[int]) -> str:
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)  # type: ignore[attr-defined]
    return tok.decode(out[0, len(prompt):], skip_special_tokens=True)  # type: ignore[attr-defined]


def test_base_and_adapters_answer_as_torch_does(engine: LlamaCppEngine, tiny: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tok = engine.tokenizer
    base = AutoModelForCausalLM.from_pretrained(tiny).eval()
    want_base = [torch_answer(base, tok, p) for p in PROMPTS]
    assert [ask(engine, p) for p in PROMPTS] == want_base
    # plain LoRA; rsLoRA with a per-module rank and alpha: each module's scaling must come out right
    adapters = {"plain": lora(tiny, tmp_path / "plain", 1),
                "rs": lora(tiny, tmp_path / "rs", 2, r=8, lora_alpha=4, use_rslora=True,
                           rank_pattern={"q_proj": 2}, alpha_pattern={"down_proj": 16})}
    for name, path in adapters.items():
        engine.add_adapter(name, path, {})
        tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny), str(path)).eval()
        want = [torch_answer(tuned, tok, p) for p in PROMPTS]
        assert want != want_base
        assert [ask(engine, p, name) for p in PROMPTS] == want, name
    # switching back and forth keeps each model's answers (no KV cache carried across adapters)
    assert [ask(engine, PROMPTS[0], a) for a in (None, "plain", None, "rs")] == \
        [want_base[0], ask(engine, PROMPTS[0], "plain"), want_base[0], ask(engine, PROMPTS[0], "rs")]
    for name in adapters:
        engine.remove_adapter(name)
    assert [ask(engine, p) for p in PROMPTS] == want_base


def test_seeded_sampling_repeats(engine: LlamaCppEngine) -> None:
    a = ask(engine, PROMPTS[0], temperature=1.0, seed=3, max_tokens=16)
    assert a == ask(engine, PROMPTS[0], temperature=1.0, seed=3, max_tokens=16)
    assert len({ask(engine, PROMPTS[0], temperature=1.0, seed=s, max_tokens=16) for s in range(4)}) > 1


def test_adapters_llama_cpp_cant_apply_are_refused(engine: LlamaCppEngine, tiny: Path, tmp_path: Path) -> None:
    dora = lora(tiny, tmp_path / "dora", 3, use_dora=True)
    with pytest.raises(ExportError, match="DoRA"):
        engine.add_adapter("dora", dora, {})
    saved = lora(tiny, tmp_path / "saved", 4, target_modules=["q_proj"], modules_to_save=["lm_head"])
    with pytest.raises(ExportError, match="modules_to_save"):
        engine.add_adapter("saved", saved, {})
    assert json.loads((saved / "adapter_config.json").read_text())["modules_to_save"]
    head = lora(tiny, tmp_path / "head", 5, target_modules=["q_proj", "lm_head"])
    with pytest.raises(ExportError, match="lm_head.*llama.cpp can.t apply it"):
        engine.add_adapter("head", head, {})
    assert engine.model_names == ["base"]
    assert ask(engine, PROMPTS[0])  # still serving


def test_a_cancelled_request_leaves_at_once_and_the_next_is_served(engine: LlamaCppEngine) -> None:
    async def run() -> tuple[GenRequest, str]:
        long = GenRequest("m", None, [PROMPTS[1]], Sampling(temperature=0.0, max_tokens=400))
        queue = long.bind(asyncio.get_running_loop())
        engine.submit(long)
        while (await queue.get()).kind != "text":
            pass
        long.cancel()
        return long, await asyncio.to_thread(ask, engine, PROMPTS[2])

    long, answer = asyncio.run(run())
    assert long.completion_tokens < 400 and not long.finish_reasons
    assert answer == ask(engine, PROMPTS[2])
    deadline = time.time() + 10  # a row leaves the engine's list just after its request is told it is done
    while engine.active_rows and time.time() < deadline:
        time.sleep(0.01)
    assert engine.active_rows == 0 and engine.queue_depth == 0
