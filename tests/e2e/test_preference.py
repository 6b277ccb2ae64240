"""Preference tuning end to end through the CLI on the tiny model: every method trains a few steps,
the loss is finite, the adapter moves, the method's metrics are logged; plus DPO's invariants."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.helpers import metrics, tunelab_cli

PAIRS = [
    ("where is my card", "Your card is on its way and arrives in 3 days.", "no idea"),
    ("how do I reset my password", "Open the app and tap reset password.", "figure it out"),
    ("what is the capital of France", "The capital of France is Paris.", "Rome"),
    ("hello", "Hello! How can I help you today?", "what"),
]


def write_pairs(path: Path, n: int = 16) -> Path:
    rows = []
    for i in range(n):
        prompt, chosen, rejected = PAIRS[i % len(PAIRS)]
        if i % 2:  # both TRL forms: plain strings and conversations
            rows.append({"prompt": [{"role": "user", "content": prompt}],
                         "chosen": [{"role": "assistant", "content": chosen}],
                         "rejected": [{"role": "assistant", "content": rejected}]})
        else:
            rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_config(tmp_path: Path, tiny_model: Path, method: str, *extra: tuple[str, object]) -> Path:
    cfg = {"name": f"pref-{method}", "method": method, "output_dir": "runs",
           "model": {"base": str(tiny_model), "max_length": 128},
           "data": {"train": str(write_pairs(tmp_path / "pairs.jsonl")), "val_fraction": 0.25},
           "train": {"max_steps": 3, "batch_size": 4, "learning_rate": 1e-2, "threads": 1, "eval_every": 3},
           "eval": {"probes": {"enabled": False}}}
    for key, value in extra:
        section, _, name = key.partition(".")
        cfg.setdefault(section, {})[name] = value
    path = tmp_path / f"{method}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("method", ["dpo", "kto", "orpo", "cpo", "simpo", "reward"])
def test_each_method_trains_through_the_cli(method: str, tiny_model: Path, tmp_path: Path) -> None:
    r = tunelab_cli("train", write_config(tmp_path, tiny_model, method), cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "runs" / f"pref-{method}"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["method"] == method and summary["steps"] == 3
    losses = [row["loss"] for row in metrics(run) if "loss" in row]
    assert losses and all(math.isfinite(x) for x in losses)
    weights = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    lora_b = [w for k, w in weights.items() if "lora_B" in k]
    assert lora_b and any(w.abs().sum() > 0 for w in lora_b)  # B starts at zero: the adapter moved
    logged = set().union(*(row.keys() for row in metrics(run)))
    if method == "reward":
        assert "pairwise_accuracy" in summary and 0 <= summary["pairwise_accuracy"] <= 1
        assert any(k.startswith("score") or ".score." in k for k in weights)  # the head is saved with it
        assert json.loads((run / "labels.json").read_text()) == ["reward"]
    else:
        assert any(k.startswith("rewards/") or k.startswith("eval_rewards/") for k in logged), logged
    if method == "dpo":
        assert 0 <= summary["preference_accuracy"] <= 1 and "eval_rewards_margins" in summary
    # the evaluation at the last step is the held-out result: the run does not score the same model twice
    final_evals = [row for row in metrics(run) if "eval_loss" in row and row["step"] == 3]
    assert len(final_evals) == 1 and summary["eval_loss"] == pytest.approx(final_evals[0]["eval_loss"])
    if method in ("orpo", "cpo", "simpo"):  # no reference model: the starting model's own ranking is the baseline
        assert 0 <= summary["base_preference_accuracy"] <= 1
    # the report judges held-out pairs and draws the method's curves
    rep = json.loads((run / "report.json").read_text())
    assert rep["preference"]["kind"] == ("reward" if method == "reward" else "pairs")
    assert rep["verdict"]["kind"] in ("better", "worse", "unclear", "same", "no_metrics", "no_comparison")
    assert "preference_curves" in rep["charts"], rep["preference"]["panels"]


def test_dpo_variants_and_errors_through_the_cli(tiny_model: Path, tmp_path: Path) -> None:
    # with the probes on (the default), the DPO model is probed for forgetting and bias like an SFT model
    r = tunelab_cli("train", write_config(tmp_path, tiny_model, "dpo", ("preference.loss_type", "ipo"),
                                          ("preference.beta", 0.5), ("eval.probes", {"enabled": True})),
                    cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "runs" / "pref-dpo"
    probes = json.loads((run / "probes.json").read_text())
    assert probes["sides"] == ["base", "tuned"] and "forgetting" in probes and "bias" in probes
    assert "probes" not in json.loads((run / "report.json").read_text())["missing"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "hi", "chosen": "same", "rejected": "same"}) + "\n")
    cfg = write_config(tmp_path, tiny_model, "dpo", ("data.train", str(bad)))
    r = tunelab_cli("train", cfg, cwd=tmp_path)
    assert r.returncode == 2 and "bad.jsonl:1" in r.stderr
    assert not (tmp_path / "runs" / "pref-dpo-2").exists()
    # a broken probe file is found before anything trains
    broken = tmp_path / "probes.yaml"
    broken.write_text("templates: [\n")
    cfg = write_config(tmp_path, tiny_model, "dpo", ("eval.probes", {"enabled": True, "bias_files": [str(broken)]}))
    r = tunelab_cli("train", cfg, cwd=tmp_path)
    assert r.returncode == 2 and "probes.yaml" in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "runs" / "pref-dpo-2").exists()


# --- DPO invariants ----------------------------------------------------------------------------------

def _dpo_trainer(tiny_model: Path, tmp_path: Path, rows: list[dict[str, str]], beta: float):  # noqa: ANN202
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    from tunelab.models.load import load_tokenizer

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model),
                           LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    args = DPOConfig(output_dir=str(tmp_path / "out"), beta=beta, per_device_train_batch_size=len(rows),
                     use_cpu=True, bf16=False, gradient_checkpointing=False, report_to="none", max_length=64,
                     disable_dropout=True)
    return DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                      processing_class=load_tokenizer(str(tiny_model)))


@pytest.mark.parametrize("beta", [0.1, 2.0])
def test_dpo_loss_is_log2_while_the_policy_is_the_reference(tiny_model: Path, tmp_path: Path, beta: float) -> None:
    rows = [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in PAIRS]
    trainer = _dpo_trainer(tiny_model, tmp_path, rows, beta)
    batch = next(iter(trainer.get_train_dataloader()))
    loss = trainer.compute_loss(trainer.model, batch)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-5)


def test_dpo_pair_with_identical_answers_gives_zero_gradient(tiny_model: Path, tmp_path: Path) -> None:
    def lora_b_grad(rows: list[dict[str, str]]) -> float:
        trainer = _dpo_trainer(tiny_model, tmp_path, rows, 0.1)
        batch = next(iter(trainer.get_train_dataloader()))
        trainer.model.zero_grad()
        trainer.compute_loss(trainer.model, batch).backward()
        return sum(p.grad.abs().sum().item() for n, p in trainer.model.named_parameters()
                   if "lora_B" in n and p.grad is not None)

    same = lora_b_grad([{"prompt": "hello", "chosen": "same answer", "rejected": "same answer"}])
    different = lora_b_grad([{"prompt": "hello", "chosen": "a good answer", "rejected": "no"}])
    assert different > 1e-3 and same < 1e-5 * different  # zero up to float rounding between batch rows
