"""kill -9 at random points of training runs, many times in a row: every run resumes (`tunelab train CONFIG
--resume`) and logs the same per-step losses as one never interrupted, and no run directory ever looks more
finished than it is.

A small run on the tiny random model (2 layers, hidden 64; LoRA with dropout, so the RNG state must come back too)
saves a checkpoint every `--save-every` steps. First it runs twice uninterrupted: a warm-up (the token cache; its
losses must equal the second's), then the reference losses and times.
Then runs of the same config are started as `tunelab train` processes and killed with SIGKILL, one to three
times each before a last attempt is let finish, until `--kills` kills have landed. A kill is one of:
  startup      from outside, at a random time before training (as long as the reference took to get there)
  training     from outside, at a random time in training (as long as the reference's), counted from when this
               process reached it: between steps, in a step, or inside a checkpoint save, as it falls
  after        from outside, at a random time after training: saving the adapter, probes, the report, exiting
  checkpoint   by the process itself (tests.helpers.kill_at) while one file of a random checkpoint is written
               (cut short at half) or right after it: weights, optimizer, scheduler, RNG state, trainer state,
               the manifest
  report       by the process itself while report.json or report.html is written, or between them
  adapter      by the process itself while the final adapter is written, or right after
After every kill the run directory is checked (tests.helpers.looks_more_finished): "completed" only with a model
that loads and every step's loss; no model that loads, nor a report, before then; the checkpoint a resume would
take loads whole. After a run completes its per-step losses are compared with the reference (the tolerance of
tests/e2e/test_resume.py).

    python bench/fault_kill.py [--kills 20] [--steps 48] [--save-every 2] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import transformers
import yaml

from tunelab.device import cpu_name
from tunelab.runs import RunDir, checkpoint_step, layout

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.helpers: the kill points and run checks
from tests.helpers import (  # noqa: E402
    build_tiny_model,
    kill_landed,
    looks_more_finished,
    step_losses,
    tunelab_killable,
    write_chat,
)

RESULTS = Path(__file__).parent / "results" / "fault_kill.json"
REL, ABS = 1e-5, 1e-6  # tests/e2e/test_resume.py
CHECKPOINT_FILES = ("adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth",
                    "trainer_state.json", "tunelab-manifest.json")
KINDS = {"startup": 3, "training": 5, "after": 3, "checkpoint": 5, "report": 3, "adapter": 1}  # of every 20 kills
AFTER = ("saving", "probing", "reporting", "done")  # progress.json's phases after training


def write_config(work: Path, tiny: Path, name: str, steps: int, save_every: int) -> Path:
    cfg = {"name": name, "output_dir": str(work / "runs"), "model": {"base": str(tiny)},
           "data": {"train": str(work / "train.jsonl"), "val_fraction": 0}, "peft": {"dropout": 0.1},
           "train": {"max_steps": steps, "save_every": save_every, "batch_size": 2, "learning_rate": 1e-2,
                     "log_every": 1, "threads": 1}}
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


Delay = tuple[str | None, float]  # (the phase a kill is counted from, None: the start; seconds after it)


def attempt(work: Path, cfg: Path, run: Path, *, point: str | None = None, delay: Delay | None = None,
            timeout: float = 600) -> tuple[int, float, dict[str, float], int]:
    """One `tunelab train` process (with --resume once the run exists), killed by itself at `point`, or from here
    `delay` = (phase, seconds) after it reached that phase (None: after it started; "after": any phase after
    training). Returns (exit code, seconds, the time each phase was first seen, process id)."""
    resume = (run / layout.CONFIG).exists() or (run / layout.SUMMARY).exists()  # killed before either: afresh
    proc = tunelab_killable("train", cfg, *(["--resume"] if resume else []), cwd=work, log=work / f"{run.name}.log",
                            point=point)
    try:
        return (*_watch(proc, run, time.perf_counter(), delay, timeout), proc.pid)
    finally:
        if proc.poll() is None:  # this bench stopped: its child goes with it
            proc.kill()


def _watch(proc: subprocess.Popen[bytes], run: Path, t0: float, delay: Delay | None,
           timeout: float) -> tuple[int, float, dict[str, float]]:
    seen: dict[str, float] = {}
    while proc.poll() is None:
        now = time.perf_counter() - t0
        if delay is not None:
            anchor = 0.0 if delay[0] is None else seen.get(delay[0])
            if anchor is not None and now >= anchor + delay[1]:
                proc.send_signal(signal.SIGKILL)
                break
        if now > timeout:
            proc.kill()
            raise TimeoutError(f"{run}: still running after {timeout} s")
        if (run / layout.PROGRESS).exists():
            try:
                progress = RunDir(run).progress() or {}
            except ValueError:
                progress = {}
            phase = progress.get("phase") if progress.get("pid") == proc.pid else None  # not an earlier process's
            if phase and phase not in seen:
                seen[phase] = now
                if phase in AFTER:
                    seen.setdefault("after", now)
        time.sleep(0.01)
    return proc.wait(), time.perf_counter() - t0, seen


def kill_plan(kills: int, rng: random.Random) -> list[str]:
    plan = [kind for kind, share in KINDS.items() for _ in range(round(share * kills / 20))]
    plan = (plan + [rng.choice(list(KINDS)) for _ in range(kills)])[:kills]
    rng.shuffle(plan)
    return plan


def aim(kind: str, run: Path, steps: int, save_every: int, ref: dict[str, float],
        rng: random.Random) -> tuple[str, str | None, Delay | None, str]:
    """(kind, point, delay, what was aimed at) for one kill of `kind` on the run as it is now."""
    if kind == "startup":
        d = rng.uniform(0, ref["training"])
        return kind, None, (None, d), f"SIGKILL {d:.2f} s after the start"
    if kind == "training":  # not quite to its end: a resumed attempt trains less
        d = rng.uniform(0, 0.9 * (ref["after"] - ref["training"]))
        return kind, None, ("training", d), f"SIGKILL {d:.2f} s into training"
    if kind == "after":
        d = rng.uniform(0, ref["wall"] - ref["after"])
        return kind, None, ("after", d), f"SIGKILL {d:.2f} s after training"
    if kind == "checkpoint":
        last = RunDir(run).last_checkpoint() if run.is_dir() else None
        left = (steps - (checkpoint_step(last) if last else 0)) // save_every  # checkpoints this attempt saves
        if left > 0:
            name, how, n = rng.choice(CHECKPOINT_FILES), rng.choice(("half", "whole")), rng.randint(1, left)
            what = f"{name} {'half-written' if how == 'half' else 'just written'} in checkpoint #{n} of the attempt"
            return kind, f"{name}:{how}:{n}", None, what
        return "none", None, None, "let finish (every checkpoint is saved: this kill goes to the next run)"
    if kind == "adapter":
        how = rng.choice(("half", "whole"))
        return kind, f"adapter/adapter_model.safetensors:{how}", None, f"final adapter {how}-written"
    name, how = rng.choice([("report.json", "half"), ("report.json", "whole"), ("report.html", "half"),
                            ("report.html", "whole")])
    return "report", f"{name}:{how}", None, f"{name} {'half-written' if how == 'half' else 'just written'}"


PHASES = (("starting", "start-up, before training"), ("opening", "start-up, before training"),
          ("training: saving", "inside a checkpoint save"), ("training", "training, in a step"),
          ("saving", "saving the final adapter"), ("probing", "probes"), ("reporting", "writing the report"),
          ("done", "after the report (exiting)"))


def phase(landed: str) -> str:
    return next((name for prefix, name in PHASES if landed.startswith(prefix)), landed)


def close(got: dict[int, float], ref: dict[int, float]) -> bool:
    return sorted(got) == sorted(ref) and all(abs(got[s] - ref[s]) <= max(REL * abs(ref[s]), ABS) for s in ref)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--steps", type=int, default=48)  # 4 epochs: resumes land in every epoch
    ap.add_argument("--save-every", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=RESULTS)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    warnings.simplefilter("ignore", FutureWarning)
    transformers.utils.logging.disable_progress_bar()  # the checks load each run's model: quietly
    started = time.perf_counter()

    work = Path(tempfile.mkdtemp(prefix="fault-kill-"))
    os.environ.setdefault("TUNELAB_HOME", str(work / "home"))  # the token cache: this bench's own
    tiny = build_tiny_model(work / "tiny")
    write_chat(work / "train.jsonl", 24)  # 12 steps an epoch at batch 2

    for name in ("warm-up", "reference"):  # the second starts as fast as every later process (a warm cache)
        cfg = write_config(work, tiny, name, args.steps, args.save_every)
        rc, wall, seen, _ = attempt(work, cfg, work / "runs" / name)
        assert rc == 0 and {"training", "after"} <= set(seen), (seen, (work / f"{name}.log").read_text()[-3000:])
    reference = step_losses(work / "runs" / "reference")
    assert sorted(reference) == list(range(1, args.steps + 1)), reference
    assert close(step_losses(work / "runs" / "warm-up"), reference), "two uninterrupted runs differ"
    ref_times = {"wall": wall, "training": seen["training"], "after": seen["after"]}
    print(f"reference: {args.steps} steps; a process takes {wall:.1f} s: start-up {seen['training']:.1f} s, "
          f"training {seen['after'] - seen['training']:.1f} s, then {wall - seen['after']:.1f} s")

    plan, kills, runs = kill_plan(args.kills, rng), [], []
    while len(kills) < args.kills:
        name = f"run-{len(runs) + 1}"
        run, cfg = work / "runs" / name, write_config(work, tiny, name, args.steps, args.save_every)
        budget, attempts, completed = rng.randint(1, 3), 0, False
        while not completed:
            kind = plan[len(kills)] if budget > 0 and len(kills) < args.kills else None
            kind, point, delay, aimed = aim(kind, run, args.steps, args.save_every, ref_times, rng) if kind else \
                ("none", None, None, "let finish")
            rc, seconds, _, pid = attempt(work, cfg, run, point=point, delay=delay)
            attempts += 1
            summary = RunDir(run).summary() if (run / layout.SUMMARY).exists() else {}
            completed = summary.get("status") == "completed" and RunDir(run).report_html.is_file()
            if rc == -signal.SIGKILL:
                budget -= 1
                landed, wrong = kill_landed(run, pid), looks_more_finished(run, args.steps)
                kills.append({"run": name, "attempt": attempts, "kind": kind, "aimed": aimed, "landed": landed,
                              "phase": phase(landed),
                              "seconds": round(seconds, 2), "status_after": summary.get("status"),
                              "looks_more_finished": wrong})
                print(f"kill {len(kills):2d}  {name} attempt {attempts}  {kind:<11} {aimed:<60} landed: {landed}"
                      + (f"  WRONG: {wrong}" if wrong else ""))
                continue
            assert rc == 0, f"{name} attempt {attempts} exited {rc}: " + (work / f"{name}.log").read_text()[-3000:]
        got = step_losses(run)
        diff = max(abs(got[s] - reference[s]) for s in reference) if sorted(got) == sorted(reference) else None
        wrong = looks_more_finished(run, args.steps)
        aside = sorted(p.name for p in RunDir(run).checkpoints.glob("damaged-*"))
        runs.append({"run": name, "attempts": attempts, "kills": sum(k["run"] == name for k in kills),
                     "max_loss_diff": diff,
                     "losses_match": close(got, reference), "complete_and_consistent": not wrong,
                     "checkpoints_set_aside": aside})
        print(f"  {name}: completed after {attempts} attempts; max |loss - reference| = {diff}; "
              f"{'same losses' if close(got, reference) else 'LOSSES DIFFER'}"
              + (f"; set aside: {', '.join(aside)}" if aside else ""))

    recovered = sum(r["losses_match"] and r["complete_and_consistent"] for r in runs)
    diffs = [r["max_loss_diff"] for r in runs if r["max_loss_diff"] is not None]
    out: dict[str, Any] = {
        "cpu": cpu_name(), "date": time.strftime("%Y-%m-%d"), "seconds": round(time.perf_counter() - started, 1),
        "settings": {"steps": args.steps, "save_every": args.save_every, "seed": args.seed, "model": "tiny llama "
                     "(2 layers, hidden 64), LoRA with dropout 0.1", "rows": 24, "batch": 2},
        "reference": {"process_seconds": round(wall, 1), "startup_s": round(ref_times["training"], 1),
                      "training_s": round(ref_times["after"] - ref_times["training"], 1)},
        "kills": len(kills), "runs": len(runs), "runs_recovered": recovered,
        "max_loss_diff": max(diffs) if diffs else None, "tolerance": {"rel": REL, "abs": ABS},
        "looked_more_finished_than_it_was": sum(bool(k["looks_more_finished"]) for k in kills),
        "landed": dict(Counter(k["phase"] for k in kills)), "by_kind": dict(Counter(k["kind"] for k in kills)),
        "kill_log": kills, "run_log": runs,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\n{len(kills)} kills over {len(runs)} runs: {recovered}/{len(runs)} recovered with the reference's "
          f"losses (max difference {out['max_loss_diff']}); {out['looked_more_finished_than_it_was']} run "
          f"directories looked more finished than they were. {out['cpu']}, {out['seconds']:.0f} s -> {args.json}")
    for landed, n in sorted(out["landed"].items(), key=lambda x: -x[1]):
        print(f"  {n:3d}  {landed}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
