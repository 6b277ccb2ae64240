"""The serving engine without HTTP: adapters in and out, sampling rules, streamed text pieces."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.helpers import build_tiny_model
from tunelab.serve.engine import Engine, GenRequest, Sampling, _sample


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    from transformers import AutoModelForCausalLM

    from tunelab.models.load import load_tokenizer

    path = build_tiny_model(tmp_path_factory.mktemp("chatty"), init_std=0.2)
    eng = Engine(AutoModelForCausalLM.from_pretrained(path).eval(), load_tokenizer(str(path)), base_name="base")
    eng.start()
    yield eng
    eng.stop()


def ask(engine: Engine, prompt: list[int], adapter: str | None = None, **sampling: object) -> GenRequest:
    async def run() -> GenRequest:
        req = GenRequest("m", adapter, [prompt], Sampling(**({"temperature": 0.0, "max_tokens": 12} | sampling)))
        queue = req.bind(asyncio.get_running_loop())
        engine.submit(req)
        pieces = []
        while (event := await queue.get()).kind not in ("done", "error"):
            if event.kind == "text":
                pieces.append(event.text)
        assert event.kind == "done", event.error
        req.pieces = pieces  # type: ignore[attr-defined]
        return req

    return asyncio.run(run())


def lora(base: Path, out: Path, seed: int) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                   LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)).save_pretrained(out)
    return out


def test_removing_the_last_adapter_gives_back_the_exact_base(engine: Engine, tmp_path: Path) -> None:
    import time

    base_answer = ask(engine, [5, 6, 7, 8]).texts[0]
    src = Path(engine.model.config._name_or_path)
    engine.add_adapter("a", lora(src, tmp_path / "a", 1), {})
    with_adapter = ask(engine, [5, 6, 7, 8], "a").texts[0]
    assert with_adapter != base_answer
    engine.remove_adapter("a")
    deadline = time.time() + 10
    while "a" in getattr(engine.model, "peft_config", {}) and time.time() < deadline:
        time.sleep(0.05)
    assert type(engine.model).__name__ == "LlamaForCausalLM"  # peft unwrapped, nothing merged
    assert ask(engine, [5, 6, 7, 8]).texts[0] == base_answer
    engine.add_adapter("a", tmp_path / "a", {})
    assert ask(engine, [5, 6, 7, 8], "a").texts[0] == with_adapter
    engine.remove_adapter("a")


def test_streamed_pieces_add_up_and_stop_strings_never_leak(engine: Engine) -> None:
    full = ask(engine, [9, 10, 11], max_tokens=30)
    text = full.texts[0]
    assert "".join(full.pieces) == text and len(full.pieces) > 1  # type: ignore[attr-defined]
    stop = text[10:13]
    cut = ask(engine, [9, 10, 11], max_tokens=30, stop=[stop])
    assert cut.texts[0] == text[:text.index(stop)] and cut.finish_reasons[0] == "stop"
    assert all(stop not in p for p in cut.pieces)  # type: ignore[attr-defined]
    assert ask(engine, [9, 10, 11], max_tokens=3).finish_reasons[0] == "length"


def test_sampling_rules() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.tensor([0.0, 5.0, 4.9, -3.0])
    # top_p small keeps only the most likely token
    assert {_sample(logits, 1.0, 0.01, g) for _ in range(50)} == {1}
    # top_p 0.9 never picks the tail token, which holds ~0.01% of the mass
    assert 3 not in {_sample(logits, 1.0, 0.9, g) for _ in range(200)}
    seen = {_sample(logits, 1.0, 1.0, g) for _ in range(300)}
    assert {1, 2} <= seen


def test_seeded_sampling_repeats_and_n_choices_differ(engine: Engine) -> None:
    a = ask(engine, [5, 6], temperature=1.0, seed=3, max_tokens=10)
    b = ask(engine, [5, 6], temperature=1.0, seed=3, max_tokens=10)
    assert a.texts == b.texts

    async def n_choices() -> GenRequest:
        req = GenRequest("m", None, [[5, 6]], Sampling(temperature=1.0, seed=3, max_tokens=10), n=3)
        queue = req.bind(asyncio.get_running_loop())
        engine.submit(req)
        while (await queue.get()).kind != "done":
            pass
        return req

    req = asyncio.run(n_choices())
    assert sorted(req.texts) == [0, 1, 2] and req.texts[0] == a.texts[0] and len(set(req.texts.values())) > 1


def test_a_failing_prefill_fails_only_its_own_request(engine: Engine) -> None:
    prefill = engine._prefill

    def poisoned(rows: list) -> object:
        if any(r.prompt == [99, 99] for r in rows):
            raise RuntimeError("boom")
        return prefill(rows)

    engine._prefill = poisoned  # type: ignore[method-assign]
    try:
        async def both() -> tuple[GenRequest, GenRequest]:
            loop = asyncio.get_running_loop()
            long = GenRequest("m", None, [[5, 6, 7]], Sampling(temperature=0.0, max_tokens=40))
            bad = GenRequest("m", None, [[99, 99]], Sampling(temperature=0.0, max_tokens=5))
            q1, q2 = long.bind(loop), bad.bind(loop)
            engine.submit(long)
            while (await q1.get()).kind != "text":
                pass
            engine.submit(bad)
            assert (await q2.get()).kind == "error"
            while (event := await q1.get()).kind not in ("done", "error"):
                pass
            assert event.kind == "done"
            return long, bad

        long, _ = asyncio.run(both())
    finally:
        del engine._prefill
    assert long.texts[0] == ask(engine, [5, 6, 7], max_tokens=40).texts[0]
