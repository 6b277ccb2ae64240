"""Does `tunelab sweep` find settings that beat the defaults? banking77 intents, a fixed time budget on this machine.

  1. The default config (what `tunelab init` writes for this data: a classification head, every hyperparameter
     `auto`) trained on 1,000 rows, validated on 200 others.
  2. `tunelab sweep` of the same config with the default search space, for --minutes (TPE, median pruning).
  3. The default run and the sweep's best trial scored on the same 400 held-out rows that neither saw: accuracy
     of each and the paired difference with a 95% bootstrap interval.
Trials and the default run leave the probes and the base score out (the same for every trial).

    python bench/sweep_banking77.py [--minutes 30] [--json PATH]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from estimate_accuracy import machine  # noqa: E402


def prepare(work: Path, seed: int = 0) -> dict[str, Path]:
    with (SHARED / "banking77" / "train.csv").open() as f:
        rows = list(csv.DictReader(f))
    random.Random(seed).shuffle(rows)
    out = {}
    for name, part in (("train", rows[:1000]), ("validation", rows[1000:1200]), ("test", rows[1200:1600])):
        out[name] = work / f"{name}.csv"
        with out[name].open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["text", "category"])
            w.writeheader()
            w.writerows(part)
    return out


def per_row_accuracy(run: Path, test: Path) -> list[float]:
    from tunelab.data.load import load_records
    from tunelab.eval.evaluate import _task, score
    from tunelab.models.load import load

    lm = load(str(run))
    records = load_records(test, "auto", {"text": "text", "label": "category"}).records
    task = _task(lm, records)
    _, _, per_ex = score(lm, task, max_new_tokens=16, max_length=lm.run_config().model.max_length, batch_size=32)
    return per_ex


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "sweep_banking77.json")
    args = ap.parse_args()
    from tunelab.config import load_config
    from tunelab.eval.metrics import bootstrap_diff
    from tunelab.plan import init
    from tunelab.plan.fit import run as train
    from tunelab.plan.sweep import run_sweep

    work = Path(tempfile.mkdtemp(prefix="tunelab-sweep-bench-"))
    data = prepare(work)
    chosen = init.suggest(str(data["train"]))
    init.write(chosen, work / "banking77.yaml", "banking77")
    common = [f"output_dir={work / 'runs'}", f"data.validation={data['validation']}", "data.val_fraction=0",
              "eval.probes.enabled=false", "eval.compare_base=false"]

    t0 = time.perf_counter()
    default = train(load_config(work / "banking77.yaml", [*common, "name=default"]))
    default_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    study = run_sweep(load_config(work / "banking77.yaml", [*common, "sweep.trials=null",
                                                            f"sweep.minutes={args.minutes}"]))
    sweep_seconds = time.perf_counter() - t0
    best = study.best_trial
    best_run = Path(best.user_attrs["run_dir"])

    default_acc = per_row_accuracy(default.run_dir, data["test"])
    best_acc = per_row_accuracy(best_run, data["test"])
    diff, lo, hi = bootstrap_diff(best_acc, default_acc)
    states: dict[str, int] = {}
    for t in study.trials:
        states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
    result = {
        "machine": machine(), "when": time.strftime("%Y-%m-%d %H:%M"), "minutes_budget": args.minutes,
        "rows": {"train": 1000, "validation": 200, "test": 400},
        "config": chosen.overrides() | {"data.train": "train.csv"},
        "default": {"validation_accuracy": default.summary.get("tuned_accuracy"), "seconds": round(default_seconds),
                    "test_accuracy": sum(default_acc) / len(default_acc), "resolved": _resolved(default.run_dir)},
        "sweep": {"seconds": round(sweep_seconds), "trials": states, "best_trial": best.number,
                  "best_params": best.params, "best_validation_accuracy": best.value,
                  "test_accuracy": sum(best_acc) / len(best_acc)},
        "difference": {"test_accuracy": diff, "ci95": [lo, hi], "confirmed": lo > 0},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps(result["default"], default=str), json.dumps(result["sweep"], default=str),
          json.dumps(result["difference"]), sep="\n")


def _resolved(run: Path) -> dict[str, Any]:
    f = run / "resolved.json"
    return json.loads(f.read_text()) if f.is_file() else {}


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
