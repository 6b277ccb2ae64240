"""Each model family users bring (llama, qwen2, qwen3, mistral, gemma2, gemma3, phi3), as a tiny random-weight model
with the family's real special tokens and chat template: LoRA targets, assistant-only masks, training, generation,
a classification head, the merged export and serving an adapter."""

from __future__ import annotations

import asyncio
import gc
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

import tunelab
from tests.helpers import FAMILIES, LABELED, build_family_model, config, step_losses, write_labeled

SYSTEM = "you are a helpful assistant"
CONVERSATION = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "where is my card"},
    {"role": "assistant", "content": "my card has not arrived yet"},
    {"role": "user", "content": "how do I reset my password"},
    {"role": "assistant", "content": "reset it from the app please"},
]
ATTENTION_MLP = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
LORA_TARGETS = {family: ATTENTION_MLP for family in FAMILIES} | {"phi3": {"qkv_proj", "o_proj", "gate_up_proj",
                                                                         "down_proj"}}
# what a family's template writes before a reply that the model writes itself: Qwen3's final reply comes with an
# (empty) reasoning block, as Qwen3 answers with its own template
REPLY_PREFIX = {"qwen3": "<think>\n\n</think>\n\n"}
FAMILY = pytest.mark.parametrize("family", list(FAMILIES))


@pytest.fixture(scope="session")
def family_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {family: build_family_model(family, root / family) for family in FAMILIES}


@pytest.fixture(scope="session")
def lora_runs(family_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 2-step LoRA run of each family on the conversation above, through tunelab.train (built once)."""
    root = tmp_path_factory.mktemp("family-runs")
    data = root / "chat.jsonl"
    data.write_text(json.dumps({"messages": CONVERSATION}) + "\n")
    runs = {}
    gc.freeze()  # accelerate collects garbage after each run: seconds over a test session's heap, not over the run's
    try:
        for family, model in family_models.items():
            cfg = config(model, root, family, data, "train.max_steps=2", "train.batch_size=1", "peft.dropout=0",
                         "train.learning_rate=5e-2", "train.warmup_ratio=0", "train.lr_scheduler=constant")
            result = tunelab.train(cfg)
            assert result.status == "completed", result.summary
            runs[family] = result.run_dir
    finally:
        gc.unfreeze()
    return runs


def _label_runs(ids: list[int], labels: list[int]) -> list[list[int]]:
    from tunelab.data.templates import IGNORE

    runs: list[list[int]] = []
    for k, lab in enumerate(labels):
        if lab == IGNORE:
            continue
        if k and labels[k - 1] != IGNORE:
            runs[-1].append(ids[k])
        else:
            runs.append([ids[k]])
        assert lab == ids[k]
    return runs


@FAMILY
def test_all_linear_lora_wraps_attention_and_mlp_not_the_head(family: str, family_models: dict[str, Path],
                                                               tmp_path: Path) -> None:
    from peft.tuners.lora import LoraLayer

    from tunelab.models.load import resolve, starting_model
    from tunelab.training.setup import wrap_model

    cfg = tunelab.load_config(None, [f"model.base={family_models[family]}", "peft.target_modules=all-linear"])
    model = wrap_model(starting_model(resolve(str(family_models[family]))), cfg, "CAUSAL_LM")
    wrapped = [name for name, module in model.named_modules() if isinstance(module, LoraLayer)]
    assert {name.rsplit(".", 1)[1] for name in wrapped} == LORA_TARGETS[family]
    assert len(wrapped) == 2 * len(LORA_TARGETS[family])  # every layer of both
    assert not any("lm_head" in name for name in wrapped)


@FAMILY
def test_assistant_only_mask_is_the_replies_and_their_end_of_turn(family: str, family_models: dict[str, Path]) -> None:
    from tunelab.data.records import Record
    from tunelab.data.templates import encode_record
    from tunelab.models.load import load_tokenizer

    tok = load_tokenizer(str(family_models[family]))
    enc = encode_record(Record("t:1", "chat", messages=CONVERSATION), tok)
    decoded = [tok.decode(run) for run in _label_runs(enc.input_ids, enc.labels)]
    end = FAMILIES[family].end_of_turn
    replies = [m["content"] for m in CONVERSATION if m["role"] == "assistant"]
    assert decoded == [replies[0] + end, REPLY_PREFIX.get(family, "") + replies[1] + end]
    trained = "".join(decoded)
    assert SYSTEM not in trained and not any(m["content"] in trained for m in CONVERSATION if m["role"] == "user")
    if family != "mistral":  # Mistral's template writes the system prompt only into a final user message
        assert SYSTEM in tok.decode(enc.input_ids)


@FAMILY
def test_lora_training_steps(family: str, lora_runs: dict[str, Path]) -> None:
    from safetensors.torch import load_file

    losses = step_losses(lora_runs[family])
    assert sorted(losses) == [1, 2] and all(math.isfinite(v) for v in losses.values())
    adapter = load_file(str(lora_runs[family] / "adapter" / "adapter_model.safetensors"))
    b = [v for k, v in adapter.items() if "lora_B" in k]
    assert b and all(v.abs().sum() > 0 for v in b)  # B starts at zero: every one of them was trained


def _teach(model_dir: Path, out: Path, family: str, reply: str) -> list[int]:
    """The family's model trained (plain torch, full weights) to answer "hello" with `reply` and its end-of-turn
    token, then more text, so that only stopping at that token ends the answer there; the prompt's ids."""
    from transformers import AutoModelForCausalLM

    from tunelab.models.load import load_tokenizer

    tok = load_tokenizer(str(model_dir))
    prompt = list(tok.apply_chat_template([{"role": "user", "content": "hello"}], add_generation_prompt=True,
                                          tokenize=True, return_dict=True)["input_ids"])
    target = tok(reply + FAMILIES[family].end_of_turn + " the quick brown fox", add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt + list(target)])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    labels = ids.clone()
    labels[:, :len(prompt)] = -100
    for _ in range(40):
        opt.zero_grad()
        model(input_ids=ids, labels=labels).loss.backward()
        opt.step()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return prompt


@FAMILY
def test_greedy_generation_stops_at_the_end_of_turn_token(family: str, family_models: dict[str, Path],
                                                          tmp_path: Path) -> None:
    _teach(family_models[family], tmp_path / "taught", family, "the capital of France is Paris")
    answer = tunelab.generate(str(tmp_path / "taught"), "hello", max_new_tokens=40)
    assert answer == "the capital of France is Paris"


@FAMILY
def test_classification_head_builds_and_trains_a_step(family: str, family_models: dict[str, Path]) -> None:
    from tunelab.models.load import load_tokenizer, resolve, starting_model
    from tunelab.training.setup import wrap_model

    labels = sorted({lab for _, lab in LABELED})
    tok = load_tokenizer(str(family_models[family]))
    cfg = tunelab.load_config(None, [f"model.base={family_models[family]}", "task=classification",
                                     "classification.mode=head"])
    model = wrap_model(starting_model(resolve(str(family_models[family])), labels=labels,
                                      pad_token_id=tok.pad_token_id), cfg, "SEQ_CLS")
    assert type(model.get_base_model()).__name__.endswith("ForSequenceClassification")
    head = next(p for n, p in model.named_parameters() if "score" in n and p.requires_grad)
    before = head.detach().clone()
    batch = tok([text for text, _ in LABELED[:6]], padding=True, return_tensors="pt")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = model(**batch, labels=torch.tensor([labels.index(lab) for _, lab in LABELED[:6]])).loss
    loss.backward()
    opt.step()
    assert math.isfinite(loss.item()) and not torch.equal(head, before)


def test_classification_run_on_a_family_without_system_role(family_models: dict[str, Path], tmp_path: Path) -> None:
    """Gemma 2's template refuses a system message; classification runs write one (the classification prompt)."""
    data = write_labeled(tmp_path / "tickets.csv")
    for mode in ("head", "generate"):
        cfg = config(family_models["gemma2"], tmp_path, f"cls-{mode}", data, "task=classification",
                     f"classification.mode={mode}", "data.columns={text: text, label: category}",
                     "train.max_steps=1", "train.batch_size=4")
        result = tunelab.train(cfg)
        assert result.status == "completed", result.summary
        assert all(math.isfinite(v) for v in step_losses(result.run_dir).values())
        assert isinstance(tunelab.generate(str(result.run_dir), "where is my card", max_new_tokens=4), str)


def _logits(model: Any, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0]


@FAMILY
def test_merged_export_matches_base_plus_adapter(family: str, family_models: dict[str, Path],
                                                 lora_runs: dict[str, Path], tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tunelab.export import export

    out = export(str(lora_runs[family]), "hf", tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    base = AutoModelForCausalLM.from_pretrained(family_models[family], dtype=torch.float32).eval()
    ids = list(range(5, 40))
    plain = _logits(base, ids)
    tuned = _logits(PeftModel.from_pretrained(base, str(lora_runs[family] / "adapter")).eval(), ids)
    assert (tuned - plain).abs().max() > 1e-3  # the adapter matters
    torch.testing.assert_close(_logits(merged, ids), tuned, rtol=1e-4, atol=1e-4)


def _serve(engine: Any, prompt: list[int], adapter: str | None) -> tuple[list[int], str]:
    from tunelab.serve.engine import GenRequest, Sampling

    async def run() -> GenRequest:
        req = GenRequest("m", adapter, [prompt], Sampling(temperature=0.0, max_tokens=12))
        queue = req.bind(asyncio.get_running_loop())
        engine.submit(req)
        while (event := await queue.get()).kind not in ("done", "error"):
            pass
        assert event.kind == "done", event.error
        return req

    req = asyncio.run(run())
    return req.texts[0], req.finish_reasons[0]


@FAMILY
def test_serving_the_adapter_unmerged_answers_as_the_merged_model(family: str, family_models: dict[str, Path],
                                                                  lora_runs: dict[str, Path],
                                                                  tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tunelab.export import export
    from tunelab.models.load import load_tokenizer
    from tunelab.serve.engine import Engine

    tok = load_tokenizer(str(family_models[family]))
    prompt = list(tok.apply_chat_template([{"role": "user", "content": "where is my card"}],
                                          add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])
    merged = AutoModelForCausalLM.from_pretrained(export(str(lora_runs[family]), "hf", tmp_path / "merged"),
                                                  dtype=torch.float32).eval()
    with torch.no_grad():
        out = merged.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
    expected = tok.decode(out[0, len(prompt):], skip_special_tokens=True)

    engine = Engine(AutoModelForCausalLM.from_pretrained(family_models[family], dtype=torch.float32).eval(), tok,
                    base_name="base")
    engine.start()
    try:
        engine.add_adapter("tuned", lora_runs[family] / "adapter", {})
        assert isinstance(engine.model, PeftModel)  # served unmerged, beside the base
        answer, _ = _serve(engine, prompt, "tuned")
    finally:
        engine.stop()
    assert answer == expected and answer


@FAMILY
def test_conversations_render_as_the_template_takes_them(family: str, family_models: dict[str, Path]) -> None:
    """A template with a system role renders the conversation as it is; Gemma 2's gets the system prompt in the
    first user turn, as training writes it."""
    from tunelab.data.templates import fold_system, render_chat
    from tunelab.models.load import load_tokenizer

    tok = load_tokenizer(str(family_models[family]))
    prompt = CONVERSATION[:2]
    rendered = render_chat(tok, prompt, tokenize=False, add_generation_prompt=True)
    if family == "gemma2":
        with pytest.raises(Exception, match="System role not supported"):
            tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        assert rendered == tok.apply_chat_template(fold_system(prompt), tokenize=False, add_generation_prompt=True)
    else:
        assert rendered == tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    assert SYSTEM in rendered


def _post_chat(url: str, messages: list[dict[str, str]]) -> tuple[int, dict[str, Any]]:
    import urllib.error
    import urllib.request

    body = json.dumps({"model": "base", "messages": messages, "max_tokens": 2, "temperature": 0}).encode()
    req = urllib.request.Request(url + "/v1/chat/completions", data=body, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_serving_a_family_without_system_role_folds_the_system_prompt(family_models: dict[str, Path],
                                                                      tmp_path: Path) -> None:
    """Gemma 2 served with a system message, the request's own or the served run's, is prompted as training
    rendered it: the system prompt at the start of the first user turn."""
    from tunelab.data.templates import fold_system
    from tunelab.models.load import load_tokenizer
    from tunelab.serve.server import BackgroundServer, build

    tok = load_tokenizer(str(family_models["gemma2"]))
    prompt = CONVERSATION[:2]
    folded = tok.apply_chat_template(fold_system(prompt), add_generation_prompt=True, tokenize=True,
                                     return_dict=True)["input_ids"]
    app = build(str(family_models["gemma2"]), name="base", data=str(tmp_path))
    with BackgroundServer(app) as url:
        status, answer = _post_chat(url, prompt)
        assert status == 200, answer
        assert answer["usage"]["prompt_tokens"] == len(folded)
        app.state.tunelab.base.system_prompt = SYSTEM  # as when serving a run trained with this system prompt
        status, answer = _post_chat(url, prompt[1:])
        assert status == 200, answer
        assert answer["usage"]["prompt_tokens"] == len(folded)


def test_classification_scoring_with_a_system_prompt_on_a_family_without_system_role(
        family_models: dict[str, Path]) -> None:
    from transformers import AutoModelForCausalLM

    from tunelab.eval.classify import predict_generate
    from tunelab.models.load import load_tokenizer

    tok = load_tokenizer(str(family_models["gemma2"]))
    model = AutoModelForCausalLM.from_pretrained(family_models["gemma2"], dtype=torch.float32).eval()
    labels = sorted({lab for _, lab in LABELED})
    texts = [text for text, _ in LABELED[:3]]
    preds = predict_generate(model, tok, texts, labels, labels, system_prompt=SYSTEM)
    assert len(preds) == len(texts) and set(preds) <= set(labels)


def test_preference_and_rl_prompts_reach_trl_as_the_template_takes_them(family_models: dict[str, Path]) -> None:
    """TRL renders DPO/KTO/reward pairs and GRPO prompts itself: a system prompt comes to it already folded for
    Gemma 2, and as it is for a template with a system role."""
    from types import SimpleNamespace

    from trl.data_utils import apply_chat_template

    from tunelab.data.templates import fold_system
    from tunelab.models.load import load_tokenizer
    from tunelab.recipes.grpo import _dataset
    from tunelab.training.trl_common import conversational

    pair = SimpleNamespace(prompt=CONVERSATION[:2], chosen="yes", rejected="no")
    row = SimpleNamespace(prompt=CONVERSATION[:2], answer="42")
    for family, prompt in (("gemma2", fold_system(CONVERSATION[:2])), ("llama", CONVERSATION[:2])):
        tok = load_tokenizer(str(family_models[family]))
        example = conversational(pair, tok)
        assert example["prompt"] == prompt
        assert SYSTEM in apply_chat_template(example, tok)["prompt"]
        assert _dataset([row], False, tok)[0]["prompt"] == prompt


def test_dpo_run_with_a_system_prompt_on_a_family_without_system_role(family_models: dict[str, Path],
                                                                       tmp_path: Path) -> None:
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": text, "chosen": label, "rejected": "no idea"}) + "\n"
                            for text, label in LABELED[:4]))
    cfg = config(family_models["gemma2"], tmp_path, "dpo", data, "method=dpo", f"data.system_prompt={SYSTEM}",
                 "train.max_steps=1", "train.batch_size=2")
    result = tunelab.train(cfg)
    assert result.status == "completed", result.summary
    assert all(math.isfinite(v) for v in step_losses(result.run_dir).values())
