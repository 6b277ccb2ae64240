"""The report of preference and RL runs (reward, DPO and relatives, GRPO/RLOO) from fake run directories:
the verdict judges held-out pairs against chance (or the base), online RL against the base with a paired
interval, and the curves come from metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import images, png_size, self_contained, write_json
from tunelab.report import write_report
from tunelab.report.preference import wilson


def pref_run(root: Path, method: str, summary: dict[str, Any], metrics: list[dict[str, Any]],
             predictions: list[dict[str, Any]] | None = None) -> Path:
    run = root / "runs" / method
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({
        "name": method, "method": method, "model": {"base": "smollm2-135m-instruct", "max_length": 320},
        "peft": {"method": "lora", "r": 16, "alpha": 32, "target_modules": "all-linear"}}))
    write_json(run / "resolved.json", {"epochs": 1, "learning_rate": 5e-5, "batch_size": 8, "total_steps": 100,
                                       "trainable_params": 4_884_480, "total_params": 134_000_000, "bf16": True})
    unit = "prompts" if method in ("grpo", "rloo") else "pairs"
    write_json(run / "data_report.json", {"format": {"train.jsonl": "hh_rlhf"}, f"train_{unit}": 800,
                                          f"validation_{unit}": 200, "skipped": 3})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))
    write_json(run / "summary.json", {"name": method, "status": "completed", "method": method, "task": "chat",
                                      "base_model": "smollm2-135m-instruct", "steps": 100, **summary})
    if predictions is not None:
        write_json(run / "predictions.json", predictions)
    return run


def rows(n: int, **fixed: float) -> list[dict[str, Any]]:
    return [{"step": s, "loss": 0.7 - s / 1000, **{k: v + s / 1000 for k, v in fixed.items()}}
            for s in range(10, n + 1, 10)]


def report(run: Path) -> tuple[str, dict[str, Any]]:
    html_path, json_path = write_report(run)
    page = html_path.read_text()
    self_contained(page)
    return page, json.loads(json_path.read_text())


def test_wilson_interval() -> None:
    lo, hi = wilson(0.64, 200)
    assert 0.57 < lo < 0.58 and 0.70 < hi < 0.71  # 128/200
    assert wilson(1.0, 10)[1] == pytest.approx(1.0)


def test_reward_model_above_chance(tmp_path: Path) -> None:
    run = pref_run(tmp_path, "reward", {"train_pairs": 800, "validation_pairs": 200, "pairwise_accuracy": 0.64,
                                        "base_pairwise_accuracy": 0.49, "eval_margin": 0.41},
                   rows(100, accuracy=0.55, margin=0.2) + [{"step": 100, "eval_accuracy": 0.64, "eval_margin": 0.41}])
    page, rep = report(run)
    v = rep["verdict"]
    assert v["kind"] == "better" and "64% of 200 held-out pairs" in v["text"] and "untrained head: 49%" in v["text"]
    assert "coin toss" in v["text"] and v["ci95_share"][0] > 0.5
    assert "Reward model" in page and "Task metrics" not in page and "Forgetting" not in page
    assert not {"metrics", "examples", "probes"} & set(rep["missing"])  # nothing asked that a reward model can't do
    assert "preference_curves" in rep["charts"] and all(png_size(i)[0] > 300 for i in images(page))
    assert rep["data"]["unit"] == "pairs" and rep["data"]["train_rows"] == 800 and "hh_rlhf" in page
    assert "800 train / 200 validation" in page


def test_reward_model_at_chance_is_unclear(tmp_path: Path) -> None:
    run = pref_run(tmp_path, "reward", {"validation_pairs": 40, "pairwise_accuracy": 0.55}, rows(30, accuracy=0.5))
    _, rep = report(run)
    assert rep["verdict"]["kind"] == "unclear" and "not clearly better" in rep["verdict"]["text"]


def test_reward_model_without_validation(tmp_path: Path) -> None:
    _, rep = report(pref_run(tmp_path, "reward", {"validation_pairs": 0}, rows(30, accuracy=0.5)))
    assert rep["verdict"]["kind"] == "no_metrics" and "data.val_fraction" in rep["verdict"]["text"]


def test_dpo_against_chance_with_curves(tmp_path: Path) -> None:
    metrics = rows(100, **{"rewards/accuracies": 0.5, "rewards/margins": 0.01})
    metrics.append({"step": 100, "eval_loss": 0.66, "eval_rewards/accuracies": 0.62, "eval_rewards/margins": 0.08})
    run = pref_run(tmp_path, "dpo", {"validation_pairs": 200, "preference_accuracy": 0.62,
                                     "eval_rewards_margins": 0.08, "eval_rewards_chosen": -0.1,
                                     "eval_rewards_rejected": -0.18, "eval_loss": 0.66}, metrics)
    page, rep = report(run)
    v = rep["verdict"]
    assert v["kind"] == "better" and "After DPO the preferred answer gained more" in v["text"]
    assert "implicit reward" in v["text"]
    assert "Preference tuning" in page and "Examples: base vs tuned" in page  # a DPO model writes answers
    assert "probes" in rep["missing"] and "metrics" not in rep["missing"]
    assert rep["preference"]["panels"][0][0] == "preference accuracy"
    assert set(rep["preference"]["panels"][0][1]) == {"training", "validation"}
    assert "0.080" in page and "-0.100 / -0.180" in page


def test_dpo_with_eval_json_keeps_the_task_verdict(tmp_path: Path) -> None:
    run = pref_run(tmp_path, "dpo", {"validation_pairs": 200, "preference_accuracy": 0.62}, rows(20))
    write_json(run / "eval.json", {"task": "chat", "rows": 50, "data": "test.jsonl",
                                   "model": {"token_f1": 0.4}, "base": {"token_f1": 0.3},
                                   "comparison": {"metric": "token_f1", "tuned": 0.4, "base": 0.3, "diff": 0.1,
                                                  "ci95": [0.05, 0.15]}})
    page, rep = report(run)
    assert rep["verdict"]["kind"] == "better" and rep["verdict"]["metric"] == "token_f1"
    assert "Preference tuning" in page and "Task metrics" in page


def test_orpo_compares_with_before_training(tmp_path: Path) -> None:
    run = pref_run(tmp_path, "orpo", {"validation_pairs": 100, "preference_accuracy": 0.58,
                                      "base_preference_accuracy": 0.52}, rows(20, **{"rewards/accuracies": 0.5}))
    _, rep = report(run)
    assert rep["verdict"]["kind"] == "better" and "52% → 58%" in rep["verdict"]["text"]


def test_kto_says_it_has_no_pairwise_accuracy(tmp_path: Path) -> None:
    run = pref_run(tmp_path, "kto", {"validation_pairs": 100, "eval_rewards_margins": 0.3},
                   rows(20, **{"rewards/margins": 0.1}))
    _, rep = report(run)
    assert rep["verdict"]["kind"] == "no_metrics" and "KTO" in rep["verdict"]["text"] and "0.300" in \
        rep["verdict"]["text"]


def gsm_predictions(n: int, base_right: int, tuned_right: int) -> list[dict[str, Any]]:
    """RL predictions as training writes them: each answer marked right or wrong when it was scored."""
    return [{"where": f"test.jsonl:{i + 1}", "prompt": f"What is {i} + 1?", "answer": f"... #### {i + 1}",
             "predicted": f"#### {i + 1 if i < tuned_right else 0}", "correct": i < tuned_right,
             "base_predicted": f"#### {i + 1 if i < base_right else 0}", "base_correct": i < base_right}
            for i in range(n)]


def test_grpo_paired_interval_examples_and_reward_curves(tmp_path: Path) -> None:
    metrics = [{"step": s, "loss": 0.0, "reward": 0.1 + s / 100, "rewards/numeric/mean": s / 200,
                "rewards/format/mean": 0.2 + s / 100, "kl": s / 1e4, "completions/mean_length": 120.0}
               for s in range(1, 31)]
    run = pref_run(tmp_path, "grpo", {"eval_rows": 40, "base_reward": 0.05, "tuned_reward": 0.5,
                                      "reward_first": 0.11, "reward_last": 0.4, "reward_last_numeric": 0.15,
                                      "kl_last": 0.003}, metrics, gsm_predictions(40, 2, 20))
    page, rep = report(run)
    v = rep["verdict"]
    assert v["kind"] == "better" and "5% → 50%" in v["text"] and "0.110" in v["text"] and v["ci95"][0] > 0
    panels = dict((y, s) for y, s in rep["preference"]["panels"])
    assert set(panels["mean reward per answer"]) == {"total", "numeric", "format"} and "kl" in panels[
        "KL to the starting model"]
    ex = rep["examples"]["rows"]
    assert ex[0]["tuned_ok"] and not ex[0]["base_ok"]  # answers the tuning changed come first
    assert "What is 2 + 1?" in page and "✓" in page and "✗" in page
    assert "Online RL" in page and "examples" not in rep["missing"]


def test_grpo_no_difference_is_unclear(tmp_path: Path) -> None:
    run = pref_run(tmp_path, "grpo", {"eval_rows": 20, "base_reward": 0.1, "tuned_reward": 0.15},
                   [{"step": 1, "reward": 0.1}], gsm_predictions(20, 2, 3))
    _, rep = report(run)
    assert rep["verdict"]["kind"] == "unclear" and "Few prompts" in rep["verdict"]["text"]


def test_grpo_without_held_out_answers(tmp_path: Path) -> None:
    run = pref_run(tmp_path, "rloo", {"reward_first": 0.1, "reward_last": 0.3}, [{"step": 1, "reward": 0.1}])
    page, rep = report(run)
    assert rep["verdict"]["kind"] == "no_metrics" and "0.100" in rep["verdict"]["text"]
    assert "Online RL" in page


def test_rl_answers_unmarked_by_an_earlier_version_are_scored_alike(tmp_path: Path) -> None:
    summary = {"eval_rows": 40, "base_reward": 0.05, "tuned_reward": 0.5}
    marked = gsm_predictions(40, 2, 20)
    unmarked = [{k: v for k, v in p.items() if k not in ("correct", "base_correct")} for p in marked]
    reps = [report(pref_run(tmp_path / name, "grpo", summary, [{"step": 1, "reward": 0.1}], preds))[1]
            for name, preds in (("marked", marked), ("unmarked", unmarked))]
    assert reps[0]["verdict"] == reps[1]["verdict"] and reps[0]["verdict"]["ci95"] is not None
    assert reps[0]["examples"]["rows"] == reps[1]["examples"]["rows"]
