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


def test_evaluations_are_kept_side_by_side_named_after_their_data(tmp_path: Path) -> None:
    from tunelab.runs import RunDir

    run = RunDir(_run(tmp_path, "e", "completed"))
    (run.path / "eval.json").write_text(json.dumps({"data": "old.csv", "rows": 1}))  # an earlier version's
    first = run.write_evaluation({"data": "data/test.csv", "rows": 10})
    assert first == run.path / "evals" / "test.json"
    run.write_evaluation({"data": "data/test.csv", "rows": 12})  # the same data again: replaces its result
    run.write_evaluation({"data": "other/test.csv", "rows": 3})  # another file of the same name: its own
    run.write_evaluation({"data": "the validation split", "rows": 4}, name="validation")
    evals = run.evaluations()
    assert list(evals) == ["eval.json", "test", "test-2", "validation"]
    assert evals["test"]["rows"] == 12 and evals["test-2"]["data"] == "other/test.csv"
    assert evals["eval.json"]["data"] == "old.csv"
    run.write_evaluation({"data": "eval.jsonl", "rows": 5})  # named like the old file: both kept, apart
    (run.path / "evals" / "test-2.json").write_text("{damaged")  # a damaged evaluation doesn't stop a new one
    assert run.write_evaluation({"data": "new.csv", "rows": 6}).name == "new.json"
    assert run.write_evaluation({"data": "other/test.csv", "rows": 7}).name == "test-3.json"
    with pytest.raises(RunDirError, match="test-2.json"):
        run.evaluations()  # reading it whole does say which file is damaged


def test_typed_readers(tmp_path: Path, tiny_model: Path) -> None:

    cfg = tunelab.load_config(None, ["name=t", f"output_dir={tmp_path}", f"model.base={tiny_model}",
                                     "model.max_length=64"])
    run = open_run(cfg, resume=False)
    assert run.config().model.max_length == 64 and run.status() == "running" and run.summary()["name"] == "t"
    run.write_labels(["a", "b"])
    assert run.labels() == ["a", "b"]
    (run.path / "labels.json").write_text('{"a": 1}')
    with pytest.raises(RunDirError, match="labels.json: expected a list"):
        run.labels()
    (run.path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n[1]\n{"step": 2, "loss": 1.0}\n{"ste')
    lines = run.metrics()
    assert [r["step"] for r in lines.rows] == [1, 2] and lines.damaged == 2
    assert run.series("loss") == [(1.0, 2.0), (2.0, 1.0)]
    run.set_status("failed", error="boom")
    assert run.summary()["error"] == "boom"
    assert "error" not in run.set_status("running")


def test_progress_and_events_seen_from_outside(tmp_path: Path) -> None:
    from tunelab.runs import Reporter, RunDir, observe

    run = RunDir(_run(tmp_path, "p", "running"))
    reporter = Reporter(run)
    reporter.event("Run started")
    reporter.phase("training", total=10)
    reporter.update(step=3, total_steps=10, loss=1.5, eta_seconds=12.0, force=True)
    reporter.event("Checkpoint saved at step 3", kind="checkpoint", step=3)
    seen = observe(run)
    assert (seen.status, seen.phase, seen.step, seen.total_steps, seen.loss, seen.eta_seconds) == (
        "running", "training", 3, 10, 1.5, 12.0)
    assert seen.alive is True  # this process wrote it
    assert [e["message"] for e in seen.events] == ["Run started", "Checkpoint saved at step 3"]
    assert seen.events[1]["data"] == {"step": 3} and seen.events[1]["type"] == "checkpoint"
    assert [e["id"] for e in observe(run, events_after=1).events] == [2]
    assert Reporter(run)._next_id == 3  # a resumed run goes on numbering its events


def test_a_run_trained_under_looser_rules_still_reads_back(tmp_path: Path) -> None:
    """A run's own config.yaml is read without the rules across fields: it trained as it was. A new run with the
    same settings is refused."""
    from tunelab.runs import RunDir
    from tunelab.runs.directory import resume_config

    d = _run(tmp_path, "old-dpo", "interrupted")
    (d / "config.yaml").write_text(f"name: old-dpo\noutput_dir: {tmp_path}\nmethod: dpo\neval:\n  limit: 50\n")
    cfg = RunDir(d).config()
    assert cfg.method == "dpo" and cfg.eval.limit == 50
    cfg.name = "renamed"  # assigning does not bring the rules back
    resumed = resume_config(tunelab.load_config(None, ["name=old-dpo", f"output_dir={tmp_path}"]), [])
    assert resumed.eval.limit == 50
    with pytest.raises(tunelab.config.ConfigError, match="eval.limit is not used by method dpo"):
        tunelab.load_config(d / "config.yaml")
