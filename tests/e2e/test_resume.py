"""Interrupt (SIGINT -> GracefulInterrupt: save and stop) and `tunelab train --resume`: the resumed run
logs the same per-step losses as one that was never interrupted (data order, dropout RNG, optimizer)."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest
from transformers import TrainerCallback

import tunelab
from tests.helpers import resumable_config, tunelab_cli, tunelab_process
from tunelab.models.load import ModelError
from tunelab.recipes import dispatch
from tunelab.runs import RunDirError

STEPS = 6


def losses(run: Path) -> dict[int, float]:
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    logged = [r["step"] for r in rows if "loss" in r]
    assert len(logged) == len(set(logged)), f"a step logged twice: {logged}"
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


class SigintDuringStep(TrainerCallback):
    """Sends SIGINT to this process while step `step` runs, as a Ctrl-C would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if state.global_step == self.step - 1:
            os.kill(os.getpid(), signal.SIGINT)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    d = tmp_path_factory.mktemp("resume")
    users = ["hello", "where is my card", "how do I reset my password", "what is the capital of France",
             "lost or stolen card", "exchange rate", "top up", "is it Paris", "help please", "tiny test"]
    replies = ["the quick brown fox", "my card has not arrived yet", "reset it please",
               "the capital of France is Paris", "card exchange", "the rate is 0123", "top up card"]
    with (d / "train.jsonl").open("w") as f:
        for i, user in enumerate(users):  # 10 rows of different lengths: 5 steps an epoch at batch 2
            reply = " ".join(replies[(i + k) % len(replies)] for k in range(1 + i % 3))
            f.write(json.dumps({"messages": [{"role": "user", "content": user},
                                             {"role": "assistant", "content": reply}]}) + "\n")
    return d


def write_config(workdir: Path, tiny_model: Path, name: str) -> Path:
    return resumable_config(workdir, tiny_model, name, STEPS, save_every=3)


@pytest.fixture(scope="module")
def reference(workdir: Path, tiny_model: Path) -> dict[int, float]:
    """Run A: six steps without interruption."""
    result = tunelab.train(str(write_config(workdir, tiny_model, "A")))
    assert result.status == "completed"
    saved = sorted(p.name for p in (result.run_dir / "checkpoints").iterdir())
    assert saved == ["checkpoint-3", "checkpoint-6"]
    got = losses(result.run_dir)
    assert sorted(got) == list(range(1, STEPS + 1))
    return got


@pytest.mark.parametrize("case", ["stop-3", "stop-4", "crash-after-4"])
def test_interrupt_then_resume_reproduces(workdir: Path, tiny_model: Path, reference: dict[int, float],
                                          case: str) -> None:
    stop = int(case[-1])
    cfg_path = write_config(workdir, tiny_model, f"B-{case}")
    before = signal.getsignal(signal.SIGINT)
    result = dispatch.run(tunelab.load_config(str(cfg_path)), callbacks=[SigintDuringStep(stop)])
    assert signal.getsignal(signal.SIGINT) is before  # the handler is given back

    run = result.run_dir
    summary = json.loads((run / "summary.json").read_text())
    assert result.status == summary["status"] == "interrupted"
    assert summary["steps"] == stop
    assert (run / "checkpoints" / f"checkpoint-{stop}").is_dir()  # saved on interrupt, not only every 3
    assert not (run / "adapter").exists()
    assert sorted(losses(run)) == list(range(1, stop + 1))
    with pytest.raises(ModelError, match="did not finish"):
        tunelab.load(str(run))
    with pytest.raises(RunDirError, match="--resume"):  # starting it afresh would clobber it
        dispatch.run(tunelab.load_config(str(cfg_path)))

    if case.startswith("crash"):  # killed hard after step 4: no interrupt checkpoint, the run marked failed
        shutil.rmtree(run / "checkpoints" / "checkpoint-4")
        s = json.loads((run / "summary.json").read_text()) | {"status": "failed"}
        (run / "summary.json").write_text(json.dumps(s))

    # after a crash the resume is a new process, as it would be; the others resume in this one
    resume = tunelab_process if case.startswith("crash") else tunelab_cli
    r = resume("train", cfg_path, "--resume", cwd=workdir)
    assert r.returncode == 0, r.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == STEPS
    assert (run / "adapter" / "adapter_model.safetensors").is_file()

    resumed = losses(run)
    assert sorted(resumed) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        assert resumed[step] == pytest.approx(reference[step], rel=1e-5, abs=1e-6), (step, resumed, reference)
    tunelab.load(str(run))  # now a model


def test_resume_of_unknown_run_is_a_clear_error(workdir: Path, tiny_model: Path) -> None:
    cfg = tunelab.load_config(str(write_config(workdir, tiny_model, "never-started")))
    with pytest.raises(RunDirError, match="nothing to resume"):
        dispatch.run(cfg, resume=True)
    assert not (workdir / "runs" / "never-started").exists()


def test_ctrl_c_after_the_model_is_saved(workdir: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C during the probes stops them, not the finished run; during the scoring after training the run is
    interrupted (not failed), and --resume finishes it."""
    import tunelab.probes.run as probes
    import tunelab.recipes.sft as sft

    def ctrl_c(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(probes, "run_probes", ctrl_c)
    result = dispatch.run(tunelab.load_config(str(write_config(workdir, tiny_model, "C-probes"))))
    assert result.status == "completed" and not (result.run_dir / "probes.json").exists()
    events = [json.loads(x)["message"] for x in (result.run_dir / "events.jsonl").read_text().splitlines()]
    assert "Probes stopped" in events

    monkeypatch.setattr(sft, "_score_generation", ctrl_c)
    cfg = tunelab.load_config(str(write_config(workdir, tiny_model, "C-scoring")),
                              ["data.val_fraction=0.2", "train.eval_every=3"])
    result = dispatch.run(cfg)
    assert result.status == "interrupted" and json.loads((result.run_dir / "summary.json").read_text())[
        "status"] == "interrupted"
    monkeypatch.undo()
    assert dispatch.run(cfg, resume=True).status == "completed"
