"""How well `tunelab data curate` finds wrong labels: precision and recall against labels flipped on purpose.

banking77's training rows (about 10k customer messages, 77 intents): a seeded 5% of the rows get another label
drawn at random; `suspect_labels` (out-of-fold text model + cleanlab) runs on the result, and its flagged rows
are scored against the flipped ones. Precision counts a flagged row that was not flipped as wrong, although
banking77 has label noise of its own; so the clean labels are checked too (no flips) and the flagged-but-not-
flipped rows that are also flagged there are counted apart: they are suspect in the original data (printed
examples show what they look like). Also: precision in the top-ranked N rows (N = rows flipped) and seconds of
the whole step (features, 5-fold fits, cleanlab).

    python bench/curate_labels.py [--seeds 0,1,2] [--flip 0.05] [--json bench/results/curate_labels.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import time
from pathlib import Path
from typing import Any

import sklearn

from tunelab.config.curate import CurateConfig
from tunelab.data.curate.labels import label_model_name, suspect_labels
from tunelab.data.curate.rows import Finding, Row
from tunelab.data.records import Record
from tunelab.device import cpu_name

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "banking77" / "train.csv"


def load(path: Path) -> list[tuple[str, str]]:
    with path.open(newline="") as f:
        return [(r["text"], r["category"]) for r in csv.DictReader(f)]


def flip(data: list[tuple[str, str]], share: float, seed: int) -> tuple[list[tuple[str, str]], set[int]]:
    """A seeded `share` of the rows relabelled to another label, drawn uniformly; the flipped indices."""
    rng = random.Random(seed)
    labels = sorted({label for _, label in data})
    flipped = set(rng.sample(range(len(data)), round(len(data) * share)))
    out = [(text, rng.choice([k for k in labels if k != label]) if i in flipped else label)
           for i, (text, label) in enumerate(data)]
    return out, flipped


def rows(data: list[tuple[str, str]]) -> list[Row]:
    return [Row(f"train.csv:{i + 2}", {"text": t, "category": c},
                Record(f"train.csv:{i + 2}", kind="classification", text=t, label=c)) for i, (t, c) in enumerate(data)]


def index(f: Finding) -> int:
    return int(f.where.rsplit(":", 1)[1]) - 2


def timed(data: list[tuple[str, str]], seed: int) -> tuple[list[Finding], float]:
    t0 = time.perf_counter()
    found = suspect_labels(rows(data), CurateConfig(labels="flag"), seed=seed)
    return [f for f in found if "rank" in f.detail], time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--flip", type=float, default=0.05, help="share of rows relabelled")
    ap.add_argument("--examples", type=int, default=10)
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "curate_labels.json")
    args = ap.parse_args()
    data = load(args.data)
    seeds = [int(s) for s in args.seeds.split(",")]
    clean_found, clean_s = timed(data, seeds[0])
    clean = {index(f) for f in clean_found}
    print(f"{len(data)} rows, {len({c for _, c in data})} labels; clean labels: {len(clean)} flagged "
          f"({clean_s:.1f} s)", flush=True)
    runs: list[dict[str, Any]] = []
    examples: list[dict[str, Any]] = []
    for seed in seeds:
        noisy, flipped = flip(data, args.flip, seed)
        found, seconds = timed(noisy, seed)
        flagged = [index(f) for f in found]
        hit = set(flagged) & flipped
        wrong = [i for i in flagged if i not in flipped]
        also_clean = [i for i in wrong if i in clean]
        top = flagged[:len(flipped)]
        runs.append({"seed": seed, "rows": len(data), "flipped": len(flipped), "flagged": len(flagged),
                     "true_positives": len(hit), "precision": round(len(hit) / max(1, len(flagged)), 4),
                     "recall": round(len(hit) / len(flipped), 4),
                     "precision_at_flipped": round(len(set(top) & flipped) / max(1, len(top)), 4),
                     "flagged_not_flipped": len(wrong), "not_flipped_also_flagged_on_clean": len(also_clean),
                     "precision_counting_clean_suspects": round((len(hit) + len(also_clean)) / max(1, len(flagged)),
                                                                4),
                     "seconds": round(seconds, 2)})
        if seed == seeds[0]:
            by_index = {index(f): f for f in found}
            examples = [{"where": by_index[i].where, "text": noisy[i][0], **{k: by_index[i].detail[k] for k in (
                "given", "predicted", "predicted_probability", "rank")}} for i in also_clean[:args.examples]]
        print(f"seed {seed}: {runs[-1]}", flush=True)
    mean = {k: round(sum(r[k] for r in runs) / len(runs), 4) for k in (
        "precision", "recall", "precision_at_flipped", "precision_counting_clean_suspects", "seconds")}
    result = {"data": str(args.data.relative_to(ROOT.parent) if args.data.is_relative_to(ROOT.parent) else args.data),
              "flip_share": args.flip, "model": label_model_name(), "clean_labels_flagged": len(clean),
              "clean_labels_seconds": round(clean_s, 2), "runs": runs, "mean": mean,
              "original_noise_examples": examples,
              "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
                          "sklearn": sklearn.__version__},
              "when": time.strftime("%Y-%m-%d %H:%M")}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")

    print(f"\n{label_model_name()}\n{cpu_name()}, {os.cpu_count()} cores\n")
    print("| seed | flipped | flagged | precision | recall | precision in top N flipped | flagged, not flipped, "
          "also flagged on clean labels | precision counting those | seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        print(f"| {r['seed']} | {r['flipped']} | {r['flagged']} | {r['precision']:.3f} | {r['recall']:.3f} | "
              f"{r['precision_at_flipped']:.3f} | {r['not_flipped_also_flagged_on_clean']} of "
              f"{r['flagged_not_flipped']} | {r['precision_counting_clean_suspects']:.3f} | {r['seconds']:.1f} |")
    print(f"| mean | | | {mean['precision']:.3f} | {mean['recall']:.3f} | {mean['precision_at_flipped']:.3f} | | "
          f"{mean['precision_counting_clean_suspects']:.3f} | {mean['seconds']:.1f} |")
    print(f"\nflagged but not flipped, and flagged on the clean labels too (seed {seeds[0]}, most suspect first):")
    for e in examples:
        print(f"  #{e['rank']:<4} {e['text'][:90]!r}: labelled {e['given']}, model says {e['predicted']} "
              f"({e['predicted_probability']:.2f})")
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
