"""Data-parallel training (`tunelab train --nproc N`, torchrun on one or two machines, gloo on the CPU): N processes
with the same global batch train the same model as one process, step for step; a killed process stops the others
and leaves a resumable run; a Ctrl-C stops every process after the same step, with a checkpoint; only the main
process writes the run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from tests.helpers import CLI_ENV, free_port, step_losses, tunelab_cli, write_chat
from tunelab.runs import RunDir

STEPS = 16
# per-step training loss, absolute: the same sums in another order (each process's share, then their average),
# compounded over the steps; measured differences are ~1e-6 at the first steps and ~1e-4 after 60
TOLERANCE = 1e-3


def write_config(work: Path, tiny_model: Path, name: str, **train: Any) -> Path:
    cfg = {"name": name, "output_dir": "runs", "model": {"base": str(tiny_model), "precision": "fp32"},
           "data": {"train": "train.jsonl", "val_fraction": 0}, "peft": {"dropout": 0},
           # max_batch_tokens: batches cut into pieces, a different number in each process (one gradient exchange)
           "train": {"max_steps": STEPS, "batch_size": 4, "learning_rate": 1e-2, "log_every": 1, "save_every": 2,
                     "threads": 1, "max_batch_tokens": 24} | train,
           "eval": {"probes": {"enabled": False}}}
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    """sft.yaml and the run of one process it gives: the reference."""
    d = tmp_path_factory.mktemp("distributed")
    write_chat(d / "train.jsonl", 32)
    write_config(d, tiny_model, "sft")
    r = tunelab_cli("train", "sft.yaml", "name=one", cwd=d)
    assert r.returncode == 0, r.stderr
    return d


def start(work: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "tunelab.cli.main", "train", *args], cwd=work,
                            env=os.environ | CLI_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str], timeout: float = 240) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def wait_for_checkpoint(proc: subprocess.Popen[str], run: Path, after: int = 0, timeout: float = 180) -> int:
    """The step of the first whole checkpoint (its manifest written) past `after`."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        steps = [int(p.parent.name.split("-")[1]) for p in run.glob("checkpoints/checkpoint-*/tunelab-manifest.json")]
        newer = [s for s in steps if s > after]
        if newer:
            return min(newer)
        assert proc.poll() is None, finish(proc)[1]
        time.sleep(0.02)
    raise AssertionError(f"no checkpoint past step {after} in {timeout} s")


def assert_same_losses(one: Path, other: Path) -> None:
    a, b = step_losses(one), step_losses(other)
    assert sorted(a) == sorted(b) == list(range(1, STEPS + 1)), (sorted(a), sorted(b))
    worst = max(abs(a[s] - b[s]) for s in a)
    assert worst < TOLERANCE, f"per-step losses differ by up to {worst:.2e}"


def test_two_processes_train_as_one_through_a_kill_and_a_ctrl_c(work: Path) -> None:
    run = work / "runs" / "two"
    proc = start(work, "sft.yaml", "name=two", "--nproc", "2")
    wait_for_checkpoint(proc, run)
    ranks = {c.environ().get("RANK"): c for c in psutil.Process(proc.pid).children(recursive=True)
             if c.environ().get("RANK") is not None}
    assert set(ranks) == {"0", "1"}
    ranks["1"].kill()
    code, err = finish(proc)
    assert code == 1, err
    assert "training process 1 of 2 stopped (signal SIGKILL)" in err and "--resume" in err, err
    assert "Traceback" not in err, err

    # another process count can't go on exactly: refused, and the run is left as it was
    before = RunDir(run).summary()
    r = tunelab_cli("train", "sft.yaml", "name=two", "--resume", cwd=work)
    assert r.returncode == 2 and "was trained with 2 process(es) and is resumed with 1" in r.stderr, r.stderr
    assert RunDir(run).summary() == before

    # a Ctrl-C reaches every process through the launcher: all stop after the same step, with a checkpoint
    resumed_at = max(int(p.name.split("-")[1]) for p in (run / "checkpoints").glob("checkpoint-*"))
    proc = start(work, "sft.yaml", "name=two", "--resume", "--nproc", "2")
    wait_for_checkpoint(proc, run, after=resumed_at)
    proc.send_signal(signal.SIGINT)
    code, err = finish(proc)
    assert code == 130 and "continue with --resume" in err, err
    assert RunDir(run).status() == "interrupted"

    proc = start(work, "sft.yaml", "name=two", "--resume", "--nproc", "2")
    code, err = finish(proc)
    assert code == 0, err
    assert RunDir(run).status() == "completed" and RunDir(run).resolved()["processes"] == 2
    assert_same_losses(work / "runs" / "one", run)
    # one process wrote the run: one manifest per checkpoint, each listing both processes' random states
    last = run / "checkpoints" / f"checkpoint-{STEPS}"
    assert {p.name for p in last.glob("rng_state_*.pth")} == {"rng_state_0.pth", "rng_state_1.pth"}
    assert "rng_state_1.pth" in (last / "tunelab-manifest.json").read_text()


def test_two_machines_on_the_loopback(work: Path) -> None:
    """torchrun on each machine, as docs/distributed.md shows; here both "machines" are this one."""
    port = str(free_port())
    procs = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(node),
         "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", port,
         "-m", "tunelab", "train", "sft.yaml", "name=nodes"],
        cwd=work, env=os.environ | CLI_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for node in (0, 1)]
    for proc in procs:
        code, err = finish(proc)
        assert code == 0, err
    assert_same_losses(work / "runs" / "one", work / "runs" / "nodes")


def test_dpo_in_two_processes_matches_one(work: Path, tiny_model: Path) -> None:
    pairs = Path(__file__).parents[1] / "data" / "preference" / "hh_rlhf_sample.jsonl"
    cfg = write_config(work, tiny_model, "dpo", max_steps=3, save_every=3)
    data = yaml.safe_load(cfg.read_text())
    del data["train"]["max_batch_tokens"]  # SFT's: TRL batches pairs itself
    cfg.write_text(yaml.safe_dump(data | {"method": "dpo", "data": {"train": str(pairs), "val_fraction": 0}}))
    r = tunelab_cli("train", "dpo.yaml", "name=dpo-one", cwd=work)
    assert r.returncode == 0, r.stderr
    code, err = finish(start(work, "dpo.yaml", "name=dpo-two", "--nproc", "2"))
    assert code == 0, err
    a, b = step_losses(work / "runs" / "dpo-one"), step_losses(work / "runs" / "dpo-two")
    assert sorted(a) == sorted(b) == [1, 2, 3]
    assert max(abs(a[s] - b[s]) for s in a) < TOLERANCE
    assert a[3] != a[1]  # it learned something: the comparison is not between two untrained models


def test_full_fine_tuning_sharded_with_fsdp_matches_one_process(work: Path, tiny_model: Path) -> None:
    """train.sharding=fsdp: each process holds half of the weights, gradients and optimizer state; the model
    trained and the one saved are the one process's; fsdp_offload in one process trains it too."""
    from safetensors.torch import load_file

    write_config(work, tiny_model, "full", max_steps=3, save_every=3, learning_rate=1e-4)
    r = tunelab_cli("train", "full.yaml", "name=full-one", "peft.method=full", cwd=work)
    assert r.returncode == 0, r.stderr
    code, err = finish(start(work, "full.yaml", "name=full-fsdp", "peft.method=full", "train.sharding=fsdp",
                             "--nproc", "2"))
    assert code == 0, err
    a, b = step_losses(work / "runs" / "full-one"), step_losses(work / "runs" / "full-fsdp")
    assert sorted(a) == sorted(b) == [1, 2, 3] and max(abs(a[s] - b[s]) for s in a) < TOLERANCE
    one, sharded = (load_file(next((work / "runs" / n / "model").glob("*.safetensors"))) for n in ("full-one",
                                                                                                 "full-fsdp"))
    assert one.keys() == sharded.keys()
    assert max((one[k] - sharded[k]).abs().max().item() for k in one) < 1e-5
    # one process with its shards offloaded (one GPU short of memory): started under torchrun all the same
    code, err = finish(start(work, "full.yaml", "name=full-offload", "peft.method=full",
                             "train.sharding=fsdp_offload"))
    assert code == 0, err
    c = step_losses(work / "runs" / "full-offload")
    assert sorted(c) == [1, 2, 3] and max(abs(a[s] - c[s]) for s in a) < TOLERANCE
