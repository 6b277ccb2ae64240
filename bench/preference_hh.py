"""Preference tuning on real human preferences: Anthropic hh-rlhf helpful-base pairs, default model.

    python bench/preference_hh.py [--train-pairs 800] [--dpo-pairs N] [--eval-pairs 200] [--win-prompts 100]
                                  [--work DIR] [--json PATH]

1. A seeded 15% of the pairs is held out; training pairs come from the rest. Only pairs whose whole
   transcript fits --max-chars are used (CPU time; the filter is the same on both sides).
2. `method: reward` trains a reward model; reported: pairwise accuracy on held-out pairs (goal >= 60%).
3. `method: dpo` trains from the base; reported: held-out preference accuracy, i.e. the share of pairs
   whose implicit reward ranks the chosen answer first (goal >= 58%).
   With --online, `method: online_dpo` instead: the base answers each training prompt twice (temperature
   --temperature), the reward model of step 2 scores both, and DPO's loss trains the better one as preferred;
   the human pairs' answers are not used, only their prompts.
4. Greedy answers of the base and of the DPO model to held-out prompts, scored by the trained reward
   model: the DPO model's win rate (ties count half; goal >= 55% with the Wilson interval above 50%).
Each step runs through tunelab's own API (`tunelab.train`), as `tunelab train` would. With --work, a training
that completed there with the same arguments is reused (its figures are read back), so a long run that was
stopped continues where it was.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from quality_common import machine  # noqa: E402

import tunelab  # noqa: E402

HH = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf" / "helpful-base-train.jsonl.gz"


def split_rows(max_chars: int, n_train: int, n_eval: int, seed: int) -> tuple[list[str], list[str], int]:
    with gzip.open(HH, "rt", encoding="utf-8") as f:
        lines = [ln for ln in f if ln.strip()]
    order = list(range(len(lines)))
    random.Random(seed).shuffle(order)
    held = set(order[: round(0.15 * len(lines))])

    def fits(i: int) -> bool:
        row = json.loads(lines[i])
        return max(len(row["chosen"]), len(row["rejected"])) <= max_chars and row["chosen"] != row["rejected"]

    train = [lines[i] for i in order if i not in held and fits(i)][:n_train]
    test = [lines[i] for i in order if i in held and fits(i)][:n_eval]
    return train, test, len(lines)


def train(name: str, method: str, work: Path, train_file: str, overrides: list[str]) -> dict[str, Any]:
    overrides = [f"name={name}", f"method={method}", f"output_dir={work / 'runs'}", f"data.train={work / train_file}",
                 f"data.validation={work / 'test.jsonl'}", "eval.probes.enabled=false",
                 "data.on_error=skip", *overrides]  # hh-rlhf has a few broken rows (empty replies, typos in roles)
    run, stamp = work / "runs" / name, work / f"{name}.args.json"
    done = run / "summary.json"
    if done.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == overrides and \
            json.loads(done.read_text()).get("status") == "completed":
        print(f"  reusing the completed run {run}", flush=True)
        return json.loads(done.read_text()) | {"run_dir": str(run), "reused": True}
    shutil.rmtree(run, ignore_errors=True)  # this bench's own earlier, unfinished or different run
    stamp.write_text(json.dumps(overrides))
    t0 = time.perf_counter()
    result = tunelab.train(tunelab.load_config(None, overrides))
    return result.summary | {"run_dir": str(result.run_dir), "wall_s": round(time.perf_counter() - t0, 1)}


@torch.no_grad()
def reward_scores(reward_run: str, prompts: list[list[dict[str, str]]], answers: list[str]) -> list[float]:
    lm = tunelab.load(reward_run)
    tok, model = lm.tokenizer, lm.model
    scores = []
    for prompt, answer in zip(prompts, answers, strict=True):
        text = tok.apply_chat_template([*prompt, {"role": "assistant", "content": answer}], tokenize=False)
        enc = tok(text, return_tensors="pt", truncation=True, max_length=512, add_special_tokens=False)
        scores.append(float(model(**enc.to(model.device)).logits[0, 0]))
    return scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-pairs", type=int, default=800)
    ap.add_argument("--dpo-pairs", type=int, help="DPO trains on the first N training pairs (default: all)")
    ap.add_argument("--eval-pairs", type=int, default=200)
    ap.add_argument("--win-prompts", type=int, default=100)
    ap.add_argument("--max-chars", type=int, default=1000, help="longest transcript used (characters)")
    ap.add_argument("--max-length", type=int, default=320, help="model.max_length for both trainings")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--online", action="store_true", help="online DPO on the training prompts, judged by the "
                    "reward model, instead of DPO on the human pairs")
    ap.add_argument("--temperature", type=float, default=0.7, help="--online: sampling temperature")
    ap.add_argument("--lr", type=float, help="DPO learning rate (default: the recipe's auto)")
    ap.add_argument("--beta", type=float, help="DPO beta (default 0.1)")
    ap.add_argument("--quick", action="store_true", help="a few minutes: 64 pairs, 32 held out, 16 prompts")
    ap.add_argument("--work", type=Path, help="keep runs here (default: a temporary directory)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.quick:
        args.train_pairs, args.eval_pairs, args.win_prompts = 64, 32, 16
    from scipy.stats import binomtest

    from tunelab.data.preference import load_pairs
    from tunelab.eval.scoring import generate_answers
    from tunelab.report.preference import wilson

    with tempfile.TemporaryDirectory(prefix="tunelab-hh-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        train_rows, test_rows, total = split_rows(args.max_chars, args.train_pairs, args.eval_pairs, args.seed)
        (work / "train.jsonl").write_text("".join(train_rows))
        dpo_rows = train_rows[: args.dpo_pairs or len(train_rows)]
        (work / "train_dpo.jsonl").write_text("".join(dpo_rows))
        (work / "test.jsonl").write_text("".join(test_rows))
        common = [f"model.max_length={args.max_length}", f"train.epochs={args.epochs}", f"train.seed={args.seed}",
                  "train.batch_size=8"]
        result: dict[str, Any] = {"machine": machine(), "data": {
            "source": "hh-rlhf helpful-base train", "pairs_in_file": total, "held_out_share": 0.15,
            "train_pairs": len(train_rows), "dpo_train_pairs": len(dpo_rows), "eval_pairs": len(test_rows),
            "max_chars": args.max_chars}, "args": {k: str(v) for k, v in vars(args).items()}}
        print(f"reward model on {len(train_rows)} pairs ...", flush=True)
        reward = train("hh-reward", "reward", work, "train.jsonl", common)
        result["reward_model"] = {k: reward.get(k) for k in (
            "pairwise_accuracy", "base_pairwise_accuracy", "eval_margin", "pairs_dropped_too_long", "train_loss",
            "steps", "train_seconds", "tokens_seen", "precision", "wall_s", "reused")}
        print(f"  held-out pairwise accuracy {reward.get('pairwise_accuracy')}", flush=True)
        tuning = [*([f"train.learning_rate={args.lr}"] if args.lr else []),
                  *([f"preference.beta={args.beta}"] if args.beta else [])]
        if args.online:
            (work / "prompts.jsonl").write_text("".join(json.dumps({"messages": p.prompt}) + "\n" for p in
                                                        load_pairs(work / "train_dpo.jsonl")[0]))
            print(f"online DPO from the base on the prompts of {len(dpo_rows)} pairs ...", flush=True)
            dpo = train("hh-online-dpo", "online_dpo", work, "prompts.jsonl", [
                *common, *tuning, f"rl.rewards=[{reward['run_dir']}]", f"rl.max_completion_tokens={args.new_tokens}",
                f"rl.temperature={args.temperature}", "data.validation=null", "data.val_fraction=0"])
        else:
            print(f"DPO from the base on {len(dpo_rows)} pairs ...", flush=True)
            dpo = train("hh-dpo", "dpo", work, "train_dpo.jsonl", [*common, *tuning])
        result["dpo"] = {k: dpo.get(k) for k in (
            "method", "preference_accuracy", "eval_rewards_margins", "eval_rewards_chosen", "eval_rewards_rejected",
            "reward_first", "reward_last", "kl_last", "train_prompts", "learning_rate",
            "train_loss", "eval_loss", "steps", "train_seconds", "tokens_seen", "precision", "wall_s", "reused")}
        print(f"  held-out preference accuracy {dpo.get('preference_accuracy')}", flush=True)

        pairs, _, _ = load_pairs(work / "test.jsonl")
        prompts = [p.prompt for p in pairs[: args.win_prompts]]
        base = tunelab.load(None)
        tuned = tunelab.load(dpo["run_dir"])
        t0 = time.perf_counter()
        base_answers = generate_answers(base.model, base.tokenizer, prompts, args.new_tokens)
        dpo_answers = generate_answers(tuned.model, tuned.tokenizer, prompts, args.new_tokens)
        base_scores = reward_scores(reward["run_dir"], prompts, base_answers)
        dpo_scores = reward_scores(reward["run_dir"], prompts, dpo_answers)
        wins = sum(1.0 if d > b else 0.5 if d == b else 0.0 for d, b in zip(dpo_scores, base_scores, strict=True))
        rate = wins / max(len(prompts), 1)
        result["win_rate"] = {"prompts": len(prompts), "dpo_over_base": round(rate, 3),
                              "ci95": [round(x, 3) for x in wilson(rate, len(prompts))],
                              "identical_answers": sum(a == b for a, b in zip(base_answers, dpo_answers,
                                                                              strict=True)),
                              "mean_reward_base": round(sum(base_scores) / len(base_scores), 4),
                              "mean_reward_dpo": round(sum(dpo_scores) / len(dpo_scores), 4),
                              "seconds": round(time.perf_counter() - t0, 1)}
        decided = [d > b for d, b in zip(dpo_scores, base_scores, strict=True) if d != b]
        result["win_rate"]["sign_test_p"] = round(binomtest(sum(decided), len(decided)).pvalue, 4) if decided else None
        result["win_rate"]["examples"] = [
            {"prompt": p[-1]["content"], "base": b, "dpo": d, "base_score": round(bs, 3), "dpo_score": round(ds, 3)}
            for p, b, d, bs, ds in list(zip(prompts, base_answers, dpo_answers, base_scores, dpo_scores,
                                            strict=True))[:3]]
        for part, key, summ in (("reward_model", "pairwise_accuracy", reward), ("dpo", "preference_accuracy", dpo)):
            if result[part].get(key) is not None:
                n = int(summ.get("validation_pairs") or len(test_rows))
                result[part]["ci95"] = [round(x, 3) for x in wilson(result[part][key], n)]
        print(f"  DPO win rate over base (reward model judge): {result['win_rate']['dpo_over_base']}", flush=True)
        result["goals"] = {"reward_pairwise_accuracy>=0.60": (reward.get("pairwise_accuracy") or 0) >= 0.60,
                           **({} if args.online else {  # online DPO trains on no human pair: nothing to rank
                               "dpo_preference_accuracy>=0.58": (dpo.get("preference_accuracy") or 0) >= 0.58}),
                           "dpo_win_rate>=0.55": result["win_rate"]["dpo_over_base"] >= 0.55,
                           "win_rate_ci_above_0.5": result["win_rate"]["ci95"][0] > 0.5,
                           "win_prompts>=150": len(prompts) >= 150}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
