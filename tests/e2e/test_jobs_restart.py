"""A server restart loses nothing: `tunelab serve` killed with -9 while a job trains (its training process dies
with it), started again on the same data directory: the job continues from its last checkpoint and succeeds,
and a job that was queued behind it runs too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import openai

from tests.helpers import CLI_ENV, free_port, wait_up, write_chat


def _serve(tiny_model: Path, data: Path, port: int, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tunelab.cli.main", "serve", "--model", str(tiny_model), "--name", "tiny",
         "--port", str(port), "--data", str(data), "--api-key", "k", "--jobs", "1"],
        cwd=cwd, env=os.environ | CLI_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _status(c: openai.OpenAI, job_id: str) -> str:
    return c.fine_tuning.jobs.retrieve(job_id).status


def _until(check: object, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not check():  # type: ignore[operator]
        if time.time() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.3)


def test_kill_9_the_server_mid_job_and_start_it_again(tiny_model: Path, tmp_path: Path) -> None:
    data, port = tmp_path / "serve", free_port()
    url = f"http://127.0.0.1:{port}"
    c = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=2, timeout=60)
    cfg = {"train.threads": 1, "eval.probes.enabled": False, "data.val_fraction": 0, "train.batch_size": 2,
           "train.save_every": 5}
    server = _serve(tiny_model, data, port, tmp_path)
    try:
        wait_up(url, server)
        f = c.files.create(file=write_chat(tmp_path / "chat.jsonl", 30).open("rb"), purpose="fine-tune")
        long = c.fine_tuning.jobs.create(model="tiny", training_file=f.id,
                                         extra_body={"tunelab": {"config": cfg | {"train.max_steps": 60}}})
        queued = c.fine_tuning.jobs.create(model="tiny", training_file=f.id,
                                           extra_body={"tunelab": {"config": cfg | {"train.max_steps": 4}}})
        _until(lambda: c.fine_tuning.jobs.checkpoints.list(long.id).data)
        assert _status(c, long.id) == "running" and _status(c, queued.id) == "queued"
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=60)
    server = _serve(tiny_model, data, port, tmp_path)
    try:
        wait_up(url, server)
        _until(lambda: _status(c, long.id) in ("succeeded", "failed"), timeout=400)
        job = c.fine_tuning.jobs.retrieve(long.id)
        assert job.status == "succeeded", job.error
        messages = [e.message for e in c.fine_tuning.jobs.list_events(long.id, limit=100).data]
        assert any("worker running this job stopped" in m for m in messages)
        assert any("continues from its last checkpoint" in m for m in messages)
        _until(lambda: _status(c, queued.id) in ("succeeded", "failed"), timeout=400)
        assert _status(c, queued.id) == "succeeded"
        r = c.chat.completions.create(model=job.fine_tuned_model, messages=[{"role": "user", "content": "hi"}],
                                      max_tokens=3)
        assert r.choices
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)
