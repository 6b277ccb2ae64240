"""CUAD v1 clause types as classification rows: the data of bench/quality_cuad.py and the legal recipe's sample.

Reads master_clauses.csv (510 contracts; per clause category a column holding a Python-list literal of the
clauses found) from a local git mirror of a repository that carries CUAD v1 unchanged, and writes
    bench/data/cuad/clauses.jsonl.gz         one row per unique clause text that has exactly one category, for
                                             the categories with >= MIN_ROWS such rows: text, label, contract
                                             (the CSV's Filename), column (the category column it came from)
    src/tunelab/examples/legal/clauses.csv   a seeded sample of SAMPLE_PER_CLASS rows per category (text, label)
each beside a NOTICE.md (source, licence, changes) and LICENSE.source (CUAD's README, which holds the licence).
The output is deterministic (sorted rows, gzip mtime 0):
    python bench/prepare_cuad.py [--mirror GIT_DIR]
"""

from __future__ import annotations

import argparse
import ast
import csv
import gzip
import hashlib
import io
import json
import random
import subprocess
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MIRROR = Path("/work/.mirror/YiYang02+Legal-Text-Classification/repo")
SOURCE_REPO = "https://github.com/YiYang02/Legal-Text-Classification"
COMMIT = "1f7dd9aef6827955b6089c7e04ca02d453469aa0"  # "Initial commit": CUAD v1 as The Atticus Project ships it
CSV_PATH, README_PATH = "master_clauses.csv", "CUAD_v1_README.txt"
# Names, parties and dates say nothing about the kind of clause: short spans (a name, a date) rather than clauses.
METADATA = ("Document Name", "Parties", "Agreement Date", "Effective Date")
MIN_ROWS = 100  # categories with fewer single-label clauses are too thin to train and score per class
SAMPLE_PER_CLASS, SAMPLE_SEED = 22, 0
BENCH_DIR = ROOT / "bench" / "data" / "cuad"
SAMPLE_DIR = ROOT / "src" / "tunelab" / "examples" / "legal"
LICENCE = "CUAD is licensed under the Creative Commons Attribution 4.0 (CC BY 4.0) license"
EDGAR = (
    "We make no representations or warranties regarding the license status of the underlying contracts, "
    "which are publicly available and downloadable from EDGAR"
)


def git_show(mirror: Path, path: str) -> bytes:
    return subprocess.run(
        ["git", "--git-dir", str(mirror), "show", f"{COMMIT}:{path}"], check=True, capture_output=True
    ).stdout


def clause_rows(raw: bytes) -> tuple[list[dict[str, str]], dict[str, int]]:
    """Rows of the categories with >= MIN_ROWS single-label clauses, sorted, and figures about the whole CSV."""
    contracts = list(csv.DictReader(io.StringIO(raw.decode("utf-8"), newline="")))
    columns = list(contracts[0])
    categories = [c for c in columns if f"{c}-Answer" in columns and c not in METADATA]
    labels: dict[str, set[str]] = defaultdict(set)
    found_in: dict[str, set[str]] = defaultdict(set)
    for row in contracts:
        for cat in categories:
            for text in ast.literal_eval(row[cat]):
                labels[text].add(cat)
                found_in[text].add(row["Filename"])
    # A clause filed under several categories has no single right answer: left out rather than guessed.
    single = {t: next(iter(cats)) for t, cats in labels.items() if len(cats) == 1}
    counts = Counter(single.values())
    kept = {cat for cat, n in counts.items() if n >= MIN_ROWS}
    # A clause copied into several contracts is kept once, under the first of them, so a split by contract
    # can never put the same text on both sides.
    rows = [
        {"text": t, "label": cat, "contract": min(found_in[t]), "column": cat}
        for t, cat in single.items()
        if cat in kept
    ]
    rows.sort(key=lambda r: (r["label"], r["contract"], r["text"]))
    figures = {
        "contracts": len(contracts),
        "categories": len(categories),
        "unique_texts": len(labels),
        "single_label_texts": len(single),
        "texts_in_several_contracts": sum(len(v) > 1 for v in found_in.values()),
    }
    return rows, figures


def write_gzip_jsonl(path: Path, rows: list[dict[str, str]]) -> None:
    body = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows).encode("utf-8")
    with path.open("wb") as f, gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0, compresslevel=9) as gz:
        gz.write(body)  # no name and mtime 0 in the header: the same input gives the same bytes


def sample(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    by_label: dict[str, list[dict[str, str]]] = defaultdict(list)
    for r in rows:
        by_label[r["label"]].append(r)
    rng = random.Random(SAMPLE_SEED)
    picked = [r for label in sorted(by_label) for r in rng.sample(by_label[label], SAMPLE_PER_CLASS)]
    rng.shuffle(picked)  # mixed, so a file read from the top is not one category after another
    return picked


def notice(what: str, csv_sha256: str, rows: list[dict[str, str]], readme: str) -> str:
    """NOTICE.md of the full set (what="full set") or of the shipped sample (what="sample")."""
    licence = next(line.strip() for line in readme.splitlines() if line.startswith(LICENCE))
    assert EDGAR in readme, "the disclaimer about the underlying contracts is not in CUAD's README any more"
    counts = Counter(r["label"] for r in rows)
    per_class = "\n".join(f"| {label} | {n} |" for label, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    last = (
        f"- This is a sample: {SAMPLE_PER_CLASS} rows per category, chosen at random (seed {SAMPLE_SEED}) from "
        "the full set in tunelab's repository (bench/data/cuad/clauses.jsonl.gz); only text and label are kept."
        if what == "sample"
        else "- Fields: text, label, contract (the CSV's Filename), column (the category column the text came from)."
    )
    return f"""# CUAD v1 clause types ({what})

Source: the Contract Understanding Atticus Dataset (CUAD) v1, by The Atticus Project, Inc.
(https://www.atticusprojectai.org/cuad; Hendrycks et al., "CUAD: An Expert-Annotated NLP Dataset for Legal
Contract Review", 2021, https://arxiv.org/abs/2103.06268). Read from `{CSV_PATH}` of {SOURCE_REPO}
at commit `{COMMIT}` (that repository's initial commit, which carries CUAD v1 as released);
sha256 of the file: `{csv_sha256}`.

Licence, as CUAD's README (`{README_PATH}`, copied unchanged to `LICENSE.source` beside this file) states it:

> {licence}
>
> {EDGAR}.

Changes made (by tunelab's `bench/prepare_cuad.py`):
- Each clause string of each category column became one row labelled with the column's name (the category);
  the metadata categories ({", ".join(METADATA)}) and the `-Answer` columns are left out.
- Clause texts are kept verbatim and de-duplicated; a text filed under more than one category is dropped;
  a text found in several contracts is kept once, under the first of their Filenames in sorted order.
- Only the {len(counts)} categories with at least {MIN_ROWS} single-category clauses are kept.
{last}

{len(rows)} rows from {len({r["contract"] for r in rows})} contracts:

| label | rows |
|---|---|
{per_class}

The categories are CUAD's labels, not legal advice; a model trained on them is no substitute for a lawyer.
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mirror", type=Path, default=MIRROR, help="bare git directory of the mirror")
    a = ap.parse_args()
    raw, readme = git_show(a.mirror, CSV_PATH), git_show(a.mirror, README_PATH)
    sha = hashlib.sha256(raw).hexdigest()
    rows, figures = clause_rows(raw)
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    write_gzip_jsonl(BENCH_DIR / "clauses.jsonl.gz", rows)
    (BENCH_DIR / "NOTICE.md").write_text(notice("full set", sha, rows, readme.decode("utf-8")))
    (BENCH_DIR / "LICENSE.source").write_bytes(readme)
    picked = sample(rows)
    SAMPLE_DIR.mkdir(parents=True, exist_ok=True)
    with (SAMPLE_DIR / "clauses.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows((r["text"], r["label"]) for r in picked)
    (SAMPLE_DIR / "NOTICE.md").write_text(notice("sample", sha, picked, readme.decode("utf-8")))
    (SAMPLE_DIR / "LICENSE.source").write_bytes(readme)
    counts = Counter(r["label"] for r in rows)
    print(
        {
            **figures,
            "rows": len(rows),
            "classes": len(counts),
            "contracts_with_rows": len({r["contract"] for r in rows}),
            "sample_rows": len(picked),
            "gz_bytes": (BENCH_DIR / "clauses.jsonl.gz").stat().st_size,
        }
    )
    print(dict(counts.most_common()))


if __name__ == "__main__":
    main()
