"""Data scarcity: banking77 with 10 real rows per intent (770 rows), with and without synthetic rows.

Baseline: tune the default model (classification head) on the 770 real rows, score a seeded held-out set of
banking77 rows never trained on. Synthetic: start `tunelab serve` (the default model, SmolLM2-135M-Instruct) as
the teacher, run `tunelab data synth` on the 770 seeds, re-labelled by the baseline run (`--relabel-with`; the
teacher's own re-labelling is counted on a sample with `--teacher-check`), add the kept rows to the 770 real rows,
tune with the same settings and score the same held-out rows. Reports both accuracies with a 95% paired bootstrap
confidence interval of the difference.
    python bench/synth_scarcity.py [--per-label 15] [--epochs 5] [--teacher-check 24]
        [--base-url URL --model NAME]   # another teacher (e.g. a 7B+ instruct model on llama.cpp or vLLM)
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

from quality_common import SHARED, machine, save, train_and_score, write_csv

from tunelab.device import cpu_name
from tunelab.eval.classifier import load_classifier
from tunelab.eval.metrics import bootstrap_diff

PROMPT = "Classify the banking customer's message."
ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "COLUMNS": "200"}
BETTER_TEACHER = ("a 7B+ instruct model (e.g. Qwen2.5-7B-Instruct or Llama-3.1-8B-Instruct) behind its "
                  "OpenAI-compatible server (llama.cpp's llama-server or vLLM), given with --base-url and --model")

Row = tuple[str, str]


def split(rows: list[Row], per_label: int, test_rows: int, seed: int) -> tuple[list[Row], list[Row]]:
    """(train: per_label seeded rows of each intent, test: test_rows other seeded rows), disjoint."""
    idx = list(range(len(rows)))
    random.Random(seed).shuffle(idx)
    test = sorted(idx[:test_rows])
    by_label: dict[str, list[int]] = defaultdict(list)
    for i in idx[test_rows:]:
        by_label[rows[i][1]].append(i)
    train = sorted(i for lb in sorted(by_label) for i in by_label[lb][:per_label])
    assert not set(train) & set(test)
    return [rows[i] for i in train], [rows[i] for i in test]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_teacher(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`tunelab serve` on the default model, on a free loopback port, once it answers."""
    port = free_port()
    log = (work / "serve.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "tunelab.cli.main", "serve", "--port", str(port), "--data",
                             str(work / "serve")], env=os.environ | ENV, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"tunelab serve exited: {(work / 'serve.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5):
                return proc, f"http://127.0.0.1:{port}/v1"
        except OSError:
            time.sleep(1)
    proc.kill()
    raise RuntimeError("tunelab serve did not answer within 300 s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def synth(seeds: Path, out: Path, base_url: str, model: str | None, relabel_with: str, a: argparse.Namespace
          ) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "tunelab.cli.main", "data", "synth", str(seeds), "--label-column", "category",
           "--out", str(out), "--per-label", str(a.per_label), "--base-url", base_url, "--relabel-with",
           relabel_with, "--teacher-check", str(a.teacher_check), "--max-tokens", str(a.max_tokens),
           "--temperature", str(a.temperature), "--concurrency", str(a.concurrency), "--timeout", "300", "--json"]
    if model:
        cmd += ["--model", model]
    r = subprocess.run(cmd, env=os.environ | ENV, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"data synth failed ({r.returncode}): {r.stderr[-3000:]}")
    return json.loads(r.stdout)


def correct(run_dir: str, test: list[Row]) -> list[float]:
    clf = load_classifier(run_dir)
    return [float(p == g) for p, (_, g) in zip(clf([t for t, _ in test]), test, strict=True)]


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def table(f: dict[str, Any]) -> str:
    b, s, d = f["baseline"], f["synthetic"], f["difference"]
    sy = f["synth"]
    tc = sy.get("teacher_check") or {}
    lines = [
        "| arm | training rows | accuracy | macro F1 | train s | eval s |",
        "|---|---|---|---|---|---|",
        f"| baseline: {f['rows']['real']} real | {b['train_rows']} | {b['accuracy']:.3f} | {b['macro_f1']:.3f} | "
        f"{b['train_s']:.0f} | {b['eval_s']:.0f} |",
        f"| + synthetic (re-labelled by the baseline) | {s['train_rows']} | {s['accuracy']:.3f} | "
        f"{s['macro_f1']:.3f} | {s['train_s']:.0f} | {s['eval_s']:.0f} |",
        "",
        f"Difference (synthetic - baseline) on the same {f['rows']['test']} held-out rows: {d['accuracy']:+.3f}, "
        f"95% paired bootstrap CI [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] "
        f"({d['wins']} rows won, {d['losses']} lost).",
        "",
        "| synthetic rows | count |",
        "|---|---|",
        f"| requested ({sy['per_label']} per intent) | {sy['requested']} |",
        f"| proposed by the teacher ({sy['requests']} requests, {sy['unparsable']} replies unparsable) | "
        f"{sy['candidates']} |",
        *[f"| dropped: {k} | {v} |" for k, v in sy["dropped"].items()],
        f"| kept (added to the {f['rows']['real']} real rows) | {sy['kept']} |",
    ]
    if tc:
        lines.append(f"| teacher's own re-labelling on a sample: agrees with the asked intent | "
                     f"{tc['teacher_agrees']} of {tc['rows']} ({tc['teacher_unclear']} answers name no intent); "
                     f"the baseline agrees on {tc['model_agrees']} |")
    lines += ["", "| phase | seconds |", "|---|---|", *[f"| {k} | {v:.0f} |" for k, v in f["seconds"].items()], "",
              f"Machine: {f['machine']['cpu_name']}, {f['machine']['threads']} threads. Load average (1, 5, 15 "
              "min) after each phase, to show whether another job shared the 2 cores: "
              + "; ".join(f"{k}: {v}" for k, v in f["load_average"].items()) + ".", "", f["note"]]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds-per-label", type=int, default=10)
    ap.add_argument("--test-rows", type=int, default=1000)
    ap.add_argument("--per-label", type=int, default=15, help="synthetic rows asked for per intent")
    ap.add_argument("--epochs", type=float, default=5)
    ap.add_argument("--teacher-check", type=int, default=24, help="rows the teacher also labels (counted only)")
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--max-tokens", type=int, default=160)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--base-url", default=None, help="a running teacher instead of `tunelab serve` on the default")
    ap.add_argument("--model", default=None, help="the teacher's model name (with --base-url)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="runs/bench-synth-scarcity")
    ap.add_argument("--json", default="bench/results/synth_scarcity.json")
    a = ap.parse_args()
    work = Path(a.work)
    if work.exists():
        raise SystemExit(f"{work} exists: remove it or give another --work (each run starts fresh)")
    work.mkdir(parents=True)
    t_all, seconds = time.perf_counter(), {}
    loads = {"start": load()}
    with (SHARED / "banking77" / "train.csv").open(newline="") as f:
        rows = [(r["text"], r["category"]) for r in csv.DictReader(f)]
    real, test = split(rows, a.seeds_per_label, a.test_rows, a.seed)
    overrides = [f"train.epochs={a.epochs}", "classification.mode=head", "train.batch_size=16",
                 "train.learning_rate=1.0e-3", "model.max_length=128", "data.val_fraction=0", f"train.seed={a.seed}"]
    print(f"{len(real)} real rows ({a.seeds_per_label} per intent), {len(test)} held-out rows; load {loads['start']}",
          flush=True)

    base = train_and_score("synth-scarcity-base", real, test, work / "base", overrides, PROMPT)
    seconds |= {"baseline: train": base["train_wall_s"], "baseline: score": base["eval_wall_s"]}
    loads["baseline"] = load()
    print(f"baseline: {base['eval']['model']['accuracy']:.3f}", flush=True)

    seeds = work / "seeds.csv"
    write_csv(seeds, real)
    t0 = time.perf_counter()
    proc, base_url = (None, a.base_url) if a.base_url else start_teacher(work)
    seconds["teacher: start"] = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        s = synth(seeds, work / "synth", base_url, a.model, base["run_dir"], a)
        seconds["synth: all"] = time.perf_counter() - t0
        loads["synth"] = load()
    finally:
        if proc is not None:
            stop(proc)
    for phase, tally in s["phases"].items():
        seconds[f"synth: {phase} ({tally['requested']} requests)"] = tally["seconds"]
    seconds["synth: baseline re-labels"] = s["relabel"]["seconds"]
    made = [json.loads(line) for line in (work / "synth" / "synthetic.jsonl").read_text().splitlines()]
    synthetic = [(r["text"], r["label"]) for r in made]
    print(f"synth: {s['kept']} rows kept of {s['candidates']} proposed ({s['seconds']:.0f} s)", flush=True)

    arm = train_and_score("synth-scarcity-synthetic", real + synthetic, test, work / "synthetic", overrides, PROMPT)
    seconds |= {"synthetic: train": arm["train_wall_s"], "synthetic: score": arm["eval_wall_s"]}
    loads["synthetic"] = load()

    t0 = time.perf_counter()
    base_ok, arm_ok = correct(base["run_dir"], test), correct(arm["run_dir"], test)
    seconds["paired scoring (both runs)"] = time.perf_counter() - t0
    diff, lo, hi = bootstrap_diff(arm_ok, base_ok)
    seconds["total"] = time.perf_counter() - t_all

    def arm_figures(r: dict[str, Any], ok: list[float]) -> dict[str, Any]:
        ev = r["eval"]
        assert abs(sum(ok) / len(ok) - ev["model"]["accuracy"]) < 1e-9, "paired scoring differs from tunelab eval"
        return {"run_dir": r["run_dir"], "train_rows": r["train_rows"], "accuracy": ev["model"]["accuracy"],
                "macro_f1": ev["model"]["macro_f1"], "train_s": r["train_wall_s"], "eval_s": r["eval_wall_s"],
                "tokens_per_s": r["summary"].get("tokens_per_s"), "train_seconds": r["summary"].get("train_seconds"),
                "test_rows_copying_training_rows": ev.get("training_overlap")}

    teacher = s["teacher"]["model"]
    figures: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine() | {"cpu_name": cpu_name(), "cores": os.cpu_count()},
        "load_average": loads | {"end": load()},
        "rows": {"real": len(real), "per_label": a.seeds_per_label, "labels": len({lb for _, lb in real}),
                 "test": len(test), "synthetic": len(synthetic)},
        "settings": {"overrides": overrides, "per_label": a.per_label, "teacher_check": a.teacher_check,
                     "temperature": a.temperature, "max_tokens": a.max_tokens, "concurrency": a.concurrency,
                     "seed": a.seed, "teacher": s["teacher"]},
        "baseline": arm_figures(base, base_ok),
        "synthetic": arm_figures(arm, arm_ok),
        "difference": {"accuracy": diff, "ci95": [lo, hi],
                       "wins": sum(x > y for x, y in zip(arm_ok, base_ok, strict=True)),
                       "losses": sum(x < y for x, y in zip(arm_ok, base_ok, strict=True))},
        "synth": {"per_label": a.per_label, "requested": s["requested"], "requests": s["requests"],
                  "unparsable": s["unparsable"], "candidates": s["candidates"], "kept": s["kept"],
                  "dropped": s["dropped"], "relabel": s["relabel"], "teacher_check": s["relabel"].get("teacher_check"),
                  "kept_by_label": s["check"].get("labels"), "examples_kept": [r["text"] for r in made[:: max(
                      1, len(made) // 12)]][:12], "dropped_examples": s["dropped_examples"], "seconds": s["seconds"]},
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "note": (f"Teacher: {teacher}. A 135M teacher writes many off-topic or malformed utterances and cannot "
                 "re-label with 77 intents itself (see the teacher check), so the baseline run re-labels and "
                 "filters; whether what is left helps is what this measures. A teacher expected to help is "
                 f"{BETTER_TEACHER}."),
    }
    save(Path(a.json), figures)
    print(table(figures))


if __name__ == "__main__":
    main()
