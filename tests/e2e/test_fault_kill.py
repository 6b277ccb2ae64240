"""kill -9 inside a checkpoint save and while the report is written, then `tunelab train --resume`: the run never
looks more finished than it is, and ends with the per-step losses of a run never interrupted. A checkpoint cut
short since is passed over, naming the file, for the whole one before it. (bench/fault_kill.py does this 20 times
at random points.)"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import TrainerCallback

import tunelab
from tests.helpers import (
    kill_landed,
    looks_more_finished,
    resumable_config,
    step_losses,
    tunelab_cli,
    tunelab_killable,
    write_chat,
)
from tunelab.recipes import dispatch
from tunelab.runs import RunDir

STEPS = 6


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("fault-kill")
    write_chat(d / "train.jsonl", 8)  # 4 steps an epoch at batch 2: the resumes cross an epoch's end
    return d


def write_config(workdir: Path, tiny_model: Path, name: str) -> Path:
    return resumable_config(workdir, tiny_model, name, STEPS, save_every=2, eval={"probes": {"enabled": False}})


@pytest.fixture(scope="module")
def reference(workdir: Path, tiny_model: Path) -> dict[int, float]:
    result = tunelab.train(str(write_config(workdir, tiny_model, "reference")))
    assert result.status == "completed"
    return step_losses(result.run_dir)


def same_losses(run: Path, reference: dict[int, float]) -> None:
    got = step_losses(run)
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in got:  # the tolerance of test_resume.py
        assert got[step] == pytest.approx(reference[step], rel=1e-5, abs=1e-6), (step, got, reference)


def test_kill_9_in_a_checkpoint_save_and_in_the_report_then_resume(workdir: Path, tiny_model: Path,
                                                                   reference: dict[int, float]) -> None:
    cfg, run = write_config(workdir, tiny_model, "killed"), workdir / "runs" / "killed"
    log = workdir / "killed.log"
    # killed while optimizer.pt of checkpoint-4 is written: half of it on disk, no trainer_state.json yet
    proc = tunelab_killable("train", cfg, cwd=workdir, log=log, point="optimizer.pt:half:2")
    assert proc.wait(timeout=300) == -signal.SIGKILL, log.read_text()[-3000:]
    assert kill_landed(run, proc.pid) == "training: saving checkpoint-4"
    assert looks_more_finished(run, STEPS) == []
    assert RunDir(run).status() == "running" and RunDir(run).last_checkpoint() == RunDir(run).checkpoint(2)

    # resumed from checkpoint-2, and killed while report.json is written: the run itself is complete
    proc = tunelab_killable("train", cfg, "--resume", cwd=workdir, log=log, point="report.json:half")
    assert proc.wait(timeout=300) == -signal.SIGKILL, log.read_text()[-3000:]
    assert "checkpoint-4 is damaged (trainer_state.json is missing" in log.read_text()
    assert kill_landed(run, proc.pid) == "reporting"
    assert looks_more_finished(run, STEPS) == []
    assert RunDir(run).status() == "completed" and not RunDir(run).report_html.exists()
    same_losses(run, reference)

    r = tunelab_cli("train", cfg, "--resume", cwd=workdir)  # writes the report, and only that
    assert r.returncode == 0, r.stderr
    assert "its report was not written: writing it now" in r.stdout + r.stderr
    assert RunDir(run).report_html.is_file() and RunDir(run).summary()["steps"] == STEPS
    assert looks_more_finished(run, STEPS) == []
    assert [p.name for p in RunDir(run).checkpoints.glob("damaged-*")] == ["damaged-checkpoint-4"]
    assert list(run.rglob(".*.tmp")) == []  # the killed writers' temporary files are gone
    same_losses(run, reference)


class CrashAt(TrainerCallback):
    """A crash (not Ctrl-C) as step `step` begins: the run is left failed, its checkpoints as they were."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if state.global_step == self.step - 1:
            raise RuntimeError("crash")


def test_a_truncated_checkpoint_is_named_and_passed_over(workdir: Path, tiny_model: Path,
                                                        reference: dict[int, float]) -> None:
    cfg = write_config(workdir, tiny_model, "truncated")
    with pytest.raises(RuntimeError, match="crash"):
        dispatch.run(tunelab.load_config(str(cfg)), callbacks=[CrashAt(5)])
    run = RunDir(workdir / "runs" / "truncated")
    weights = run.checkpoint(4) / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a disk, not a kill: the manifest says it was whole

    r = tunelab_cli("train", cfg, "--resume", cwd=workdir)
    assert r.returncode == 0, r.stderr
    said = " ".join((r.stdout + r.stderr).split())
    assert "checkpoint-4 is damaged (adapter_model.safetensors has 1,000 bytes" in said
    assert "resuming from checkpoint-2 instead; it is kept as checkpoints/damaged-checkpoint-4" in said
    assert any("checkpoint-4 is damaged" in e["message"] and e["level"] == "warn" for e in run.events())
    same_losses(run.path, reference)


class CrashAfterTraining(TrainerCallback):
    """A crash once training has ended, its final checkpoint saved: as a kill while saving, probing or scoring."""

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        raise RuntimeError("crash")


def test_a_run_stopped_after_training_resumes_without_another_step(workdir: Path, tiny_model: Path,
                                                                    reference: dict[int, float]) -> None:
    """Resumed from the final step's checkpoint, transformers would train one step more (7 of 6)."""
    from safetensors.torch import load_file

    cfg = write_config(workdir, tiny_model, "after-training")
    with pytest.raises(RuntimeError, match="crash"):
        dispatch.run(tunelab.load_config(str(cfg)), callbacks=[CrashAfterTraining()])
    run = RunDir(workdir / "runs" / "after-training")
    assert run.last_checkpoint() == run.checkpoint(STEPS) and not run.adapter.exists()
    r = tunelab_cli("train", cfg, "--resume", cwd=workdir)
    assert r.returncode == 0, r.stderr
    same_losses(run.path, reference)
    assert run.summary()["steps"] == STEPS
    tuned, ref = (load_file(d / "adapter" / "adapter_model.safetensors") for d in (run.path, workdir / "runs" /
                                                                                   "reference"))
    assert tuned.keys() == ref.keys() and all(torch.equal(tuned[k], ref[k]) for k in ref)
