"""The pieces of data-parallel training that need no second process: the global batch split between processes,
what a process beside main writes (nothing), and a lost peer said plainly."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunelab import distributed
from tunelab.config import ConfigError, load_config
from tunelab.runs import RunDir, SilentReporter
from tunelab.training import auto


def _hp(monkeypatch: pytest.MonkeyPatch, world: int, *overrides: str) -> auto.Hyperparams:
    monkeypatch.setenv("WORLD_SIZE", str(world))
    cfg = load_config(None, ["data.train=x.jsonl", *overrides])
    return auto.hyperparams(cfg, n_params=1_000_000, lengths=[100] * 64)


def test_the_batch_is_the_global_one(monkeypatch: pytest.MonkeyPatch) -> None:
    one = _hp(monkeypatch, 1, "train.batch_size=6")
    two = _hp(monkeypatch, 2, "train.batch_size=6")
    assert (one.batch_size, one.total_steps, one.learning_rate) == (two.batch_size, two.total_steps,
                                                                   two.learning_rate)
    assert _hp(monkeypatch, 4, "train.batch_size=auto", "train.max_batch_tokens=512").batch_size % 4 == 0
    with pytest.raises(ConfigError, match=r"train.batch_size=6 .* can't be split evenly between 4 processes: "
                                          r"set it to a multiple of 4 \(e.g. 8\)"):
        _hp(monkeypatch, 4, "train.batch_size=6")


def test_a_process_beside_main_writes_nothing(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    reporter = SilentReporter(run)
    reporter.phase("training", done=0, total=3)
    reporter.event("Checkpoint saved", kind="checkpoint")
    reporter.update(step=2, force=True)
    assert list(run.path.iterdir()) == [] and reporter.state["phase"] == "training"


def test_a_lost_peer_is_said_plainly(monkeypatch: pytest.MonkeyPatch) -> None:
    gloo = RuntimeError("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:16268: "
                        "Connection reset by peer. This is typically caused by a remote worker hanging")
    assert distributed.lost_peer(gloo) is None  # one process: nothing to lose
    monkeypatch.setenv("WORLD_SIZE", "2")
    said = distributed.lost_peer(gloo)
    assert said is not None and "another training process stopped" in str(said)
    assert "(Read error [127.0.0.1]:16268: Connection reset by peer)" in str(said) and "--resume" in str(said)
    assert distributed.lost_peer(RuntimeError("shape mismatch")) is None
    assert distributed.lost_peer(ValueError("gloo")) is None
