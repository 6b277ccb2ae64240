"""Near-duplicates and leaks between splits on banking77 and CLINC150, as `tunelab data curate` finds them.

banking77 ships one file: duplicates inside it, and the leaks a seeded 10% validation split (what
data.val_fraction=0.1 gives) would have. CLINC150: duplicates inside `train`, and `val` rows that copy `train`
rows (the official splits). At several thresholds, with the seconds taken and examples to judge them by:
    python bench/curate_dups.py [--thresholds 0.7 0.8 0.9] [--json PATH]
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import time
from pathlib import Path
from typing import Any

from quality_common import SHARED, machine, save

from tunelab.data.curate.dups import duplicates
from tunelab.data.curate.leaks import leaks
from tunelab.data.curate.rows import Row
from tunelab.data.records import Record


def rows(pairs: list[tuple[str, str]], name: str, split: str = "train") -> list[Row]:
    return [Row(f"{name}:{i + 1}", {"text": t, "label": lab},
                Record(f"{name}:{i + 1}", "classification", text=t, label=lab), split)  # type: ignore[arg-type]
            for i, (t, lab) in enumerate(pairs)]


def measure(train: list[Row], val: list[Row], threshold: float) -> dict[str, Any]:
    t0 = time.perf_counter()
    dups = duplicates(train, threshold)
    t1 = time.perf_counter()
    leak = leaks(train, val, threshold, "flag")
    t2 = time.perf_counter()
    text = {r.where: r.text() for r in train + val}
    label = {r.where: r.record.label for r in train + val if r.record}
    conflicting = sum(label[f.where] != label[f.detail["kept"]] for f in dups)
    exact = sum(f.detail["similarity"] >= 1.0 for f in dups)
    return {"threshold": threshold, "rows": len(train), "validation_rows": len(val),
            "duplicates": len(dups), "exact_duplicates": exact, "clusters": len({f.detail["cluster"] for f in dups}),
            "duplicates_with_another_label": conflicting, "leaks": len(leak),
            "exact_leaks": sum(f.detail["similarity"] >= 1.0 for f in leak),
            "seconds_duplicates": round(t1 - t0, 2), "seconds_leaks": round(t2 - t1, 2),
            "duplicate_examples": [[text[f.detail["kept"]], text[f.where], f.detail["similarity"]]
                                   for f in dups[:: max(1, len(dups) // 8)][:8]],
            "leak_examples": [[text[f.detail["train"]], text[f.where], f.detail["similarity"]]
                              for f in leak[:: max(1, len(leak) // 6)][:6]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.7, 0.8, 0.9])
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "curate_dups.json")
    args = ap.parse_args()

    with (SHARED / "banking77" / "train.csv").open() as f:
        bank = [(r["text"], r["category"]) for r in csv.DictReader(f)]
    order = list(range(len(bank)))
    random.Random(0).shuffle(order)
    cut = len(bank) // 10
    bank_val = rows([bank[i] for i in order[:cut]], "banking77/validation", "validation")
    bank_train = rows([bank[i] for i in order[cut:]], "banking77/train")
    clinc = json.loads((SHARED / "clinc150" / "data_trainval.json").read_text())
    clinc_train = rows([tuple(x) for x in clinc["train"]], "clinc150/train")  # type: ignore[misc]
    clinc_val = rows([tuple(x) for x in clinc["val"]], "clinc150/val", "validation")  # type: ignore[misc]

    results: dict[str, Any] = {"machine": machine(), "datasets": {}}
    for name, train, val in (("banking77", bank_train, bank_val), ("clinc150", clinc_train, clinc_val)):
        results["datasets"][name] = [measure(train, val, t) for t in args.thresholds]
    print("| data | threshold | rows | duplicates (exact) | clusters | with another label | val rows | leaks (exact) "
          "| seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, per in results["datasets"].items():
        for m in per:
            print(f"| {name} | {m['threshold']} | {m['rows']:,} | {m['duplicates']} ({m['exact_duplicates']}) | "
                  f"{m['clusters']} | {m['duplicates_with_another_label']} | {m['validation_rows']:,} | "
                  f"{m['leaks']} ({m['exact_leaks']}) | {m['seconds_duplicates'] + m['seconds_leaks']:.1f} |")
    for name, per in results["datasets"].items():
        m = next(x for x in per if x["threshold"] == 0.8) if any(x["threshold"] == 0.8 for x in per) else per[0]
        print(f"\n{name} at {m['threshold']}: duplicates (kept | removed | similarity)")
        for a, b, s in m["duplicate_examples"]:
            print(f"  {a!r} | {b!r} | {s}")
        print(f"{name}: leaks (training | validation | similarity)")
        for a, b, s in m["leak_examples"]:
            print(f"  {a!r} | {b!r} | {s}")
    save(args.json, results)


if __name__ == "__main__":
    main()
