"""Workers on several machines share one PostgreSQL database: two `tunelab worker` processes claim 10 queued
jobs and no job ever runs twice. Skipped, saying why, where PostgreSQL can't be started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.helpers import CLI_ENV, postgres_server, write_chat
from tunelab.jobs.db import EventRow, JobRow, JobsDB
from tunelab.jobs.files import FileStore
from tunelab.jobs.schemas import JobCreate
from tunelab.jobs.service import JobsService


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    try:
        with postgres_server() as url:
            yield url
    except RuntimeError as exc:
        pytest.skip(f"no PostgreSQL here: {exc}")


def test_two_workers_never_run_one_job_twice(postgres: str, tiny_model: Path, tmp_path: Path) -> None:
    db = JobsDB(postgres)  # the schema comes from the migrations
    data = tmp_path / "shared"
    files = FileStore(db, data / "files", 1 << 30)
    service = JobsService(db, files, data / "jobs")
    with write_chat(tmp_path / "chat.jsonl", 8).open("rb") as f:
        upload = files.add("default", "chat.jsonl", "fine-tune", f)
    quick = {"train.threads": 1, "eval.probes.enabled": False, "data.val_fraction": 0, "train.max_steps": 2,
             "train.batch_size": 4}
    ids = [service.create("default", JobCreate(model="tiny", training_file=upload.id,
                                               tunelab={"config": quick}), str(tiny_model)).id for _ in range(10)]
    workers = [subprocess.Popen([sys.executable, "-m", "tunelab.cli.main", "worker", "--db", postgres, "--data",
                                 str(data), "--jobs", "1"], cwd=tmp_path, env=os.environ | CLI_ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        deadline = time.time() + 600
        while time.time() < deadline:
            with db.sessions() as s:
                states = Counter(s.scalars(select(JobRow.status).where(JobRow.id.in_(ids))))
            if states["succeeded"] + states["failed"] == len(ids):
                break
            assert all(w.poll() is None for w in workers), [w.stderr.read() for w in workers if w.stderr]
            time.sleep(1)
    finally:
        for w in workers:
            w.send_signal(signal.SIGINT)
        for w in workers:
            w.wait(timeout=120)
    assert states == {"succeeded": 10}, states
    with db.sessions() as s:
        starts = Counter(s.scalars(select(EventRow.job_id).where(EventRow.job_id.in_(ids),
                                                                 EventRow.message == "Fine-tuning job started")))
        attempts = list(s.scalars(select(JobRow.attempts).where(JobRow.id.in_(ids))))
    assert all(starts[j] == 1 for j in ids), starts  # each job trained once, by one worker
    assert attempts == [0] * 10
    for jid in ids:
        runs = sorted(p.name for p in (data / "jobs" / jid).iterdir() if p.name.startswith("run"))
        assert runs == ["run"], runs  # never a second run directory beside the first
