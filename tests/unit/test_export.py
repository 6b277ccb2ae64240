"""`tunelab export`: hf (merged), adapter and gguf, checked by loading each result back with plain
transformers / peft and comparing outputs with base + adapter."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import typer
import yaml
from typer.testing import CliRunner

from tunelab.cli.export import export_cmd
from tunelab.export import ExportError, export
from tunelab.export.gguf import modelfile, permute_qk, template_default_system
from tunelab.models.load import ModelError

PROMPTS = ["hello world", "where is my card", "the capital of France is", "how do I reset my password"]
SYSTEM = "Answer in one short sentence."


# --- fixtures --------------------------------------------------------------------------------------

def _write_run(run: Path, base: Path, *, task: str = "chat", system: str | None = SYSTEM) -> Path:
    """The files a completed tunelab run has, around an adapter already saved in run/adapter."""
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(base)).save_pretrained(run / "tokenizer")
    cfg: dict[str, Any] = {"name": run.name, "task": task, "model": {"base": str(base)},
                           "data": {"train": "data/train.jsonl", "system_prompt": system},
                           "peft": {"method": "lora", "r": 8}}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (run / "summary.json").write_text(json.dumps({"name": run.name, "status": "completed", "task": task,
                                                  "steps": 4, "train_loss": 1.25, "eval_loss": 1.5}))
    (run / "data_report.json").write_text(json.dumps({"source": "data/train.jsonl", "rows": 20, "valid_rows": 20,
                                                      "train_rows": 18, "validation_rows": 2, "duplicates": 0,
                                                      "prompt_tokens": 321, "completion_tokens": 123,
                                                      "errors": [], "warnings": [], "ok": True}))
    (run / "eval.json").write_text(json.dumps({"task": task, "data": "data/test.jsonl", "rows": 5,
                                               "model": {"loss": 1.4, "perplexity": 4.05},
                                               "base": {"loss": 3.2, "perplexity": 24.5}}))
    return run


def _make_lora_run(run: Path, base: Path, *, seed: int = 1) -> Path:
    """A run whose LoRA adapter is far from zero (init_lora_weights=False), so merging really changes outputs."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base))
    peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                            init_lora_weights=False))
    peft.save_pretrained(run / "adapter")
    return _write_run(run, base)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="module")
def lora_run(tiny_model: Path, work: Path) -> Path:
    return _make_lora_run(work / "toy-run", tiny_model)


@pytest.fixture(scope="module")
def exported(lora_run: Path, work: Path) -> dict[str, Path]:
    """Each format exported once for the module: hf f32/f16, gguf f32/f16/bf16/q8_0."""
    res = {
        "hf": export(str(lora_run), "hf", work / "hf"),
        "hf-f16": export(str(lora_run), "hf", work / "hf-f16", dtype="f16"),
        "adapter": export(str(lora_run), "adapter", work / "adapter"),
    }
    for ftype in ("f32", "f16", "bf16"):
        res[f"gguf-{ftype}"] = export(str(lora_run), "gguf", work / f"gguf-{ftype}", dtype=ftype)
    res["gguf-q8_0"] = export(str(lora_run), "gguf", work / "gguf-q8_0", quantize="q8_0")
    return res


def _tok(path: Path | str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def _hf(path: Path | str) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


def _gguf(file: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(file.parent), gguf_file=file.name, dtype=torch.float32).eval()


def _base_plus_adapter(base: Path, run: Path) -> Any:
    from peft import PeftModel

    return PeftModel.from_pretrained(_hf(base), str(run / "adapter")).eval()


def _ids(tok: Any, text: str) -> torch.Tensor:
    return tok(text, return_tensors="pt").input_ids


@torch.no_grad()
def _greedy(model: Any, ids: torch.Tensor, n: int = 10) -> list[int]:
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                         pad_token_id=2, eos_token_id=None)  # no early stop: compare all n tokens
    return out[0, ids.shape[1]:].tolist()


@torch.no_grad()
def _logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    return model(ids).logits.float()


# --- hf ----------------------------------------------------------------------------------------------

def test_hf_merged_matches_base_plus_adapter(tiny_model: Path, lora_run: Path, exported: dict[str, Path]) -> None:
    from safetensors.torch import load_file

    out = exported["hf"]
    for f in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
              "chat_template.jinja", "README.md"):
        assert (out / f).is_file(), f
    assert not any("lora" in k for k in load_file(str(out / "model.safetensors")))
    assert not (out.parent / "hf.partial").exists()

    tok, merged, peft, base = _tok(out), _hf(out), _base_plus_adapter(tiny_model, lora_run), _hf(tiny_model)
    for p in PROMPTS:
        ids = _ids(tok, p)
        assert _greedy(merged, ids) == _greedy(peft, ids), p
        assert (_logits(merged, ids) - _logits(peft, ids)).abs().max() < 1e-4
        # the adapter matters: otherwise the comparison above proves nothing
        assert (_logits(base, ids) - _logits(peft, ids)).abs().max() > 0.1


def test_hf_model_card_and_tokenizer(lora_run: Path, exported: dict[str, Path]) -> None:
    out = exported["hf"]
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers")
    assert "## Training config" in card and "system_prompt: Answer in one short sentence." in card
    assert "## Training data" in card and "| train_rows | 18 |" in card
    assert "## Evaluation" in card and "| perplexity | 4.05 | 24.5 |" in card and "eval_loss" in card
    tok = _tok(out)
    assert tok.chat_template == _tok(lora_run / "tokenizer").chat_template
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == tok.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")


def test_hf_dtype(exported: dict[str, Path]) -> None:
    from safetensors.torch import load_file

    weights = load_file(str(exported["hf-f16"] / "model.safetensors"))
    assert {t.dtype for t in weights.values()} == {torch.float16}
    assert json.loads((exported["hf-f16"] / "config.json").read_text())["dtype"] == "float16"
    assert {t.dtype for t in load_file(str(exported["hf"] / "model.safetensors")).values()} == {torch.float32}


# --- adapter ------------------------------------------------------------------------------------------

def test_adapter_export_loads_with_peft(tiny_model: Path, lora_run: Path, exported: dict[str, Path]) -> None:
    from peft import PeftModel

    out = exported["adapter"]
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "README.md"} <= {
        p.name for p in out.iterdir()}
    assert "library_name: peft" in (out / "README.md").read_text()
    reloaded = PeftModel.from_pretrained(_hf(tiny_model), str(out)).eval()
    original = _base_plus_adapter(tiny_model, lora_run)
    ids = _ids(_tok(out), PROMPTS[0])
    assert torch.equal(_logits(reloaded, ids), _logits(original, ids))


def test_adapter_export_refuses_what_has_no_adapter(tiny_model: Path, lora_run: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="not a tunelab run.*--format hf"):
        export(str(tiny_model), "adapter", tmp_path / "a")
    full = tmp_path / "full-run"
    shutil.copytree(tiny_model, full / "model")
    _write_run(full, tiny_model)
    with pytest.raises(ExportError, match="full fine-tune.*--format hf"):
        export(str(full), "adapter", tmp_path / "b")
    assert not (tmp_path / "b").exists() and not (tmp_path / "b.partial").exists()
    # a full fine-tune exports fine as a whole model
    out = export(str(full), "hf", tmp_path / "c")
    ids = _ids(_tok(out), PROMPTS[1])
    assert torch.equal(_logits(_hf(out), ids), _logits(_hf(tiny_model), ids))


# --- gguf ---------------------------------------------------------------------------------------------

def test_permute_qk_matches_transformers_inverse() -> None:
    import numpy as np
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    w = np.arange(8 * 16 * 3, dtype=np.float32).reshape(8 * 16, 3)  # 8 heads of 16 rows
    undo = LlamaTensorProcessor(config={"num_attention_heads": 8, "num_key_value_heads": 2})
    assert np.array_equal(undo.process(permute_qk(w, 8, 8), "blk.0.attn_q.weight").weights, w)
    k = w[: 2 * 16]
    assert np.array_equal(undo.process(permute_qk(k, 8, 2), "blk.0.attn_k.weight").weights, k)
    assert not np.array_equal(permute_qk(w, 8, 8), w)


def test_gguf_f32_is_exact(exported: dict[str, Path]) -> None:
    merged, gg, tok = _hf(exported["hf"]), _gguf(exported["gguf-f32"]), _tok(exported["hf"])
    for p in PROMPTS:
        ids = _ids(tok, p)
        assert torch.equal(_logits(gg, ids), _logits(merged, ids)), p
        assert _greedy(gg, ids) == _greedy(merged, ids)


def test_gguf_f16_is_bit_exact_against_f16_weights(exported: dict[str, Path]) -> None:
    """Same rounding on both sides (HF export in f16, loaded in f32): any difference is the writer's fault."""
    hf16, gg, tok = _hf(exported["hf-f16"]), _gguf(exported["gguf-f16"]), _tok(exported["hf"])
    for p in PROMPTS:
        ids = _ids(tok, p)
        assert torch.equal(_logits(gg, ids), _logits(hf16, ids)), p


@pytest.mark.parametrize("ftype, max_diff, min_agree", [("f16", 5e-3, 1.0), ("bf16", 5e-2, 0.75),
                                                         ("q8_0", 0.1, 0.75)])
def test_gguf_close_to_merged(exported: dict[str, Path], ftype: str, max_diff: float, min_agree: float) -> None:
    merged, gg, tok = _hf(exported["hf"]), _gguf(exported[f"gguf-{ftype}"]), _tok(exported["hf"])
    worst, same, total = 0.0, 0, 0
    for p in PROMPTS:
        ids = _ids(tok, p)
        worst = max(worst, (_logits(gg, ids) - _logits(merged, ids)).abs().max().item())
        a, b = _greedy(gg, ids), _greedy(merged, ids)
        same += sum(x == y for x, y in zip(a, b, strict=True))
        total += len(a)
    print(f"\n{ftype}: max |logit diff| {worst:.3g}, greedy tokens agreeing {same}/{total}")
    assert worst < max_diff
    assert same / total >= min_agree


def test_gguf_tokenizer_round_trips(exported: dict[str, Path]) -> None:
    from transformers import AutoTokenizer

    hf_tok = _tok(exported["hf"])
    file = exported["gguf-q8_0"]
    gg_tok = AutoTokenizer.from_pretrained(str(file.parent), gguf_file=file.name)
    chat = hf_tok.apply_chat_template([{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hi 42"}],
                                      add_generation_prompt=True, tokenize=False)
    texts = [*PROMPTS, chat, "  leading spaces,\ttabs\nand newlines  ", "digits 0123456789 and 3.14",
             "unicode: café 東京 🙂", "<|im_start|>user\nhello<|im_end|>"]
    for text in texts:
        assert gg_tok(text).input_ids == hf_tok(text).input_ids, text
        assert gg_tok.decode(gg_tok(text).input_ids) == hf_tok.decode(hf_tok(text).input_ids)
    assert gg_tok.chat_template == hf_tok.chat_template
    assert (gg_tok.bos_token, gg_tok.eos_token, gg_tok.pad_token) == (hf_tok.bos_token, hf_tok.eos_token,
                                                                      hf_tok.pad_token)
    assert len(gg_tok) == len(hf_tok)


def test_gguf_metadata(exported: dict[str, Path]) -> None:
    from gguf import GGMLQuantizationType as Q
    from gguf import GGUFReader

    r = GGUFReader(str(exported["gguf-q8_0"]))
    f = {k: v.contents() for k, v in r.fields.items() if k not in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges",
                                                                  "tokenizer.ggml.token_type")}
    assert f["general.architecture"] == "llama" and f["general.name"] == "toy-run"
    assert f["general.file_type"] == 7  # MOSTLY_Q8_0
    assert f["tokenizer.ggml.model"] == "gpt2" and f["tokenizer.ggml.pre"] == "gpt-2"
    assert (f["llama.block_count"], f["llama.embedding_length"], f["llama.feed_forward_length"]) == (2, 64, 128)
    assert (f["llama.attention.head_count"], f["llama.attention.head_count_kv"]) == (4, 2)
    assert f["llama.context_length"] == 512 and f["llama.vocab_size"] == 400
    assert f["tokenizer.ggml.eos_token_id"] == 2 and f["tokenizer.ggml.add_bos_token"] is False
    types = {t.name: t.tensor_type for t in r.tensors}
    assert "output.weight" not in types  # tied: llama.cpp reuses token_embd
    assert types["token_embd.weight"] == Q.Q8_0 and types["blk.1.ffn_down.weight"] == Q.Q8_0
    assert types["blk.0.attn_norm.weight"] == Q.F32 and types["output_norm.weight"] == Q.F32
    token_types = list(r.fields["tokenizer.ggml.token_type"].contents())
    assert token_types[:3] == [3, 3, 3] and set(token_types[3:]) == {1}  # specials are CONTROL


@pytest.mark.parametrize("ftype, max_diff", [("f16", 5e-3), ("q8_0", 0.1)])
def test_gguf_runs_in_llama_cpp(exported: dict[str, Path], ftype: str, max_diff: float) -> None:
    """With llama-cpp-python installed (not a dependency: it compiles llama.cpp), the file runs in llama.cpp
    itself: same token ids, logits close to the merged model's."""
    llama_cpp = pytest.importorskip("llama_cpp")
    import numpy as np

    merged, tok = _hf(exported["hf"]), _tok(exported["hf"])
    llm = llama_cpp.Llama(model_path=str(exported[f"gguf-{ftype}"]), n_ctx=128, logits_all=True, verbose=False,
                          n_threads=1)
    chat = tok.apply_chat_template([{"role": "user", "content": "where is my card"}], add_generation_prompt=True,
                                   tokenize=False)
    for text in [*PROMPTS, chat]:
        ids = tok(text).input_ids
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids, text
        llm.reset()
        llm.eval(ids)
        got = np.array(llm.eval_logits)
        want = _logits(merged, torch.tensor([ids]))[0].numpy()
        assert np.abs(got - want).max() < max_diff, text
    assert llm.token_eos() == tok.eos_token_id


def test_interrupted_conversion_is_not_taken_for_complete(exported: dict[str, Path], tmp_path: Path) -> None:
    """A GGUF converted for training (here the tiny model's own export): a folder left by an interrupted
    conversion is converted again, not loaded half."""
    from tunelab.models.gguf_convert import COMPLETE, convert_gguf, is_complete

    out = tmp_path / "converted"
    (out.with_name("converted.partial")).mkdir()
    out.mkdir()
    (out / "config.json").write_text("{}")  # looks like a model dir, but no completion marker
    assert not is_complete(out)
    convert_gguf(exported["gguf-f32"], out, quiet=True)
    assert (out / COMPLETE).is_file() and (out / "model.safetensors").is_file()
    assert not out.with_name("converted.partial").exists()


def test_modelfile(exported: dict[str, Path]) -> None:
    file = exported["gguf-q8_0"]
    text = (file.parent / "Modelfile").read_text()
    assert text.startswith(f"FROM ./{file.name}\n")
    assert 'TEMPLATE """{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>' in text
    assert "{{ .Content }}<|im_end|>" in text and '<|im_start|>assistant\n"""' in text
    assert 'PARAMETER stop "<|im_end|>"' in text
    assert f'SYSTEM """{SYSTEM}"""' in text
    assert "llama-cli -m" in (file.parent / "README.md").read_text()


def test_modelfile_other_cases() -> None:
    smol = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
            "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM<|im_end|>\n' }}{% endif %}"
            "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}")
    assert template_default_system(smol) == "You are a helpful AI assistant named SmolLM"
    text = modelfile("m.gguf", chat_template=smol, task="chat", system=None, eos_token="<|im_end|>")
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM"""' in text
    text = modelfile("m.gguf", chat_template=smol, task="completion", system=None, eos_token="<|im_end|>")
    assert 'TEMPLATE """{{ .Prompt }}"""' in text and "SYSTEM" not in text
    text = modelfile("m.gguf", chat_template="{{ messages }}", task="chat", system="Hi", eos_token="</s>")
    assert "# No TEMPLATE" in text and 'PARAMETER stop "</s>"' in text and 'SYSTEM """Hi"""' in text


def test_gguf_qwen2_round_trips(tiny_model: Path, tmp_path: Path) -> None:
    """The second supported architecture: no Q/K permutation, q/k/v biases."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = _tok(tiny_model)
    torch.manual_seed(3)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    src = tmp_path / "qwen"
    model = Qwen2ForCausalLM(cfg)
    with torch.no_grad():  # biases start at zero; make them count
        for layer in model.model.layers:
            layer.self_attn.q_proj.bias.normal_()
            layer.self_attn.k_proj.bias.normal_()
    model.save_pretrained(src)
    tok.save_pretrained(src)
    file = export(str(src), "gguf", tmp_path / "out", dtype="f32")
    gg = _gguf(file)
    assert gg.config.model_type == "qwen2" and not gg.config.tie_word_embeddings
    ids = _ids(tok, PROMPTS[2])
    assert torch.equal(_logits(gg, ids), _logits(_hf(src), ids))


# --- classification heads ---------------------------------------------------------------------------

def test_classification_head_run(tiny_model: Path, tmp_path: Path) -> None:
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForSequenceClassification

    labels = ["card_arrival", "lost_card", "reset_password"]
    run = tmp_path / "head-run"
    torch.manual_seed(5)
    head = AutoModelForSequenceClassification.from_pretrained(str(tiny_model), num_labels=3)
    head.config.pad_token_id = 2
    get_peft_model(head, LoraConfig(task_type="SEQ_CLS", r=4, target_modules="all-linear",
                                    init_lora_weights=False)).save_pretrained(run / "adapter")
    _write_run(run, tiny_model, task="classification")
    (run / "labels.json").write_text(json.dumps(labels))

    with pytest.raises(ExportError, match="classification head.*llama"):
        export(str(run), "gguf", tmp_path / "g")
    assert not (tmp_path / "g").exists()

    out = export(str(run), "hf", tmp_path / "hf")
    merged = AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    assert merged.config.id2label == dict(enumerate(labels))
    base = AutoModelForSequenceClassification.from_pretrained(str(tiny_model), num_labels=3)
    base.config.pad_token_id = 2
    peft = PeftModel.from_pretrained(base, str(run / "adapter")).eval()
    ids = _ids(_tok(out), PROMPTS[1])
    with torch.no_grad():
        assert (merged(ids).logits - peft(ids).logits).abs().max() < 1e-4


# --- errors and atomicity ---------------------------------------------------------------------------

def test_errors(tiny_model: Path, lora_run: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("not a model")
    with pytest.raises(ModelError, match="not a model"):
        export(str(junk), "hf", tmp_path / "o1")

    unfinished = tmp_path / "unfinished"
    shutil.copytree(lora_run, unfinished)
    summary = json.loads((unfinished / "summary.json").read_text()) | {"status": "interrupted"}
    (unfinished / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(ModelError, match="did not finish.*--resume"):
        export(str(unfinished), "gguf", tmp_path / "o2")

    with pytest.raises(ExportError, match="unknown export format 'onnx'.*hf, adapter, gguf"):
        export(str(lora_run), "onnx", tmp_path / "o3")
    with pytest.raises(ExportError, match="--quantize applies to --format gguf only"):
        export(str(lora_run), "hf", tmp_path / "o4", quantize="q8_0")
    with pytest.raises(ExportError, match="unknown --quantize 'q4_k'"):
        export(str(lora_run), "gguf", tmp_path / "o5", quantize="q4_k")
    with pytest.raises(ExportError, match="contains the model being exported"):
        export(str(lora_run), "hf", lora_run.parent, force=True)
    assert (lora_run / "config.yaml").is_file()
    assert not list(tmp_path.glob("o*"))  # no output and no .partial left by any of the failures


def test_non_empty_out_needs_force(lora_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="already exists and is not empty.*--force"):
        export(str(lora_run), "adapter", out)
    assert (out / "keep.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    export(str(lora_run), "adapter", empty)  # an empty directory is fine
    export(str(lora_run), "adapter", out, force=True)
    assert not (out / "keep.txt").exists() and (out / "adapter_config.json").is_file()
    assert not (tmp_path / "out.old").exists() and not (tmp_path / "out.partial").exists()


def test_failed_export_leaves_nothing(lora_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tunelab.export.gguf as gg

    real = gg.write_gguf

    def half_then_fail(model: Any, tok: Any, path: Path, **kw: Any) -> None:
        real(model, tok, path, **kw)
        raise OSError("disk full")

    monkeypatch.setattr(gg, "write_gguf", half_then_fail)
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.gguf").write_text("previous export")
    with pytest.raises(OSError, match="disk full"):
        export(str(lora_run), "gguf", out, force=True)
    assert [p.name for p in out.iterdir()] == ["old.gguf"]  # the previous export is untouched
    assert not (tmp_path / "out.partial").exists()


# --- the CLI, on a run trained by tunelab -------------------------------------------------------------

def test_cli_on_a_trained_run(tiny_model: Path, tmp_path: Path) -> None:
    import tunelab
    from tests.helpers import config, write_chat

    data = write_chat(tmp_path / "train.jsonl", 8)
    run = tunelab.train(config(tiny_model, tmp_path, "trained", data, "train.max_steps=2", "train.batch_size=2",
                               f"data.system_prompt={SYSTEM}")).run_dir

    from tests.helpers import tunelab_cli

    # the command's own code: options, exit code and output
    r = tunelab_cli("export", run, "--format", "gguf", "--out", tmp_path / "g", "--quantize", "q8_0", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    file = tmp_path / "g" / "trained.q8_0.gguf"
    assert str(file) in r.stdout.replace("\n", "") and file.is_file()
    card = (tmp_path / "g" / "README.md").read_text()
    assert "## Training data" in card and "## Training config" in card and "max_steps: 2" in card
    assert f'SYSTEM """{SYSTEM}"""' in (tmp_path / "g" / "Modelfile").read_text()

    app = typer.Typer()
    app.command()(export_cmd)
    runner = CliRunner()
    r = runner.invoke(app, [str(run), "--format", "gguf", "--out", str(tmp_path / "g")])
    assert r.exit_code == 2 and "already exists" in r.output and "--force" in r.output
    r = runner.invoke(app, [str(run), "--format", "tflite", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "unknown export format" in r.output

    r = runner.invoke(app, [str(run), "-f", "hf", "-o", str(tmp_path / "h")])
    assert r.exit_code == 0, r.output
    lm = tunelab.load(str(run))
    merged, tok = _hf(tmp_path / "h"), lm.tokenizer
    ids = _ids(tok, "where is my card")
    assert _greedy(merged, ids) == _greedy(lm.model, ids)


# --- the real default model -------------------------------------------------------------------------

@pytest.mark.slow
def test_default_model_exports_to_gguf(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from tunelab.models.load import load
    from tunelab.models.registry import DEFAULT_MODEL

    lm = load(DEFAULT_MODEL)
    hf_model, tok = lm.model.float().cpu().eval(), lm.tokenizer
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True).input_ids
    want = _greedy(hf_model, ids, 12)
    print(f"\nHF: {tok.decode(want)!r}")

    f16 = export(DEFAULT_MODEL, "gguf", tmp_path / "f16")
    q8 = export(DEFAULT_MODEL, "gguf", tmp_path / "q8", quantize="q8_0")
    assert q8.stat().st_size < f16.stat().st_size * 0.6
    gg_tok = AutoTokenizer.from_pretrained(str(f16.parent), gguf_file=f16.name)
    assert gg_tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False) == \
        tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert gg_tok("Numbers 12345 and text").input_ids == tok("Numbers 12345 and text").input_ids

    got = _greedy(_gguf(f16), ids, 12)
    print(f"GGUF f16: {tok.decode(got)!r}")
    assert got == want
    q8_model = _gguf(q8)
    got_q8 = _greedy(q8_model, ids, 12)
    diff = (_logits(q8_model, ids) - _logits(hf_model, ids)).abs().max().item()
    print(f"GGUF q8_0: {tok.decode(got_q8)!r}, max |logit diff| {diff:.3g}")
    assert "Paris" in tok.decode(got_q8)
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM' in (q8.parent / "Modelfile").read_text()
