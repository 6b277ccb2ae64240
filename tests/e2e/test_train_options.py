"""Training options on the tiny model: DoRA, early stopping, auto hyperparameters, interactive chat."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import config, metrics, tunelab_cli, write_chat
from tunelab.recipes import dispatch


def test_dora_trains_a_dora_adapter(tiny_model: Path, tmp_path: Path) -> None:
    data = write_chat(tmp_path / "chat.jsonl")
    cfg = config(tiny_model, tmp_path, "dora", data, "peft.method=dora", "train.max_steps=3", "train.batch_size=4")
    result = dispatch.run(cfg)
    adapter_cfg = json.loads((result.run_dir / "adapter" / "adapter_config.json").read_text())
    assert result.status == "completed" and adapter_cfg["use_dora"] is True


def test_early_stopping_stops_when_validation_loss_stops_improving(tiny_model: Path, tmp_path: Path) -> None:
    data = write_chat(tmp_path / "chat.jsonl", n=40)
    # No decrease is ever large enough to count, so training stops after patience + 1 evaluations.
    cfg = config(tiny_model, tmp_path, "early", data, "data.val_fraction=0.2", "train.max_steps=30",
                 "train.batch_size=4", "train.eval_every=1", "train.early_stopping.patience=2",
                 "train.early_stopping.min_delta=100")
    result = dispatch.run(cfg)
    evals = [m for m in metrics(result.run_dir) if "eval_loss" in m]
    assert result.status == "completed"
    assert result.summary["steps"] == 3 and len(evals) == 3
    assert (result.run_dir / "adapter" / "adapter_model.safetensors").is_file()


def test_auto_hyperparameters_are_resolved_and_saved(tiny_model: Path, tmp_path: Path) -> None:
    data = write_chat(tmp_path / "chat.jsonl", n=30)
    cfg = config(tiny_model, tmp_path, "auto", data, "train.max_steps=1")
    result = dispatch.run(cfg)
    resolved = json.loads((result.run_dir / "resolved.json").read_text())
    assert resolved["epochs"] == 10  # 30 rows -> the most passes
    assert resolved["learning_rate"] == 1e-3  # LoRA on a small model
    assert resolved["batch_size"] == 32 and resolved["total_steps"] == 1
    assert 0 < resolved["trainable_params"] < resolved["total_params"]


def test_chat_answers_and_exits(tiny_model: Path, tmp_path: Path) -> None:
    proc = tunelab_cli("chat", tiny_model, "-n", "4", cwd=tmp_path, timeout=120,
                       input="hello there\n/reset\nwhere is my card\n/exit\n")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("model") == 2  # one reply per question, none for /reset or /exit


def test_accuracy_is_logged_at_each_evaluation_and_can_pick_the_best(tiny_model: Path, tmp_path: Path) -> None:

    from tests.helpers import write_labeled

    data = write_labeled(tmp_path / "tickets.csv")
    cfg = config(tiny_model, tmp_path, "monitor", data, "task=classification",
                 "data.columns={text: text, label: category}", "data.val_fraction=0.25", "train.max_steps=4",
                 "train.batch_size=4", "train.eval_every=2", "train.monitor=accuracy")
    result = dispatch.run(cfg)
    evals = [m for m in metrics(result.run_dir) if "eval_loss" in m]
    assert [m["step"] for m in evals] == [2, 4]
    assert all(0.0 <= m["eval_accuracy"] <= 1.0 for m in evals)
    best = max(evals, key=lambda m: m["eval_accuracy"])  # ties: the first one is kept
    assert result.summary["best_checkpoint"].endswith(f"checkpoint-{best['step']}")
    assert result.summary["eval_loss"] == best["eval_loss"]
