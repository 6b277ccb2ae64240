"""Training throughput in one process vs several (`tunelab train --nproc N`, torchrun's agent, gloo on the CPU).

Arms, one after the other on an otherwise idle machine, the same rows, config and global batch:
  one_process        tunelab train CONFIG                (torch's default threads: every core)
  one_process_1t     tunelab train CONFIG train.threads=1 (what each of the N processes gets)
  N_processes        tunelab train CONFIG --nproc N      (cores shared out: OMP_NUM_THREADS = cores / N)
Each arm trains the embedded default model (LoRA r16 on all linear layers) for the same steps; its rate is the
run's own tokens/s (real tokens of every process, over the training time), and the per-step losses of the
N-process run are compared with the one-process run's (they should agree: same global batch, same model).

    python bench/distributed_throughput.py [--steps 24] [--nproc 2] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from train_throughput import _conversations

from tunelab.device import cpu_flags, cpu_name

RESULTS = Path(__file__).parent / "results" / "distributed_throughput.json"


def _config(work: Path, steps: int) -> Path:
    cfg = {"name": "bench", "output_dir": str(work / "runs"), "data": {"train": str(work / "train.jsonl"),
           "val_fraction": 0}, "model": {"max_length": 512},
           "peft": {"r": 16, "alpha": 32, "dropout": 0.0},
           "train": {"max_steps": steps, "batch_size": 8, "learning_rate": 5e-4, "log_every": 1,
                     "save_every": steps, "group_by_length": False},
           "eval": {"probes": {"enabled": False}}}
    path = work / "bench.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _arm(work: Path, config: Path, name: str, *args: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "tunelab.cli.main", "train", str(config), f"name={name}", *args],
                          capture_output=True, text=True, env=os.environ | {"COLUMNS": "200"})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
    run = work / "runs" / name
    summary = json.loads((run / "summary.json").read_text())
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    return {"arm": name, "args": list(args), "wall_s": round(wall, 1), "train_s": summary["train_seconds"],
            "tokens": summary["tokens_seen"], "tokens_per_s": summary["tokens_per_s"],
            "precision": summary.get("precision"), "losses": {r["step"]: r["loss"] for r in rows if "loss" in r}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--rows", type=int, default=200, help="rows of each source (banking77, customer support)")
    ap.add_argument("--json", type=Path, default=RESULTS)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with (work / "train.jsonl").open("w") as f:
            for row in _conversations(a.rows, seed=0):
                f.write(json.dumps(row) + "\n")
        config = _config(work, a.steps)
        # a first, untimed run: the default model's one-time conversion and the tokenisation cache
        _arm(work, config, "warmup", "train.max_steps=1")
        arms = [_arm(work, config, "one_process"), _arm(work, config, "one_process_1t", "train.threads=1"),
                _arm(work, config, f"{a.nproc}_processes", "--nproc", str(a.nproc))]
    base, one_t, multi = arms
    diffs = [abs(base["losses"][s] - multi["losses"][s]) for s in base["losses"]]
    result = {
        "machine": {"cpu": cpu_name(), "cores": len(os.sched_getaffinity(0)), "python": platform.python_version(),
                    "bf16": bool({"avx512_bf16", "amx_bf16"} & cpu_flags()), "amx": "amx_bf16" in cpu_flags()},
        "date": time.strftime("%Y-%m-%d"), "steps": a.steps, "global_batch": 8,
        "arms": [{k: v for k, v in arm.items() if k != "losses"} for arm in arms],
        "ratio_vs_one_process": round(multi["tokens_per_s"] / base["tokens_per_s"], 3),
        "ratio_vs_one_process_1_thread": round(multi["tokens_per_s"] / one_t["tokens_per_s"], 3),
        "max_step_loss_difference": max(diffs),
    }
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
