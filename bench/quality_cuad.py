"""Contract clause-type accuracy of the default model after tuning with the legal recipe, on held-out contracts.

Reads bench/data/cuad/clauses.jsonl.gz (CUAD v1, 19 clause categories; bench/prepare_cuad.py makes it) and holds
out a seeded 15% of the contracts, whole: no clause of a scored contract is trained on. Trains through
configs/legal/clause-types.yaml (its mode, prompt, length and schedule; the rows, validation split and output are
the benchmark's) for --epochs passes over at most --per-class rows of each category from the other contracts (a
seeded 2% of them is the validation split for the loss), then scores a seeded sample of --test-rows held-out rows
with the base model and the tuned model. In generate mode (the recipe's) both answer constrained to the 19 labels,
the base zero-shot; in head mode the base model's head is untrained, so its accuracy is near chance (1/19) and the
comparison says only what the trained head adds:
    python bench/quality_cuad.py [--per-class 120] [--test-rows 600] [--epochs 1] [--mode generate|head]
                                 [--quick] [--json PATH]
Reports accuracy and macro-F1, base vs tuned, with the bootstrap 95% interval of the accuracy difference.
About 14 minutes on 2 idle cores with the defaults (training ~6, scoring ~8); --quick about 3.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from quality_common import Row, holdout, save, train_and_score

from tunelab.config import load_config

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "bench" / "data" / "cuad" / "clauses.jsonl.gz"
RECIPE = ROOT / "configs" / "legal" / "clause-types.yaml"
# Set by train_and_score for the benchmark's own rows; the recipe's values of these must not override them.
BENCH_KEYS = {
    "name",
    "output_dir",
    "task",
    "data.train",
    "data.columns",
    "data.val_fraction",
    "data.system_prompt",
    "eval.compare_base",
    "eval.during_training",
}


def recipe_overrides(recipe: dict[str, Any], prefix: str = "") -> list[str]:
    """The keys the recipe file sets (as dotted overrides), less the benchmark's own: train_and_score builds the
    config from defaults, so the recipe reaches it this way."""
    out = []
    for key, value in recipe.items():
        dotted = f"{prefix}{key}"
        if dotted in BENCH_KEYS:
            continue
        if isinstance(value, dict):
            out += recipe_overrides(value, f"{dotted}.")
        else:
            out.append(f"{dotted}={json.dumps(value)}")  # JSON is YAML: strings and lists parse back as they were
    return out


def split(rows: list[dict[str, str]], per_class: int, test_rows: int, seed: int) -> tuple[list[Row], list[Row], int]:
    """Training rows (at most per_class a category) from 85% of the contracts, scored rows from the other 15%, and
    how many contracts are held out."""
    contracts = sorted({r["contract"] for r in rows})
    _, test_c = holdout(contracts, 0.15, seed)  # type: ignore[arg-type]  # it shuffles any list
    held_out = set(test_c)
    rng = random.Random(seed)
    by_label: dict[str, list[Row]] = defaultdict(list)
    test: list[Row] = []
    for r in rows:
        (test if r["contract"] in held_out else by_label[r["label"]]).append((r["text"], r["label"]))
    train = [x for label in sorted(by_label) for x in rng.sample(by_label[label], min(per_class, len(by_label[label])))]
    rng.shuffle(train)
    # Scored shortest first: evaluate batches rows in file order, and rows of like length waste less on padding
    # (~1.5x faster here); the scores do not depend on the order.
    return train, sorted(rng.sample(test, min(test_rows, len(test))), key=lambda r: len(r[0])), len(held_out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-class", type=int, default=120, help="training rows per category, at most")
    ap.add_argument("--test-rows", type=int, default=600, help="held-out rows scored (a seeded sample)")
    ap.add_argument("--mode", choices=["generate", "head"], default=None, help="default: the recipe's")
    # The recipe's 4 epochs suit its ~360-row sample; one pass over ~2,200 rows keeps the run near 15 minutes.
    ap.add_argument("--epochs", type=int, default=1, help="passes over the training rows")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="20 rows per category, 150 scored: a first look")
    ap.add_argument("--work", default="runs/bench-quality-cuad")
    ap.add_argument("--json", default="bench/results/quality_cuad.json")
    a = ap.parse_args()
    t0 = time.perf_counter()
    with gzip.open(DATA, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    per_class, test_rows = (20, 150) if a.quick else (a.per_class, a.test_rows)
    train, test, held_out = split(rows, per_class, test_rows, a.seed)
    extra = [f"train.epochs={a.epochs}", *([f"classification.mode={a.mode}"] if a.mode else [])]
    if a.mode == "head":
        extra.append("train.learning_rate=1.0e-3")  # as configs/banking77/head-lora.yaml
    recipe = load_config(RECIPE, extra)  # validates the recipe with the benchmark's changes
    # The probes (forgetting, bias) say nothing of clause accuracy and cost ~2 minutes: off, as in quality_clinc150.
    overrides = [*recipe_overrides(recipe.model_dump(mode="json", exclude_unset=True)), "eval.probes.enabled=false"]
    res = train_and_score("bench-cuad", train, test, Path(a.work), overrides, recipe.data.system_prompt or "")
    ev = res["eval"]
    res["figures"] = {
        "mode": recipe.classification.mode,
        "base": "untrained head: chance" if recipe.classification.mode == "head" else "zero-shot, constrained",
        "accuracy": ev["model"]["accuracy"],
        "macro_f1": ev["model"]["macro_f1"],
        "base_accuracy": ev["base"]["accuracy"],
        "base_macro_f1": ev["base"]["macro_f1"],
        "accuracy_diff": ev["comparison"]["diff"],
        "ci95_diff": ev["comparison"]["ci95"],
        "train_seconds": res["summary"]["train_seconds"],
        "tokens_per_s": res["summary"]["tokens_per_s"],
        "train_wall_s": res["train_wall_s"],
        "eval_wall_s": res["eval_wall_s"],
        "total_wall_s": round(time.perf_counter() - t0, 1),
    }
    res["split"] = {
        "seed": a.seed,
        "contracts": len({r["contract"] for r in rows}),
        "contracts_held_out": held_out,
        "held_out_fraction": 0.15,
        "per_class": per_class,
        "epochs": a.epochs,
        "test_rows": len(test),
        "quick": a.quick,
    }
    print(res["figures"])
    save(Path(a.json), res)


if __name__ == "__main__":
    main()
