"""A run watched from another process through its directory alone: status, progress (step, loss, ETA) and
events while `tunelab train` runs in its own process, `tunelab status`, and a run whose process is gone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.helpers import CLI_ENV, tunelab_cli, write_chat
from tunelab.runs import RunDir, observe


def _config(tmp_path: Path, tiny_model: Path, steps: int) -> Path:
    cfg = {"name": "watched", "output_dir": str(tmp_path / "runs"), "model": {"base": str(tiny_model)},
           "data": {"train": str(write_chat(tmp_path / "chat.jsonl", 16)), "val_fraction": 0.25},
           "train": {"max_steps": steps, "batch_size": 2, "eval_every": 5, "threads": 1},
           "eval": {"probes": {"enabled": False}}}
    path = tmp_path / "watched.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_a_training_process_is_observed_from_outside(tiny_model: Path, tmp_path: Path) -> None:
    steps = 40
    proc = subprocess.Popen([sys.executable, "-m", "tunelab.cli.main", "train", str(_config(tmp_path, tiny_model,
                                                                                            steps))],
                            cwd=tmp_path, env=os.environ | CLI_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    run = RunDir(tmp_path / "runs" / "watched")
    seen = []
    try:
        deadline = time.time() + 300
        while proc.poll() is None and time.time() < deadline:
            if run.file("summary.json").is_file():
                seen.append(observe(run))
            time.sleep(0.2)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]
    running = [o for o in seen if o.status == "running"]
    # its process is there while it runs (None: the instant before the run wrote its first progress)
    assert running and all(o.alive is not False for o in running) and any(o.alive for o in running)
    training = [o for o in running if o.phase == "training" and o.step]
    assert training, [(o.status, o.phase, o.step) for o in seen]
    steps_seen = [o.step for o in training]
    assert steps_seen == sorted(steps_seen) and all(o.total_steps == steps for o in training)
    assert any(o.eta_seconds is not None and o.loss is not None for o in training)

    final = observe(run)
    assert final.status == "completed" and final.phase == "done" and final.step == steps
    kinds = [e.get("type") for e in final.events]
    messages = " | ".join(e["message"] for e in final.events)
    assert "Run started" in messages and "Training started: 40 steps" in messages and "Completed" in messages
    assert kinds.count("checkpoint") >= 1 and "metrics" in kinds and "saved" in kinds
    assert [e["id"] for e in final.events] == list(range(1, len(final.events) + 1))
    assert observe(run, events_after=final.events[-2]["id"]).events == final.events[-1:]

    r = tunelab_cli("status", run.path, "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["status"] == "completed"
    r = tunelab_cli("status", run.path, cwd=tmp_path)
    assert r.returncode == 0 and "completed" in r.stderr and "Completed" in r.stderr


def test_a_run_whose_process_died_is_told_apart(tiny_model: Path, tmp_path: Path) -> None:
    """kill -9 leaves status running: the observer sees that no process is behind it."""
    proc = subprocess.Popen([sys.executable, "-m", "tunelab.cli.main", "train", str(_config(tmp_path, tiny_model,
                                                                                            400))],
                            cwd=tmp_path, env=os.environ | CLI_ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    run = RunDir(tmp_path / "runs" / "watched")
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not ((run.progress() or {}).get("step") or 0) >= 2:
            time.sleep(0.2)
    finally:
        proc.kill()
        proc.wait(timeout=60)
    seen = observe(run)
    assert seen.status == "running" and seen.alive is False
    r = tunelab_cli("status", run.path, cwd=tmp_path)
    assert r.returncode == 1 and "process is gone" in r.stderr and "--resume" in r.stderr
    assert tunelab_cli("status", tmp_path, cwd=tmp_path).returncode == 2  # not a run
