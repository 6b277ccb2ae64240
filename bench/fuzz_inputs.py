"""The fuzz targets of the test suite, searched far longer than CI does: every data reader, the config loader and
every API request schema on a live server with the tiny model, N examples each (hypothesis; CI runs 40-60).

    python bench/fuzz_inputs.py [--examples 10000] [--only readers|config|api] [--json PATH]

Each target runs in its own pytest process with TUNELAB_FUZZ_EXAMPLES=N; hypothesis' statistics give the
examples tried and failed. A failure prints the falsifying example (kept in .hypothesis/ as a regression)."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from quality_common import machine, save

ROOT = Path(__file__).resolve().parents[1]
GROUPS = {"readers": "tests/unit/test_fuzz_readers.py", "config": "tests/unit/test_fuzz_config.py",
          "api": "tests/e2e/test_fuzz_api.py"}
STATS = re.compile(r"^(?P<node>\S+::\S+):\s*$|(?P<passing>\d+) passing, (?P<failing>\d+) failing, "
                   r"and (?P<invalid>\d+) invalid", re.M)


def targets(path: str) -> list[str]:
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", path], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return [line.strip() for line in out.splitlines() if "::" in line]


def search(node: str, examples: int) -> dict[str, Any]:
    env = {**os.environ, "TUNELAB_FUZZ_EXAMPLES": str(examples)}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--timeout", "0",
                           "--hypothesis-show-statistics", node], cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    passing = failing = invalid = 0
    for m in STATS.finditer(proc.stdout):  # phases (generate, shrink) add up
        if m["passing"]:
            passing += int(m["passing"])
            failing += int(m["failing"])
            invalid += int(m["invalid"])
    result = {"target": node, "passed": proc.returncode == 0, "examples": passing + failing, "failing": failing,
              "invalid": invalid, "seconds": round(seconds, 1)}
    if proc.returncode != 0:
        result["output"] = proc.stdout[-4000:]
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--examples", type=int, default=10000)
    ap.add_argument("--only", choices=sorted(GROUPS), action="append")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "fuzz_inputs.json")
    args = ap.parse_args()
    results = []
    for group in args.only or list(GROUPS):
        for node in targets(GROUPS[group]):
            r = search(node, args.examples)
            results.append(r)
            print(f"{'ok  ' if r['passed'] else 'FAIL'} {r['examples']:>6} examples {r['seconds']:>7.0f} s  {node}",
                  flush=True)
            if not r["passed"]:
                print(r["output"])
    save(args.json, {"machine": machine(), "examples_asked": args.examples, "targets": results,
                     "failures": sum(not r["passed"] for r in results)})


if __name__ == "__main__":
    main()
