"""A full disk, for real: a small tmpfs made for the test, filled with a ballast file at the chosen moment, while a
checkpoint is saved, the report is written, a model is exported and a file is uploaded to the server. Each time a
clear tunelab error (exit status 2 from the CLI, 507 in OpenAI's shape from the server), nothing half-written left
where it could pass for whole, and, once space is freed, the same command (or `--resume`) completes.

Mounting needs root: elsewhere these tests skip, saying so."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from transformers import TrainerCallback

import tunelab
from tests.helpers import CliResult, tunelab_cli, write_chat
from tunelab.models.load import ModelError
from tunelab.recipes.lifecycle import Session
from tunelab.runs.checkpoint import problem

DISK = "8m"  # room for the tiny model's run (each checkpoint ~0.5 MB), its exports, and a server's databases
BALLAST = "ballast"


@pytest.fixture(scope="module")
def disk() -> Iterator[Path]:
    """A tmpfs of its own, unmounted at the end."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs for the full-disk tests needs root and `mount`")
    where = Path(tempfile.mkdtemp(prefix="tunelab-small-disk-"))
    got = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK}", "tmpfs", str(where)], capture_output=True,
                         text=True)
    if got.returncode != 0:
        where.rmdir()
        pytest.skip(f"can't mount a small tmpfs here ({got.stderr.strip() or got.returncode}): the full-disk tests "
                    f"need `mount -t tmpfs` (root, outside a restricted container)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
        with contextlib.suppress(OSError):
            where.rmdir()


def fill(disk: Path, leave: int = 0) -> None:
    """Fill the disk with a ballast file, then give back `leave` bytes (rounded to the filesystem's pages)."""
    ballast = disk / BALLAST
    with ballast.open("ab", buffering=0) as f:
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * (1 << 16))
        f.truncate(max(0, ballast.stat().st_size - leave))


def free(disk: Path) -> None:
    (disk / BALLAST).unlink(missing_ok=True)


def leftovers(where: Path) -> list[str]:
    """Temporary files and partial directories: what a failed write must not leave behind."""
    return [str(p) for p in where.rglob("*") if p.name.endswith((".tmp", ".partial")) or ".partial" in p.parts]


class FillAtSave(TrainerCallback):
    """Fills the disk after step `step` is logged, just before the trainer saves its checkpoint."""

    def __init__(self, disk: Path, step: int, leave: int) -> None:
        self.disk, self.step, self.leave = disk, step, leave

    def on_log(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if state.global_step == self.step and not (self.disk / BALLAST).exists():
            fill(self.disk, self.leave)


def write_config(work: Path, disk: Path, tiny_model: Path, name: str, steps: int) -> Path:
    """A run of `steps` steps on the tiny model, a checkpoint every 2, its directory on the small disk."""
    config = work / f"{name}.yaml"
    config.write_text(json.dumps({
        "name": name, "output_dir": str(disk / "runs"), "model": {"base": str(tiny_model)},
        "data": {"train": str(write_chat(work / "train.jsonl", 10)), "val_fraction": 0},
        "eval": {"probes": {"enabled": False}},
        "train": {"max_steps": steps, "save_every": 2, "batch_size": 2, "log_every": 1, "threads": 1}}))
    return config


@pytest.fixture(scope="module")
def stopped_run(disk: Path, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`tunelab train` (6 steps, a checkpoint every 2) with the disk filled just before checkpoint-4 is saved, leaving
    192 KB: room for the adapter, not for the optimizer state after it (torch.save, which reports a short write with
    no error number). What the run directory held then, and the resume once space was freed."""
    work = tmp_path_factory.mktemp("full-disk")
    config = write_config(work, disk, tiny_model, "r", steps=6)
    callbacks = Session.callbacks

    def with_ballast(self: Session, *extra: Any) -> list[Any]:
        return [*callbacks(self, *extra), FillAtSave(disk, step=4, leave=192 << 10)]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Session, "callbacks", with_ballast)
        failed = tunelab_cli("train", config, cwd=work)
    run = disk / "runs" / "r"
    seen = {"failed": failed, "run": run, "checkpoints": sorted(p.name for p in (run / "checkpoints").iterdir()),
            "leftovers": leftovers(run), "summary": json.loads((run / "summary.json").read_text()),
            "whole": {p.name: problem(p) for p in (run / "checkpoints").iterdir()}}
    with pytest.raises(ModelError, match="did not finish"):
        tunelab.load(str(run))  # what was left is no model
    free(disk)
    seen["resumed"] = tunelab_cli("train", run / "config.yaml", "--resume", cwd=work)
    return seen


def test_checkpoint_on_a_full_disk_then_resume(stopped_run: dict[str, Any]) -> None:
    failed: CliResult = stopped_run["failed"]
    run: Path = stopped_run["run"]
    assert failed.returncode == 2, failed.stderr
    assert "Traceback" not in failed.stderr
    message = " ".join(failed.stderr.split())
    assert f"disk full while writing checkpoint-4 to {run / 'checkpoints'}" in message
    assert "the last whole checkpoint, checkpoint-2, is kept" in message
    assert f"tunelab train {run / 'config.yaml'} --resume" in message
    # the half-written checkpoint is gone (its space freed), the one before is whole, no temporary file is left
    assert stopped_run["checkpoints"] == ["checkpoint-2"]
    assert stopped_run["whole"] == {"checkpoint-2": None}
    assert stopped_run["leftovers"] == []
    summary = stopped_run["summary"]
    assert summary["status"] == "failed" and "disk full while writing checkpoint-4" in summary["error"]

    resumed: CliResult = stopped_run["resumed"]
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 6
    logged = [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert logged == [1, 2, 3, 4, 5, 6]  # resumed from step 2: each step logged once
    assert isinstance(tunelab.generate(tunelab.load(str(run)), "hello", max_new_tokens=2), str)


def test_report_on_a_full_disk(stopped_run: dict[str, Any], disk: Path) -> None:
    run: Path = stopped_run["run"]
    for name in ("report.html", "report.json"):
        (run / name).unlink(missing_ok=True)
    fill(disk)
    try:
        r = tunelab_cli("report", run, cwd=run.parent)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert re.search(rf"disk full while writing report\.(json|html) to {re.escape(str(run))} ", r.stderr)
        assert not (run / "report.html").exists() and not (run / "report.json").exists()
        assert leftovers(run) == []
    finally:
        free(disk)
    r = tunelab_cli("report", run, cwd=run.parent)
    assert r.returncode == 0, r.stderr
    assert (run / "report.html").is_file() and json.loads((run / "report.json").read_text())


def test_report_of_a_run_on_a_full_disk(disk: Path, tiny_model: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills once the model is saved, as the run's report is written: an error all the same (nothing more
    can be written there), and the run stays complete."""
    import tunelab.report

    write_report = tunelab.report.write_report

    def full_first(*args: Any, **kw: Any) -> Any:
        fill(disk)
        return write_report(*args, **kw)

    monkeypatch.setattr(tunelab.report, "write_report", full_first)
    try:
        r = tunelab_cli("train", write_config(tmp_path, disk, tiny_model, "reported", steps=2), cwd=tmp_path)
        run = disk / "runs" / "reported"
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        said = " ".join(r.stderr.split())
        assert re.search(rf"disk full while writing report\.(json|html) to {re.escape(str(run))} ", said)
        assert f"the run itself is complete, its model saved. Free space there and write the report with `tunelab " \
               f"report {run}`" in said
        assert json.loads((run / "summary.json").read_text())["status"] == "completed"
        assert not (run / "report.html").exists() and leftovers(run) == []
    finally:
        free(disk)
    monkeypatch.undo()
    assert tunelab_cli("report", run, cwd=tmp_path).returncode == 0 and (run / "report.html").is_file()
    assert isinstance(tunelab.generate(tunelab.load(str(run)), "hello", max_new_tokens=2), str)


@pytest.mark.parametrize("fmt", ["hf", "adapter", "gguf"])
def test_export_on_a_full_disk(stopped_run: dict[str, Any], disk: Path, fmt: str) -> None:
    run, out = stopped_run["run"], disk / f"export-{fmt}"
    fill(disk, leave=16 << 10)  # room for the first small files, not for the weights
    try:
        r = tunelab_cli("export", run, "--format", fmt, "--out", out, cwd=disk)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        message = " ".join(r.stderr.split())
        assert f"disk full while writing the export to {out}" in message
        assert "nothing was kept" in message and "export again" in message
        assert not out.exists() and not out.with_name(out.name + ".partial").exists()
    finally:
        free(disk)
    if fmt == "adapter":  # the same command once there is room
        r = tunelab_cli("export", run, "--format", fmt, "--out", out, cwd=disk)
        assert r.returncode == 0, r.stderr
        assert (out / "adapter_model.safetensors").is_file()
        shutil.rmtree(out)


def test_upload_on_a_full_disk(disk: Path, tiny_model: Path) -> None:
    from tunelab.serve.server import BackgroundServer, build
    from tunelab.serve.state import ServeSettings

    data = disk / "serve"
    app = build(str(tiny_model), name="tiny", data=str(data), settings=ServeSettings(api_keys=["k"], worker_jobs=0))
    rows = "".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                            {"role": "assistant", "content": "a" * 200}]}) + "\n" for i in range(1500))
    with BackgroundServer(app) as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0, timeout=30)
        fill(disk, leave=64 << 10)
        try:
            with pytest.raises(openai.InternalServerError) as err:
                c.files.create(file=("train.jsonl", rows.encode()), purpose="fine-tune")
            assert err.value.status_code == 507
            body = err.value.response.json()["error"]
            assert body["type"] == "server_error" and body["code"] == "insufficient_storage"
            assert "disk is full" in body["message"] and str(data) not in body["message"]  # no server paths
            assert c.files.list().data == []  # no row
            assert list((data / "files").iterdir()) == []  # no partial file
            assert [m.id for m in c.models.list().data] == ["tiny"]  # still serving
            reply = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
            assert reply.choices[0].message.content is not None
        finally:
            free(disk)
        stored = c.files.create(file=("train.jsonl", rows.encode()), purpose="fine-tune")
        assert stored.bytes == len(rows.encode()) and [f.id for f in c.files.list().data] == [stored.id]


def test_what_counts_as_a_full_disk(tmp_path: Path) -> None:
    """The OS's error number, the words of libraries that don't raise OSError (safetensors, SQLite), and a short write
    with no error number (torch.save, numpy) on a disk with almost nothing left; never another OS error."""
    import errno

    from tunelab.errors import DiskFullError, is_disk_full

    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert is_disk_full(Exception("Error while serializing: I/O error: No space left on device (os error 28)"))
    assert is_disk_full(Exception("(sqlite3.OperationalError) database or disk is full"))
    wrapped = RuntimeError("saving failed")
    wrapped.__cause__ = OSError(errno.ENOSPC, "No space left on device")
    assert is_disk_full(wrapped)
    short = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    assert not is_disk_full(short, tmp_path)  # this disk has room: something else went wrong
    assert not is_disk_full(PermissionError(errno.EACCES, "Permission denied"), tmp_path)
    err = DiskFullError("checkpoint-4", tmp_path, "free space")
    assert isinstance(err, OSError) and err.errno == errno.ENOSPC and is_disk_full(err)
    assert str(err).startswith(f"disk full while writing checkpoint-4 to {tmp_path} (") and str(err).endswith(
        " free): free space")
