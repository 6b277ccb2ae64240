"""GRPO on GSM8K with the `numeric` reward: does the mean reward rise, and does held-out accuracy move?

A seeded held-out set is carved from /work/shared/data/gsm8k/train.jsonl; the recipe trains the default model
(LoRA) on prompts from the rest for a fixed number of steps and scores greedy answers on the held-out set before
and after (numeric reward = exact final-number accuracy):
    python bench/grpo_gsm8k.py [--steps 40] [--quick] [--json PATH] [--method grpo|rloo] [--rewards numeric,format]
`--rewards` adds rewards beside `numeric` (e.g. `format`, which pays for a final '#### N' line): a 135M model solves
few GSM8K problems, so with `numeric` alone most answer groups all score 0 and teach nothing. The held-out accuracy
is always the `numeric` reward of greedy answers, and the per-step curve of each reward is recorded.
--quick: 3 steps of 1 prompt x 4 answers of up to 32 tokens, 8 held-out problems: proves the path end to end
in a couple of minutes (it measures nothing).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from pathlib import Path
from typing import Any

from quality_common import SHARED, machine, save, write_jsonl

from tunelab.config import load_config
from tunelab.recipes.dispatch import run

SYSTEM = "Solve the math problem step by step. End with a final line of the form '#### <number>'."


def split(rows: list[dict[str, Any]], n_test: int, seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    idx = list(range(len(rows)))
    random.Random(seed).shuffle(idx)
    test = set(idx[:n_test])
    return [r for i, r in enumerate(rows) if i not in test], [rows[i] for i in sorted(test)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps (default 40; --quick 3)")
    ap.add_argument("--quick", action="store_true", help="a few steps on short answers: minutes, not an hour")
    ap.add_argument("--method", choices=["grpo", "rloo"], default="grpo")
    ap.add_argument("--test", type=int, default=None, help="held-out problems scored (default 100; --quick 8)")
    ap.add_argument("--prompts", type=int, default=None, help="prompts per step (default 2; --quick 1)")
    ap.add_argument("--generations", type=int, default=4, help="answers sampled per prompt")
    ap.add_argument("--tokens", type=int, default=None, help="longest answer (default 256; --quick 32)")
    ap.add_argument("--lr", type=float, default=None, help="learning rate (default: the recipe's auto)")
    ap.add_argument("--rewards", default="numeric", help="comma-separated rl.rewards (default: numeric)")
    ap.add_argument("--weights", default="", help="comma-separated rl.reward_weights (default: equal)")
    ap.add_argument("--work", default="runs/bench-grpo-gsm8k")
    ap.add_argument("--json", default="bench/results/grpo_gsm8k.json")
    a = ap.parse_args()
    steps = a.steps or (3 if a.quick else 40)
    n_test = a.test or (8 if a.quick else 100)
    tokens = a.tokens or (32 if a.quick else 256)
    prompts = a.prompts or (1 if a.quick else 2)

    rows = [json.loads(ln) for ln in (SHARED / "gsm8k" / "train.jsonl").read_text().splitlines() if ln.strip()]
    train, test = split(rows, n_test, seed=0)
    train = random.Random(1).sample(train, steps * prompts)  # each prompt seen once
    work = Path(a.work)
    shutil.rmtree(work / "runs" / f"bench-{a.method}-gsm8k", ignore_errors=True)  # the bench's own last run
    work.mkdir(parents=True, exist_ok=True)
    write_jsonl(work / "train.jsonl", train)
    write_jsonl(work / "test.jsonl", test)
    overrides = [
        f"name=bench-{a.method}-gsm8k", f"output_dir={work / 'runs'}", f"method={a.method}",
        f"data.train={work / 'train.jsonl'}", f"data.validation={work / 'test.jsonl'}",
        f"data.system_prompt={SYSTEM}", f"rl.rewards=[{a.rewards}]",
        f"rl.num_generations={a.generations}", f"rl.max_completion_tokens={tokens}", f"train.max_steps={steps}",
        f"train.batch_size={prompts}", f"eval.limit={n_test}", "eval.batch_size=16", "eval.probes.enabled=false",
        *([f"train.learning_rate={a.lr}"] if a.lr else []),
        *([f"rl.reward_weights=[{a.weights}]"] if a.weights else []),
    ]
    cfg = load_config(None, overrides)
    t0 = time.perf_counter()
    result = run(cfg)
    wall = time.perf_counter() - t0

    logged = [json.loads(ln) for ln in (result.run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    per_step = {r["step"]: r["reward"] for r in logged if r.get("reward") is not None}
    per_reward = {name: {r["step"]: r[f"rewards/{name}/mean"] for r in logged if r.get(f"rewards/{name}/mean")
                         is not None} for name in a.rewards.split(",")}
    zero_std = {r["step"]: r["frac_reward_zero_std"] for r in logged if r.get("frac_reward_zero_std") is not None}
    rewards = list(per_step.values())
    half = max(1, len(rewards) // 2)
    s = result.summary
    figures = {
        "method": a.method, "rewards": a.rewards, "steps": s.get("steps"), "reward_per_step": per_step,
        "reward_per_step_by_function": per_reward, "frac_groups_all_same_score": zero_std,
        "reward_first_half": sum(rewards[:half]) / half if rewards else None,
        "reward_second_half": sum(rewards[half:]) / max(1, len(rewards) - half) if len(rewards) > 1 else None,
        "heldout_accuracy_base": s.get("base_reward"), "heldout_accuracy_tuned": s.get("tuned_reward"),
        "heldout_problems": n_test, "train_seconds": s.get("train_seconds"), "wall_s": round(wall, 1),
    }
    if figures["reward_second_half"] is not None:
        figures["reward_rising"] = figures["reward_second_half"] > figures["reward_first_half"]
    print(json.dumps(figures, indent=2))
    save(Path(a.json), {"figures": figures, "summary": s, "overrides": overrides,
                        "config": cfg.model_dump(mode="json"), "run_dir": str(result.run_dir),
                        "quick": a.quick, "machine": machine()})


if __name__ == "__main__":
    main()
