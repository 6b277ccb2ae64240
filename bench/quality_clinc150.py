"""CLINC150 intent accuracy of the default model after tuning: in-scope accuracy and out-of-scope recall.

Trains on a seeded sample of the `train` split (--per-intent rows of each of the 150 intents, plus all
100 out-of-scope rows, labelled "oos"); a seeded 2% of that is the validation split for the loss.
Scores the `val` split (never trained on: --test-per-intent of the 20 rows per intent, seeded, plus all
100 out-of-scope rows) with the base and the tuned model, answers constrained to the 151 labels. The tuned
model answers oos when its best intent's probability is below the threshold calibrated on the validation split
(classification.unsure_label=oos; --no-unsure turns it off); the figures without it are reported beside:
    python bench/quality_clinc150.py [--per-intent 40] [--epochs 1] [--test-per-intent 10] [--quick]
                                     [--no-unsure] [--unsure-budget 0.02] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from quality_common import SHARED, save, train_and_score

PROMPT = "Classify the user's request to a virtual assistant; answer oos if it is out of scope."


def scope_figures(confusion: dict) -> dict[str, float]:
    """In-scope accuracy (right intent among in-scope rows) and out-of-scope recall, from the confusion matrix."""
    labels, m = confusion["labels"], confusion["matrix"]
    oos = labels.index("oos")
    ins = [i for i in range(len(labels)) if i != oos]
    in_rows = sum(sum(m[i]) for i in ins)
    return {"in_scope_accuracy": sum(m[i][i] for i in ins) / max(in_rows, 1),
            "oos_recall": m[oos][oos] / max(sum(m[oos]), 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-intent", type=int, default=40, help="training rows per in-scope intent (of 100)")
    ap.add_argument("--epochs", type=float, default=1)
    ap.add_argument("--test-per-intent", type=int, default=10, help="scored val rows per intent (of 20)")
    ap.add_argument("--quick", action="store_true", help="8 rows per intent, 1 epoch, every 5th val row scored")
    ap.add_argument("--no-unsure", action="store_true", help="answer the best label even when unsure")
    ap.add_argument("--unsure-budget", type=float, help="classification.unsure_budget (default: the config's)")
    ap.add_argument("--val-fraction", type=float, default=0.05,
                    help="validation split (the threshold is calibrated on its in-scope rows)")
    ap.add_argument("--work", default="runs/bench-quality-clinc150")
    ap.add_argument("--json", default="bench/results/quality_clinc150.json")
    a = ap.parse_args()
    d = json.loads((SHARED / "clinc150" / "data_trainval.json").read_text())
    per_intent, epochs = (8, 1) if a.quick else (a.per_intent, a.epochs)
    by_intent: dict[str, list[tuple[str, str]]] = {}
    for text, intent in d["train"]:
        by_intent.setdefault(intent, []).append((text, intent))
    rng = random.Random(0)
    train = [r for rows in by_intent.values() for r in rng.sample(rows, min(per_intent, len(rows)))]
    train += [(t, "oos") for t, _ in d["oos_train"]]
    rng.shuffle(train)
    val_by_intent: dict[str, list[tuple[str, str]]] = {}
    for text, intent in d["val"]:
        val_by_intent.setdefault(intent, []).append((text, intent))
    test = [r for rows in val_by_intent.values() for r in rng.sample(rows, min(a.test_per_intent, len(rows)))]
    test += [(t, "oos") for t, _ in d["oos_val"]]
    if a.quick:
        test = test[::5]
    overrides = [f"train.epochs={epochs}", "train.batch_size=16", "eval.probes.enabled=false",
                 f"data.val_fraction={a.val_fraction}"]
    if not a.no_unsure:
        overrides.append("classification.unsure_label=oos")
        if a.unsure_budget is not None:
            overrides.append(f"classification.unsure_budget={a.unsure_budget}")
    res = train_and_score("bench-clinc150", train, test, Path(a.work), overrides, PROMPT)
    ev = res["eval"]
    tuned = scope_figures(ev["confusion"])
    unsure = ev.get("unsure")
    if unsure:  # the figures without the threshold, and the threshold itself
        raw = scope_figures(unsure["raw"]["confusion"])
        tuned |= {f"raw_{k}": v for k, v in raw.items()} | {
            "raw_accuracy": unsure["raw"]["accuracy"], "unsure_threshold": unsure["threshold"],
            "unsure_rows_turned": unsure["rows_turned"]}
    res["figures"] = {**tuned, "accuracy": ev["model"]["accuracy"], "macro_f1": ev["model"]["macro_f1"],
                      "base_accuracy": ev["base"]["accuracy"], "ci95_diff": ev["comparison"]["ci95"],
                      "train_seconds": res["summary"]["train_seconds"], "tokens_per_s": res["summary"]["tokens_per_s"]}
    print(res["figures"])
    save(Path(a.json), res)


if __name__ == "__main__":
    main()
