"""Shared steps of the intent-classification quality benchmarks: split, train through the recipe, score
the held-out rows with `tunelab eval`'s code (base and tuned), and write the figures as JSON."""

from __future__ import annotations

import csv
import json
import platform
import random
import time
from pathlib import Path
from typing import Any

import torch

from tunelab.config import load_config
from tunelab.eval.evaluate import evaluate
from tunelab.recipes.dispatch import run

Row = tuple[str, str]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def write_csv(path: Path, rows: list[Row]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "category"])
        w.writerows(rows)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def holdout(rows: list[Row], fraction: float, seed: int) -> tuple[list[Row], list[Row]]:
    """A seeded random `fraction` of the rows held out for scoring; the rest for training."""
    idx = list(range(len(rows)))
    random.Random(seed).shuffle(idx)
    n_test = round(len(rows) * fraction)
    test = set(idx[:n_test])
    return [r for i, r in enumerate(rows) if i not in test], [rows[i] for i in sorted(test)]


def machine() -> dict[str, Any]:
    from tunelab.device import cpu_flags

    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "") if Path("/proc/cpuinfo").exists() else ""
    return {"cpu": model or platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "avx512_bf16": "avx512_bf16" in cpu_flags(), "amx": "amx_bf16" in cpu_flags()}


def train_and_score(name: str, train: list[Row], test: list[Row], work: Path,
                    overrides: list[str], system_prompt: str) -> dict[str, Any]:
    """Train on `train` (a seeded 2% of it is the validation split for the loss), then score `test`."""
    work.mkdir(parents=True, exist_ok=True)
    write_csv(work / "train.csv", train)
    write_csv(work / "test.csv", test)
    cfg = load_config(None, [
        f"name={name}", f"output_dir={work / 'runs'}", "task=classification",
        f"data.train={work / 'train.csv'}", "data.columns={text: text, label: category}",
        "data.val_fraction=0.02", f"data.system_prompt={system_prompt}",
        "eval.compare_base=false", "eval.during_training=false", *overrides])
    t0 = time.perf_counter()
    result = run(cfg)
    wall_train = time.perf_counter() - t0
    t1 = time.perf_counter()
    scores = evaluate(str(result.run_dir), str(work / "test.csv"),
                      columns={"text": "text", "label": "category"}, compare_base=True)
    return {"run_dir": str(result.run_dir), "summary": result.summary, "eval": scores,
            "config": cfg.model_dump(mode="json"), "overrides": overrides, "train_rows": len(train),
            "test_rows": len(test), "train_wall_s": round(wall_train, 1),
            "eval_wall_s": round(time.perf_counter() - t1, 1), "machine": machine()}


def save(out: Path, figures: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2, default=str) + "\n")
    print(f"wrote {out}")
