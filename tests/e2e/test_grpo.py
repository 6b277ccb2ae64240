"""Online RL end to end on a tiny random model, through `tunelab train`: GRPO and RLOO train a LoRA adapter
from sampled answers and their rewards, log rewards to metrics.jsonl, and leave a run that loads like SFT's."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from safetensors.torch import load_file

from tests.helpers import build_tiny_model, metrics, tunelab_cli

PROBLEMS = [("what is 2 plus 3", "5"), ("what is 4 plus 4", "#### 8"), ("hello how many is 7", "7"),
            ("the quick fox has 9", "9"), ("my card number 1", "1"), ("reset 6 times", "6")]


@pytest.fixture(scope="module")
def varied_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Sampled answers differ in length and text, so rewards differ within a group and there is a gradient."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-varied"), init_std=0.2)


def write_prompts(path: Path, n: int = 12) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"prompt": PROBLEMS[i % len(PROBLEMS)][0], "answer": PROBLEMS[i % len(PROBLEMS)][1]} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_config(tmp_path: Path, model: Path, method: str, **rl: Any) -> Path:
    cfg = {"name": method, "method": method, "output_dir": "runs",
           "model": {"base": str(model), "max_length": 96, "precision": "fp32"},
           "data": {"train": "data/train.jsonl", "val_fraction": 0.25},
           "peft": {"r": 4, "alpha": 8},
           "rl": {"rewards": ["numeric", "my_rewards:variety"], "num_generations": 2, "max_completion_tokens": 8}
           | rl,
           "train": {"max_steps": 3, "batch_size": 2, "learning_rate": 0.01, "threads": 1},
           "eval": {"probes": {"enabled": False}, "batch_size": 4}}
    # a user reward (module:function, imported from where tunelab runs) that differs between any two sampled
    # answers: a learning signal even where numeric is 0 for every answer of the random model
    (tmp_path / "my_rewards.py").write_text(
        "def variety(prompts, completions, **kwargs):\n"
        "    return [len(set(c[0]['content'])) / 20 for c in completions]\n")
    path = tmp_path / f"{method}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.mark.parametrize("method", ["grpo", "rloo"])
def test_online_rl_trains_an_adapter(varied_model: Path, tmp_path: Path, method: str) -> None:
    write_prompts(tmp_path / "data" / "train.jsonl")
    r = tunelab_cli("train", write_config(tmp_path, varied_model, method), cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "runs" / method

    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 3
    assert summary["method"] == method and math.isfinite(summary["train_loss"])
    assert 0.0 <= summary["base_reward"] <= 1.0 and 0.0 <= summary["tuned_reward"] <= 1.0
    assert summary["eval_rows"] == 3 and "reward_first" in summary and "reward_last" in summary

    logged = metrics(run)
    steps = [m for m in logged if "loss" in m]
    assert len(steps) == 3 and all(math.isfinite(m["loss"]) for m in steps)
    rewarded = [m for m in logged if m.get("reward") is not None]
    assert rewarded and all(math.isfinite(m["reward"]) for m in rewarded)
    assert all("rewards/numeric/mean" in m and "rewards/variety/mean" in m for m in rewarded)
    assert all("completions/mean_length" in m and "kl" in m for m in rewarded)

    # LoRA B starts at zero: any nonzero B is what the rewards taught
    weights = load_file(run / "adapter" / "adapter_model.safetensors")
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert lora_b and any(bool(v.abs().sum() > 0) for v in lora_b)
    assert (run / "tokenizer").is_dir() and (run / "resolved.json").is_file()

    # the report says what RL did: held-out accuracy base vs tuned, the reward curves, marked example answers
    assert "Report:" in r.stderr and (run / "report.html").is_file()
    rep = json.loads((run / "report.json").read_text())
    assert rep["preference"]["kind"] == "online_rl" and "preference_curves" in rep["charts"]
    assert "validation_loss" not in rep["missing"]  # RL scores held-out prompts after training, with no loss
    assert rep["verdict"]["metric"] == "numeric_accuracy" and rep["verdict"]["base"] == summary["base_reward"]
    preds = json.loads((run / "predictions.json").read_text())
    assert len(preds) == 3 and all({"prompt", "answer", "predicted", "base_predicted"} <= set(p) for p in preds)
    assert len(rep["examples"]["rows"]) == 3 and all(isinstance(x["tuned_ok"], bool) for x in rep["examples"]["rows"])

    from tunelab.models.load import load

    loaded = load(str(run))  # what generate/chat/serve/export load
    assert hasattr(loaded.model, "disable_adapter")


def test_online_dpo_trains_on_its_own_answer_pairs(varied_model: Path, tmp_path: Path) -> None:
    """method online_dpo: two sampled answers per prompt, the better-scored one trained as preferred (DPO loss,
    preference.beta); logged under GRPO's names, summarised, reported and loadable as the others. Its reward
    needs no reference answer and the prompts have none: held-out prompts are scored by that reward, base vs
    tuned, with the win rate."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text("".join(
        json.dumps({"messages": [{"role": "user", "content": PROBLEMS[i % len(PROBLEMS)][0]}]}) + "\n"
        for i in range(12)))
    cfg_path = write_config(tmp_path, varied_model, "online_dpo")
    cfg = yaml.safe_load(cfg_path.read_text())
    del cfg["rl"]["num_generations"]  # online DPO always samples two
    cfg["rl"]["rewards"] = ["my_rewards:variety"]
    cfg["preference"] = {"beta": 0.2}
    cfg_path.write_text(yaml.safe_dump(cfg))
    r = tunelab_cli("train", cfg_path, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "runs" / "online_dpo"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 3 and summary["method"] == "online_dpo"
    assert summary["eval_metric"] == "mean_reward" and summary["eval_rows"] == 3
    assert summary["base_reward"] >= 0.0 and summary["tuned_reward"] >= 0.0 and 0.0 <= summary["win_rate"] <= 1.0
    preds = json.loads((run / "predictions.json").read_text())
    assert all({"reward", "base_reward", "predicted", "base_predicted"} <= set(p) and "correct" not in p
               for p in preds)
    assert math.isfinite(summary["reward_first"]) and math.isfinite(summary["reward_last"])
    rewarded = [m for m in metrics(run) if m.get("reward") is not None]
    assert len(rewarded) == 3 and all("kl" in m and "rewards/margins" in m for m in rewarded)
    assert all(m["beta"] == 0.2 for m in rewarded)
    # the policy's pass counts each step's prompts and sampled answers: tokens/s is measured, not 0
    seen = [m["tokens_seen"] for m in metrics(run) if m.get("tokens_seen") is not None]
    assert seen and seen[-1] > 0 and seen == sorted(seen)
    assert summary["tokens_seen"] == seen[-1] and summary["tokens_per_s"] > 0
    weights = load_file(run / "adapter" / "adapter_model.safetensors")
    assert any(bool(v.abs().sum() > 0) for k, v in weights.items() if "lora_B" in k)
    rep = json.loads((run / "report.json").read_text())
    assert rep["preference"]["kind"] == "online_rl" and rep["preference"]["method"] == "online_dpo"
    assert rep["verdict"]["metric"] == "mean_reward" and "win rate" in json.dumps(rep["preference"]["rows"])

    # GRPO's group size and KL weight are not online DPO's: said before any run exists
    cfg["name"], cfg["rl"]["num_generations"], cfg["rl"]["kl_beta"] = "refused", 4 + 2, 0.5
    cfg_path.write_text(yaml.safe_dump(cfg))
    r = tunelab_cli("train", cfg_path, cwd=tmp_path, timeout=120)
    assert r.returncode != 0 and "rl.num_generations is not used by method online_dpo" in r.stderr
    assert "rl.kl_beta is not used by method online_dpo" in r.stderr and "preference.beta" in r.stderr
    assert not (tmp_path / "runs" / "refused").exists()


def test_full_fine_tuning_keeps_the_start_as_reference(varied_model: Path, tmp_path: Path) -> None:
    """peft.method full: every weight trains, against a frozen copy of the starting model (KL reference)."""
    import torch

    write_prompts(tmp_path / "data" / "train.jsonl")
    cfg_path = write_config(tmp_path, varied_model, "grpo")
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["peft"] = {"method": "full"}
    cfg["train"]["learning_rate"] = 1e-3
    cfg_path.write_text(yaml.safe_dump(cfg))
    r = tunelab_cli("train", cfg_path, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "runs" / "grpo"
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"
    tuned, start = load_file(run / "model" / "model.safetensors"), load_file(varied_model / "model.safetensors")
    assert any(not torch.equal(tuned[k], start[k]) for k in start)
    assert any(m.get("kl") for m in metrics(run))  # the policy moved away from its frozen reference


def test_data_and_reward_problems_stop_before_a_run_exists(varied_model: Path, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text(
        json.dumps({"prompt": "what is 2 plus 3"}) + "\n" + json.dumps({"prompt": "", "answer": "1"}) + "\n")
    r = tunelab_cli("train", write_config(tmp_path, varied_model, "grpo"), cwd=tmp_path)
    assert r.returncode != 0
    assert "train.jsonl:1" in r.stderr and "'answer'" in r.stderr and "train.jsonl:2" in r.stderr
    assert not (tmp_path / "runs").exists()

    write_prompts(tmp_path / "data" / "train.jsonl")
    r = tunelab_cli("train", write_config(tmp_path, varied_model, "grpo", rewards=["numerik"]), cwd=tmp_path)
    assert r.returncode != 0 and "numerik" in r.stderr and "module:function" in r.stderr
    assert not (tmp_path / "runs").exists()


# --- OpenAI's graders as the reward (rl.grader) ------------------------------------------------------------------

LENGTH_GRADER = ("def grade(sample, item):\n"
                 "    text = sample['output_text']\n"
                 "    hit = 1.0 if item['reference'] in text else 0.0\n"
                 "    return 0.5 * hit + 0.5 * min(len(set(text)) / 20, 1.0) * item['meta']['weight']\n")


def write_rft_rows(path: Path, n: int = 12) -> Path:
    """OpenAI's reinforcement rows: messages ending with a user turn; every other key is the grader's item."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"messages": [{"role": "user", "content": PROBLEMS[i % len(PROBLEMS)][0]}],
             "reference": PROBLEMS[i % len(PROBLEMS)][1].removeprefix("#### "), "meta": {"weight": 1}}
            for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_grader_config(tmp_path: Path, model: Path, grader: dict[str, Any], **rl: Any) -> Path:
    cfg = yaml.safe_load(write_config(tmp_path, model, "grpo").read_text())
    cfg["rl"] = {"grader": grader, "num_generations": 2, "max_completion_tokens": 8} | rl
    path = tmp_path / "grpo.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_grpo_with_a_python_grader(varied_model: Path, tmp_path: Path) -> None:
    """rl.grader is the reward: it reads each row's other fields as {{item.*}} (here in its python source), its
    mean reward on held-out prompts is the run's base vs tuned score, and the report is written."""
    write_rft_rows(tmp_path / "data" / "train.jsonl")
    grader = {"type": "python", "name": "has_answer", "source": LENGTH_GRADER}
    r = tunelab_cli("train", write_grader_config(tmp_path, varied_model, grader), cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "runs" / "grpo"

    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 3
    assert summary["eval_metric"] == "grader_mean_reward" and summary["grader"] == "has_answer"
    assert summary["rewards"] == ["has_answer"] and summary["eval_rows"] == 3
    assert 0.0 <= summary["base_reward"] <= 1.0 and 0.0 <= summary["tuned_reward"] <= 1.0
    assert summary["grader_graded"] > 0 and summary["grader_failed"] == 0
    assert "grader 'has_answer' mean reward" in r.stderr

    rewarded = [m for m in metrics(run) if m.get("reward") is not None]
    assert rewarded and all("rewards/has_answer/mean" in m and m["grader/error_rate"] == 0 for m in rewarded)
    preds = json.loads((run / "predictions.json").read_text())
    assert len(preds) == 3 and all(0.0 <= p["reward"] <= 1.0 and p["correct"] == (p["reward"] >= 0.5)
                                   and "base_reward" in p for p in preds)
    assert (run / "report.html").is_file() and (run / "adapter" / "adapter_model.safetensors").is_file()


def test_grpo_with_a_string_check_grader_and_its_refusals(varied_model: Path, tmp_path: Path) -> None:
    write_rft_rows(tmp_path / "data" / "train.jsonl")
    check = {"type": "string_check", "name": "contains", "input": "{{sample.output_text}}",
             "reference": "{{item.reference}}", "operation": "like"}
    r = tunelab_cli("train", write_grader_config(tmp_path, varied_model, check), cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((tmp_path / "runs" / "grpo" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["grader_type"] == "string_check"

    # refused before a run directory exists: both a grader and rl.rewards; a python grader that doesn't compile;
    # a template reading an item field the rows don't have (at the row's file:line)
    cases = [({"rewards": ["exact"]}, check, "rl.rewards"),
             ({}, {"type": "python", "name": "p", "source": "def grade(s, i)\n    return 1\n"}, "does not compile"),
             ({}, check | {"reference": "{{item.missing}}"}, "train.jsonl:1: error: no item.missing")]
    for i, (rl, grader, said) in enumerate(cases):
        cfg = write_grader_config(tmp_path, varied_model, grader, **rl)
        cfg_text = yaml.safe_load(cfg.read_text()) | {"name": f"bad{i}"}
        cfg.write_text(yaml.safe_dump(cfg_text))
        r = tunelab_cli("train", cfg, cwd=tmp_path, timeout=300)
        assert r.returncode != 0 and said in r.stderr, r.stderr[-2000:]
        assert not (tmp_path / "runs" / f"bad{i}").exists()
