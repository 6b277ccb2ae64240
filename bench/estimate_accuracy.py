"""How close `tunelab estimate` comes to the real run: predicted vs measured peak memory and wall time.

For each run below (SFT chat at two lengths, LoRA and full; classification with a head and generated labels;
DPO; a reward model; GRPO), on real rows from ../shared/data and the embedded default model:
  1. `tunelab estimate CONFIG --json` (a rehearsal of a few real steps, scaled to the whole run);
  2. `tunelab train CONFIG` in its own process: its wall time (process start to exit) and peak RSS (wait4).
Goal: every run within +-15% on memory and +-20% on time. One run after the other on an otherwise idle machine.

    python bench/estimate_accuracy.py [--json PATH] [--runs name,name]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
ROOT = Path(__file__).resolve().parents[1]


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def prepare(work: Path, seed: int = 0) -> dict[str, str]:
    """The data files the runs read, sampled from the shared datasets."""
    rng = random.Random(seed)
    with (SHARED / "bitext-customer-support" / "Bitext_Sample_Customer_Support_Training_Dataset.csv").open() as f:
        support = [(r["instruction"], r["response"]) for r in csv.DictReader(f)]
    with gzip.open(SHARED / "medquad" / "medquad-train.jsonl.gz", "rt") as f:
        medical = [json.loads(ln) for ln in f]
    with (SHARED / "banking77" / "train.csv").open() as f:
        bank = list(csv.DictReader(f))
    with gzip.open(SHARED / "hh-rlhf" / "helpful-base-train.jsonl.gz", "rt") as f:
        pairs = [json.loads(ln) for ln in f]
    with (SHARED / "gsm8k" / "train.jsonl").open() as f:
        maths = [json.loads(ln) for ln in f][:2000]

    def chat(q: str, a: str) -> dict[str, Any]:
        return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}

    medical_rows = [chat(r["question"], r["answer"]) for r in rng.sample(medical, 72)]
    out = {"support": _jsonl(work / "support.jsonl", [chat(q, a) for q, a in rng.sample(support, 160)]),
           "medical": _jsonl(work / "medical.jsonl", medical_rows),
           "pairs": _jsonl(work / "pairs.jsonl", rng.sample(pairs, 72)),
           "maths": _jsonl(work / "maths.jsonl", rng.sample(maths, 24))}
    bank_rows = rng.sample(bank, 480)
    with (work / "banking77.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["text", "category"])
        w.writeheader()
        w.writerows(bank_rows)
    out["banking77"] = str(work / "banking77.csv")
    return out


# name -> (data key, overrides); every run keeps the default model and its own validation split
LABELS = "data.columns={text: text, label: category}"
RUNS: dict[str, tuple[str, list[str]]] = {
    "sft-chat-lora-256": ("support", ["model.max_length=256", "train.epochs=2", "eval.probes.enabled=false"]),
    "sft-chat-lora-512": ("medical", ["model.max_length=512", "train.epochs=1", "eval.probes.enabled=false"]),
    "sft-chat-full-256": ("support", ["model.max_length=256", "peft.method=full", "train.epochs=1",
                                      "eval.probes.enabled=false"]),
    "sft-chat-lora-probes": ("support", ["model.max_length=256", "train.epochs=1", "data.limit=64"]),
    "classify-head": ("banking77", ["task=classification", LABELS, "classification.mode=head", "train.epochs=1",
                                    "eval.probes.enabled=false"]),
    "classify-generate": ("banking77", ["task=classification", LABELS, "train.epochs=1", "data.limit=192",
                                        "eval.probes.enabled=false"]),
    "dpo-lora": ("pairs", ["method=dpo", "model.max_length=256",
                           "train.epochs=1", "eval.probes.enabled=false"]),
    "reward-lora": ("pairs", ["method=reward", "model.max_length=256", "train.epochs=1", "data.limit=48"]),
    "grpo-lora": ("maths", ["method=grpo", "model.max_length=320", "rl.max_completion_tokens=48",
                            "data.val_fraction=0.2", "eval.probes.enabled=false"]),
}


def _config(work: Path, name: str, data: dict[str, str]) -> Path:
    from tunelab.config import load_config
    from tunelab.config.load import dump_config

    key, overrides = RUNS[name]
    cfg = load_config(None, [f"name={name}", f"output_dir={work / 'runs'}", f"data.train={data[key]}", *overrides])
    path = work / f"{name}.yaml"
    path.write_text(dump_config(cfg))
    return path


def _tunelab(*args: str) -> list[str]:
    return [sys.executable, "-m", "tunelab.cli.main", *args]


def predicted(config: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    proc = subprocess.run(_tunelab("estimate", str(config), "--json"), capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"estimate of {config} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout) | {"estimate_seconds": round(time.perf_counter() - t0, 1)}


def actual(config: Path, log: Path) -> dict[str, Any]:
    """The real run in its own process: wall time and peak RSS (the process's own, from wait4)."""
    t0 = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(_tunelab("train", str(config)), stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    if status:
        raise RuntimeError(f"training {config} failed; see {log}")
    return {"seconds": round(time.perf_counter() - t0, 1), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}


def machine() -> dict[str, Any]:
    import torch

    from tunelab.device import cpu_flags, cpu_name

    return {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "avx512_bf16": "avx512_bf16" in cpu_flags(), "amx": "amx_bf16" in cpu_flags(),
            "python": platform.python_version()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "estimate_accuracy.json")
    ap.add_argument("--runs", default=",".join(RUNS))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tunelab-estimate-bench-"))
    data = prepare(work)
    rows = []
    for name in args.runs.split(","):
        config = _config(work, name, data)
        est = predicted(config)
        real = actual(config, work / f"{name}.log")
        row = {"run": name, "predicted_peak_mib": est["peak_memory_mib"], "actual_peak_mib": real["peak_rss_mib"],
               "predicted_seconds": est["total_seconds"], "actual_seconds": real["seconds"],
               "memory_ratio": round(est["peak_memory_mib"] / real["peak_rss_mib"], 3),
               "time_ratio": round(est["total_seconds"] / real["seconds"], 3),
               "estimate_seconds": est["estimate_seconds"], "steps": est["train"]["steps"],
               "rows": est["train"]["rows"], "phases": est["phases"]}
        row["within_goal"] = abs(row["memory_ratio"] - 1) <= 0.15 and abs(row["time_ratio"] - 1) <= 0.20
        rows.append(row)
        print(f"{name:<22} memory {row['predicted_peak_mib']:>7.0f} / {row['actual_peak_mib']:>7.0f} MiB "
              f"({row['memory_ratio']:.2f})  time {row['predicted_seconds']:>6.0f} / {row['actual_seconds']:>6.0f} s "
              f"({row['time_ratio']:.2f})  estimate took {row['estimate_seconds']:.0f} s", flush=True)
    result = {"machine": machine(), "runs": rows, "all_within_goal": all(r["within_goal"] for r in rows),
              "when": time.strftime("%Y-%m-%d %H:%M")}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"all within goal: {result['all_within_goal']}; {args.json}")


if __name__ == "__main__":
    main()
