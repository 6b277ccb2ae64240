"""End to end on the tiny model: the `tunelab` CLI (init -> data check -> train -> generate as real processes,
once; config and data errors in this process), and through the Python API: learning, LoRA vs full,
classification."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

import tunelab
from tests.helpers import (
    CHATS,
    LABELED,
    chat_line,
    config,
    metrics,
    step_losses,
    tunelab_cli,
    tunelab_process,
    write_chat,
    write_labeled,
)
from tunelab.config import ConfigError
from tunelab.recipes import dispatch

# --- the CLI ---------------------------------------------------------------------------------------

def test_cli_init_check_train_generate(tiny_model: Path, tmp_path: Path) -> None:
    write_chat(tmp_path / "data" / "train.jsonl", 20)

    r = tunelab_process("init", "--task", "chat", "--out", "cfg.yaml", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    cfg = yaml.safe_load((tmp_path / "cfg.yaml").read_text())
    assert cfg["task"] == "chat"
    cfg["data"]["train"] = "data/train.jsonl"  # relative to where `tunelab train` runs, as a user writes it
    cfg["model"]["base"] = str(tiny_model)
    cfg["output_dir"] = "runs"
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))

    r = tunelab_process("data", "check", "data/train.jsonl", "--model", tiny_model, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "OK" in r.stderr and "FAILED" not in r.stderr

    r = tunelab_process("train", "cfg.yaml", "train.max_steps=4", "train.batch_size=2", "train.eval_every=2",
                    "train.threads=1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    run = tmp_path / "runs" / cfg["name"]
    assert run.is_dir(), r.stderr

    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["max_steps"] == 4 and saved["data"]["train"] == "data/train.jsonl"
    report = json.loads((run / "data_report.json").read_text())
    assert report["ok"] and report["rows"] == 20
    assert report["train_rows"] + report["validation_rows"] == 20 and report["validation_rows"] == 2

    rows = metrics(run)
    assert sorted(step_losses(run)) == [1, 2, 3, 4]  # a loss for every step
    assert all(v == v and v > 0 for v in step_losses(run).values())
    assert any("eval_loss" in r for r in rows)

    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 4
    assert summary["train_rows"] == 18 and "eval_loss" in summary and "train_loss" in summary

    adapter = run / "adapter"
    assert (adapter / "adapter_config.json").is_file()
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    assert weights and all("lora_" in k for k in weights)  # the adapter alone, not the base weights
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_model)), str(adapter))
    assert sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) > 0
    assert (run / "tokenizer").is_dir()

    r = tunelab_process("generate", run, "hello", "--max-new-tokens", "5", cwd=tmp_path)
    assert r.returncode == 0, r.stderr


def test_cli_misspelled_override_names_the_key(tiny_model: Path, tmp_path: Path) -> None:
    data = write_chat(tmp_path / "train.jsonl", 4)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump({
        "name": "typo", "output_dir": str(tmp_path / "runs"), "model": {"base": str(tiny_model)},
        "data": {"train": str(data)}}))
    r = tunelab_cli("train", "cfg.yaml", "train.learning_rat=1e-3", cwd=tmp_path)
    assert r.returncode != 0
    assert "train.learning_rat" in r.stderr and "train.learning_rate" in r.stderr  # the key and a suggestion
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "runs").exists()


def test_misspelled_key_in_file_names_file_and_line(tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("name: x\ntrain:\n  max_steps: 3\n  batchsize: 2\n")
    with pytest.raises(ConfigError) as err:
        tunelab.load_config(str(cfg))
    assert f"{cfg}:4" in str(err.value) and "train.batchsize" in str(err.value)
    assert "train.batch_size" in str(err.value)


@pytest.fixture
def bad_data(tmp_path: Path) -> tuple[Path, list[int]]:
    """Two good rows and three bad ones (lines 2, 4 and 5)."""
    lines = [
        chat_line("hello", "the quick brown fox"),
        json.dumps({"messages": [{"role": "user", "content": "no reply here"}]}),
        chat_line("where is my card", "my card has not arrived yet"),
        '{"messages": [ this is not json',
        json.dumps({"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]}),
        chat_line("reset", "how do I reset my password"),
    ]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, [2, 4, 5]


def _bad_cfg(tiny_model: Path, tmp_path: Path, data: Path) -> Path:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump({
        "name": "bad", "output_dir": str(tmp_path / "runs"), "model": {"base": str(tiny_model)},
        "data": {"train": str(data), "val_fraction": 0},
        "train": {"max_steps": 2, "batch_size": 2, "threads": 1}}))
    return cfg


def test_cli_bad_rows_fail_by_default(tiny_model: Path, tmp_path: Path, bad_data) -> None:  # noqa: ANN001
    data, bad_lines = bad_data
    r = tunelab_cli("train", _bad_cfg(tiny_model, tmp_path, data), cwd=tmp_path)
    assert r.returncode != 0
    for n in bad_lines:
        assert f"{data}:{n}:" in r.stderr, r.stderr
    for n in (1, 3, 6):
        assert f"{data}:{n}:" not in r.stderr
    assert "data.on_error=skip" in r.stderr and "Traceback" not in r.stderr
    run = tmp_path / "runs" / "bad"
    assert not run.exists()  # every problem is found before anything is written


def test_cli_bad_rows_skipped_on_request(tiny_model: Path, tmp_path: Path, bad_data) -> None:  # noqa: ANN001
    data, bad_lines = bad_data
    r = tunelab_cli("train", _bad_cfg(tiny_model, tmp_path, data), "data.on_error=skip", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    run = tmp_path / "runs" / "bad"
    skipped = [json.loads(ln) for ln in (run / "skipped_rows.jsonl").read_text().splitlines()]
    assert sorted({int(p["where"].rsplit(":", 1)[1]) for p in skipped}) == bad_lines
    assert all(p["where"].startswith(str(data)) and p["message"] for p in skipped)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["train_rows"] == 3
    assert json.loads((run / "data_report.json").read_text())["valid_rows"] == 3


# --- the Python API --------------------------------------------------------------------------------

def test_api_functions_survive_submodule_imports() -> None:
    """The API functions tunelab.train / tunelab.generate stay callable after the library's own
    submodules are imported (no submodule shares their names)."""
    import importlib

    import tunelab.inference  # noqa: F401
    import tunelab.training.trainer as trainer_module
    from tunelab.data.records import DataError
    from tunelab.models import ModelError

    assert trainer_module is importlib.import_module("tunelab.training.trainer")
    assert callable(tunelab.train) and callable(tunelab.generate)
    for _ in range(2):  # a second call used to fail: "'module' object is not callable"
        with pytest.raises(DataError, match="data.train is empty"):
            tunelab.train(tunelab.load_config(None, ["model.base=unused"]))
    with pytest.raises(ModelError, match="no such file"):
        tunelab.generate("./no-such-model", "hi")


# --- learning --------------------------------------------------------------------------------------

class _KeepModel:
    """A trainer callback that keeps the trained model (on_train_end)."""

    def __init__(self) -> None:
        from transformers import TrainerCallback

        outer = self

        class Cb(TrainerCallback):
            def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
                outer.model = model

        self.callback = Cb()
        self.model: Any = None


def _base_weights(tiny_model: Path) -> dict[str, torch.Tensor]:
    return load_file(str(tiny_model / "model.safetensors"))


def test_loss_goes_down_and_lora_leaves_base_alone(tiny_model: Path, tmp_path: Path) -> None:
    data = tmp_path / "toy.jsonl"
    data.write_text("".join(chat_line(*c) + "\n" for c in CHATS[:3]))
    keep = _KeepModel()
    cfg = config(tiny_model, tmp_path, "toy", data, "train.max_steps=20", "train.batch_size=3",
                 "train.learning_rate=1e-2", "train.lr_scheduler=constant", "train.warmup_ratio=0")
    result = dispatch.run(cfg, callbacks=[keep.callback])
    assert result.status == "completed"

    losses = [step_losses(result.run_dir)[s] for s in range(1, 21)]
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    # a random 2-layer model with frozen norms and tied embeddings can't get far under LoRA, but it learns
    assert last < first - 0.5, losses

    base = _base_weights(tiny_model)
    trained = keep.model.get_base_model().state_dict()
    lora = {k: v for k, v in trained.items() if "lora_" in k}
    assert lora and any(v.abs().sum() > 0 for k, v in lora.items() if "lora_B" in k)  # B starts at zero
    n_compared = 0
    for key, value in trained.items():
        if "lora_" in key:
            continue
        orig = key.replace(".base_layer", "")
        if orig in base:
            assert torch.equal(value, base[orig]), f"base weight {orig} changed under LoRA"
            n_compared += 1
    assert n_compared >= len(base) - 1  # every base weight (lm_head is tied to the embeddings)

    saved = load_file(str(result.run_dir / "adapter" / "adapter_model.safetensors"))
    b = next(k for k in saved if "lora_B" in k)
    assert saved[b].abs().sum() > 0


def test_full_finetune_changes_base_weights(tiny_model: Path, tmp_path: Path) -> None:
    data = write_chat(tmp_path / "train.jsonl", 6)
    cfg = config(tiny_model, tmp_path, "full", data, "peft.method=full", "train.max_steps=3",
                 "train.batch_size=2", "train.learning_rate=1e-3")
    result = tunelab.train(cfg)
    assert result.status == "completed"
    run = result.run_dir
    assert (run / "model" / "config.json").is_file() and not (run / "adapter").exists()
    tuned = load_file(str(run / "model" / "model.safetensors"))
    base = _base_weights(tiny_model)
    assert not any("lora_" in k for k in tuned)
    changed = [k for k in base if k in tuned and not torch.equal(base[k], tuned[k])]
    assert len(changed) >= len(base) // 2, changed

    lm = tunelab.load(str(run))
    assert lm.resolved.path == str(run / "model") and lm.resolved.adapter is None
    w = "model.layers.0.mlp.down_proj.weight"
    assert torch.equal(lm.model.state_dict()[w], tuned[w])


# --- classification --------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["generate", "head"])
def test_classification(tiny_model: Path, tmp_path: Path, mode: str) -> None:
    data = write_labeled(tmp_path / "tickets.csv")
    labels = sorted({lab for _, lab in LABELED})
    cfg = config(tiny_model, tmp_path, f"cls-{mode}", data, "task=classification",
                 f"classification.mode={mode}", "data.columns={text: text, label: category}",
                 "data.val_fraction=0.25", "train.max_steps=4", "train.batch_size=4", "eval.batch_size=8")
    result = tunelab.train(cfg)
    assert result.status == "completed"
    s = result.summary
    assert s["status"] == "completed" and s["validation_rows"] == 4 and s["eval_rows"] == 4
    assert 0.0 <= s["tuned_accuracy"] <= 1.0
    assert "base_accuracy" in s
    preds = json.loads((result.run_dir / "predictions.json").read_text())
    assert len(preds) == 4 and all(p["predicted"] in labels and p["label"] in labels for p in preds)
    assert all(p["where"].startswith(f"{data}:") for p in preds)

    lm = tunelab.load(str(result.run_dir))
    reply = tunelab.generate(lm, "where is my card", max_new_tokens=8)
    if mode == "head":
        assert json.loads((result.run_dir / "labels.json").read_text()) == labels
        assert lm.labels == labels and reply in labels
        assert all("base_predicted" in p for p in preds)  # the untrained head was scored too
    else:
        assert not (result.run_dir / "labels.json").exists() and lm.labels is None
        assert isinstance(reply, str)


def test_training_writes_the_report(tiny_model: Path, tmp_path: Path) -> None:
    data = write_chat(tmp_path / "chat.jsonl")
    result = tunelab.train(config(tiny_model, tmp_path, "with-report", data, "train.max_steps=2"))
    html = (result.run_dir / "report.html").read_text()
    assert "data:image/png;base64," in html and (result.run_dir / "report.json").is_file()
