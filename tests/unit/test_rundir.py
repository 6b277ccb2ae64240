"""Run directories: which run --resume continues, and what a finished run refuses."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

import tunelab
from tunelab.runs import RunDirError, open_run, resumable


def _run(root: Path, name: str, status: str, age: float = 0.0) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "summary.json").write_text(json.dumps({"status": status}))
    t = time.time() - age
    os.utime(d / "summary.json", (t, t))
    return d


def test_resume_picks_the_newest_unfinished_run(tmp_path: Path) -> None:
    _run(tmp_path, "cfg", "completed", age=30)
    _run(tmp_path, "cfg-2", "interrupted", age=20)
    _run(tmp_path, "cfg-3", "failed", age=10)
    _run(tmp_path, "cfg-4", "completed", age=5)
    assert resumable(str(tmp_path), "cfg") == "cfg-3"
    assert resumable(str(tmp_path), "other") == "other"


def test_a_completed_run_is_never_resumed(tmp_path: Path) -> None:
    _run(tmp_path, "done", "completed")
    cfg = tunelab.load_config(None, ["name=done", f"output_dir={tmp_path}"])
    with pytest.raises(RunDirError, match="already completed"):
        open_run(cfg, resume=True)
    assert json.loads((tmp_path / "done" / "summary.json").read_text())["status"] == "completed"


def test_a_failed_run_resumed_loses_its_old_error(tmp_path: Path) -> None:
    d = _run(tmp_path, "f", "failed")
    (d / "summary.json").write_text(json.dumps({"status": "failed", "error": "boom"}))
    cfg = tunelab.load_config(None, ["name=f", f"output_dir={tmp_path}"])
    run = open_run(cfg, resume=True)
    assert run.summary() == {"status": "running", "updated": run.summary()["updated"]}


def test_trim_metrics_survives_a_line_cut_short(tmp_path: Path) -> None:
    d = _run(tmp_path, "m", "interrupted")
    (d / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    from tunelab.runs import RunDir

    RunDir(d).trim_metrics(1)
    assert (d / "metrics.jsonl").read_text() == '{"step": 1, "loss": 2.0}\n'
