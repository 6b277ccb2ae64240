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


def grader_predictions(n: int) -> list[dict[str, Any]]:
    """A grader run's predictions as training writes them: each answer's reward, right at the pass threshold."""
    out = []
    for i in range(n):
        base, tuned = 0.2 + (i % 3) / 10, 0.6 + (i % 4) / 10
        out.append({"where": f"rft.jsonl:{i + 1}", "prompt": f"Name the capital of country {i}", "answer": None,
                    "predicted": f"City {i}", "correct": tuned >= 0.5, "reward": tuned,
                    "base_predicted": f"Town {i}", "base_correct": base >= 0.5, "base_reward": base})
    return out


def test_grpo_with_a_grader_reports_its_mean_reward_not_a_share(tmp_path: Path) -> None:
    metrics = [{"step": s, "loss": 0.0, "reward": 0.3 + s / 100, "rewards/contact/mean": 0.3 + s / 100,
                "grader/error_rate": 0.1 if s < 3 else 0.0, "kl": s / 1e4} for s in range(1, 11)]
    preds = grader_predictions(40)
    base = sum(p["base_reward"] for p in preds) / 40
    tuned = sum(p["reward"] for p in preds) / 40
    run = pref_run(tmp_path, "grpo", {"eval_rows": 40, "base_reward": base, "tuned_reward": tuned,
                                      "eval_metric": "grader_mean_reward", "grader": "contact", "grader_type": "multi",
                                      "pass_threshold": 0.5, "grader_graded": 320, "grader_failed": 4,
                                      "reward_first": 0.31, "reward_last": 0.4}, metrics, preds)
    page, rep = report(run)
    v = rep["verdict"]
    assert v["kind"] == "better" and v["metric"] == "grader_mean_reward"
    assert f"mean reward of greedy answers by grader 'contact' (multi) {base:.3f} → {tuned:.3f}" in v["text"]
    assert f"(+{tuned - base:.3f}, 95% CI +" in v["text"] and "final-number" not in v["text"]
    assert "%" not in v["text"].replace("95% CI", "")  # rewards are numbers on the grader's scale, not shares
    assert "failed on 4 of 320 training answers" in v["text"]
    # the interval is over the answers' rewards, not over right/wrong
    from tunelab.eval.metrics import bootstrap_diff
    _, lo, hi = bootstrap_diff([p["reward"] for p in preds], [p["base_reward"] for p in preds])
    assert v["ci95"] == [lo, hi] and 0 < lo < tuned - base < hi
    facts = dict(rep["preference"]["rows"])
    assert facts["held-out mean reward, base → tuned"] == f"{base:.3f} → {tuned:.3f}"
    assert facts["grader"] == "grader 'contact' (multi)" and facts[
        "training answers the grader failed on (scored 0)"] == "4 of 320"
    assert "right (✓) at 0.5 or more" in rep["preference"]["explain"]
    panels = dict(rep["preference"]["panels"])
    assert "contact" in panels["mean reward per answer"] and "share of answers the grader failed on" in panels
    ex = rep["examples"]["rows"]
    assert all(r["tuned_ok"] for r in ex) and not any(r["base_ok"] for r in ex)  # as training marked them
    assert ex[0]["tuned_reward"] == preds[0]["reward"] and ex[0]["base_reward"] == preds[0]["base_reward"]
    assert "✓ [0.6] City 0" in page and "✗ [0.2] Town 0" in page


def test_grader_run_without_base_or_marks(tmp_path: Path) -> None:
    """A grader's mean reward alone is a number, not a share; unmarked answers stay unmarked (only the grader
    could mark them, the final-number rule does not apply)."""
    preds = [{k: v for k, v in p.items() if k not in ("correct", "base_correct")} for p in grader_predictions(4)]
    preds[0]["answer"], preds[0]["predicted"] = "#### 3", "#### 3"
    run = pref_run(tmp_path, "rloo", {"eval_rows": 4, "tuned_reward": 0.75, "eval_metric": "grader_mean_reward",
                                      "grader": "judge", "grader_type": "score_model"},
                   [{"step": 1, "reward": 0.1}], preds)
    _, rep = report(run)
    v = rep["verdict"]
    assert v["kind"] == "no_comparison" and v["metric"] == "grader_mean_reward"
    assert "mean reward of greedy answers by grader 'judge' (score_model) 0.750 on 4 held-out prompts" in v["text"]
    assert all(r["tuned_ok"] is None for r in rep["examples"]["rows"])


def test_online_dpo_scored_by_its_reward_model_reports_the_win_rate(tmp_path: Path) -> None:
    """Rewards that need no reference (a reward model): the held-out mean reward base vs tuned, with the win rate;
    no answer is marked right or wrong, as no threshold says what right is."""
    preds = [{"prompt": f"p{i}", "answer": None, "predicted": f"t{i}", "base_predicted": f"b{i}",
              "reward": 0.5 + (i % 4) / 10, "base_reward": 0.1 + (i % 3) / 10} for i in range(40)]
    summary = {"eval_rows": 40, "eval_metric": "mean_reward", "rewards": ["runs/hh-reward"],
               "base_reward": sum(p["base_reward"] for p in preds) / 40,
               "tuned_reward": sum(p["reward"] for p in preds) / 40,
               "win_rate": 0.95, "reward_first": -0.3, "reward_last": 0.1}
    _, facts = report(pref_run(tmp_path, "online_dpo", summary, rows(40, reward=0.1, kl=0.5), preds))
    v = facts["verdict"]
    assert v["kind"] == "better" and v["metric"] == "mean_reward" and v["ci95"][0] > 0
    assert "Online DPO helped" in v["text"] and "the training rewards (runs/hh-reward)" in v["text"]
    shown = dict(facts["preference"]["rows"])
    assert shown["scored by"] == "the training rewards (runs/hh-reward)" and shown[
        "held-out win rate over the base (ties count half)"] == "95%"
    assert all(r["tuned_ok"] is None for r in facts["examples"]["rows"])


def test_online_dpo_without_held_out_prompts_says_what_would_score_them(tmp_path: Path) -> None:
    run = pref_run(tmp_path, "online_dpo", {"eval_rows": 0, "eval_metric": "mean_reward", "rewards": ["rm"],
                                            "reward_first": -0.3, "reward_last": 0.1}, rows(40, reward=0.1))
    v = report(run)[1]["verdict"]
    assert v["kind"] == "no_metrics" and "scored by the training rewards" in v["text"]
