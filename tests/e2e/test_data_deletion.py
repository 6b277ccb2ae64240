"""A project deletes its data through the API (docs/security.md): its request log, whole or by time or model, one
request with its feedback, one feedback; a finished job with its run, checkpoints, result files, exports and
served model. Another project's objects answer 404, and deleted text is gone from the files on disk, not only
from the API. Old request-log databases gain the column that says whose each row is."""

from __future__ import annotations

import json
import sqlite3
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.helpers import tiny_lora, write_chat
from tunelab.jobs.db import CheckpointRow, EventRow, JobRow, now
from tunelab.jobs.service import fine_tuned_name
from tunelab.serve.server import BackgroundServer, build
from tunelab.serve.state import ServeSettings
from tunelab.serve.store import Store


@pytest.fixture(scope="module")
def server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any, Path]]:
    data = tmp_path_factory.mktemp("deletion-server")
    settings = ServeSettings(api_keys=["acme:key-a", "beta:key-b"], log_content=True, worker_jobs=0,
                             default_max_tokens=4)
    app = build(str(tiny_model), name="tiny", data=str(data), settings=settings)
    with BackgroundServer(app) as url:
        yield url, app.state.tunelab, data


def client(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=60)


def call(url: str, method: str, path: str, key: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(url + path, data=json.dumps(body).encode() if body is not None else None,
                                 method=method, headers={"authorization": f"Bearer {key}",
                                                         "content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def chat(c: openai.OpenAI, text: str) -> str:
    return c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": text}], max_tokens=2).id


def on_disk(root: Path, text: str) -> list[str]:
    """The files under `root` whose bytes hold `text` (the databases included: their pages, write-ahead logs)."""
    return [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and text.encode() in p.read_bytes()]


def test_a_project_deletes_its_request_log_and_feedback(server: tuple[str, Any, Path]) -> None:
    url, state, data = server
    a, b = client(url, "key-a"), client(url, "key-b")
    mine, theirs = f"acme-private-{uuid.uuid4().hex}", f"beta-private-{uuid.uuid4().hex}"
    old = chat(a, f"{mine} one")
    time.sleep(0.01)
    cut = time.time()
    mid, last, other = chat(a, f"{mine} two"), chat(a, f"{mine} three"), chat(b, theirs)
    status, fb = call(url, "POST", "/v1/feedback", "key-a", {"request_id": mid, "rating": "down",
                                                             "correction": f"{mine} corrected"})
    assert status == 201
    state.writer.submit(lambda: None).result()  # the rows above are in the database
    assert on_disk(data, mine) and on_disk(data, theirs)  # the scans below would see them

    # another project's request, and an id that does not exist: the same 404
    for rid, key in ((other, "key-a"), (mid, "key-b"), ("chatcmpl-nope", "key-a")):
        status, body = call(url, "DELETE", f"/v1/requests/{rid}", key)
        assert status == 404 and body["error"]["param"] == "request_id", (rid, key, body)
    assert call(url, "DELETE", f"/v1/feedback/{fb['id']}", "key-b")[0] == 404
    assert call(url, "DELETE", "/v1/feedback/not-a-number", "key-a")[0] == 404

    # one request, with its feedback
    status, body = call(url, "DELETE", f"/v1/requests/{mid}", "key-a")
    assert status == 200 and body == {"id": mid, "object": "request", "deleted": True, "feedback": 1}
    assert state.store.get_request(mid) is None and state.store.get_feedback(fb["id"]) is None
    assert call(url, "POST", "/v1/feedback", "key-a", {"request_id": mid, "rating": "up"})[0] == 404
    assert call(url, "DELETE", f"/v1/requests/{mid}", "key-a")[0] == 404

    # those before a time, then those of a model
    status, body = call(url, "DELETE", f"/v1/requests?before={cut}", "key-a")
    assert status == 200 and body["requests"] == 1 and body["feedback"] == 0
    assert state.store.get_request(old) is None and state.store.get_request(last) is not None
    assert call(url, "DELETE", "/v1/requests?before=yesterday", "key-a")[0] == 400
    status, body = call(url, "DELETE", "/v1/requests?model=tiny", "key-a")
    assert status == 200 and body["requests"] == 1 and state.store.get_request(last) is None

    # the other project's log is untouched; the deleted text is gone from every file, not only from the API
    assert state.store.get_request(other) is not None
    assert on_disk(data, mine) == [] and on_disk(data, theirs)
    status, body = call(url, "DELETE", "/v1/requests", "key-b")
    assert status == 200 and body["requests"] == 1 and on_disk(data, theirs) == []


def test_deleting_one_feedback_keeps_its_request(server: tuple[str, Any, Path]) -> None:
    url, state, _ = server
    rid = chat(client(url, "key-a"), "hello")
    status, fb = call(url, "POST", "/v1/feedback", "key-a", {"request_id": rid, "rating": "up", "comment": "fine"})
    assert status == 201
    status, body = call(url, "DELETE", f"/v1/feedback/{fb['id']}", "key-a")
    assert status == 200 and body["deleted"] is True
    assert state.store.get_feedback(fb["id"]) is None and state.store.get_request(rid) is not None


def test_odd_ids_and_times_are_refused_not_a_crash(server: tuple[str, Any, Path]) -> None:
    url, _, _ = server
    for when in ("inf", "-inf", "nan"):  # float() takes them: an infinite cut-off would delete everything
        status, body = call(url, "DELETE", f"/v1/requests?before={when}", "key-a")
        assert status == 400 and body["error"]["param"] == "before", (when, body)
    for fid in ("%C2%B2", "9" * 30, "-1"):  # "²" is a digit to str.isdigit; 30 digits overflow SQLite's integer
        assert call(url, "DELETE", f"/v1/feedback/{fid}", "key-a")[0] == 404, fid


def test_rows_waiting_for_the_database_are_written_before_a_deletion(server: tuple[str, Any, Path]) -> None:
    """A row parked while the database was away must not be written back after its project deleted the log."""
    url, state, _ = server
    rid = chat(client(url, "key-a"), "parked row")
    state.writer.submit(lambda: None).result()  # the writer has taken the row
    row = {c.name: getattr(state.store.get_request(rid), c.name) for c in state.store.get_request(rid).__table__.c}
    row["id"] = f"chatcmpl-{uuid.uuid4().hex}"
    state.writer.submit(state.request_log._parked.append, row).result()  # as if the database had refused it
    assert call(url, "DELETE", "/v1/requests", "key-a")[0] == 200
    state.writer.submit(state.request_log._flush).result()  # the retry that would have written it back
    assert state.store.get_request(row["id"]) is None and state.store.get_request(rid) is None


def _finish_with_a_model(state: Any, tiny_model: Path, job_id: str) -> str:
    """What a worker leaves when a job succeeds (a served adapter, a kept checkpoint, a result file), made here in
    a second: training one is tested in test_jobs.py."""
    jobs = state.jobs
    work = jobs.service.job_dir(job_id)
    tiny_lora(tiny_model).save_pretrained(work / "run")
    tiny_lora(tiny_model).save_pretrained(work / "checkpoints" / "step-1")
    (work / "step_metrics.csv").write_text("step,train_loss\n1,2.0\n")
    results = jobs.files.record("acme", "step_metrics.csv", "fine-tune-results", work / "step_metrics.csv")
    name = fine_tuned_name("tiny", "acme", "del", job_id)
    with jobs.db.session() as s:
        row = s.get(JobRow, job_id)
        row.status, row.fine_tuned_model, row.finished_at = "succeeded", name, now()
        row.run_dir, row.result_files = str(work / "run"), [results.id]
        s.add(CheckpointRow(id=f"ftckpt-{uuid.uuid4().hex[:12]}", job_id=job_id, step=1, created_at=now(),
                            metrics={"step": 1}, path=str(work / "checkpoints" / "step-1")))
    export = jobs.exports.folder(job_id, "hf")
    export.mkdir(parents=True)
    (export / "model.safetensors").write_bytes(b"weights")
    return name


def test_a_finished_job_is_deleted_with_everything_it_made(server: tuple[str, Any, Path], tiny_model: Path,
                                                           tmp_path: Path) -> None:
    url, state, data = server
    a = client(url, "key-a")
    with write_chat(tmp_path / "rows.jsonl", 4).open("rb") as f:
        upload = a.files.create(file=f, purpose="fine-tune")
    job = a.fine_tuning.jobs.create(model="tiny", training_file=upload.id)
    work = state.jobs.service.job_dir(job.id)
    assert work.is_dir()

    status, body = call(url, "DELETE", f"/v1/fine_tuning/jobs/{job.id}", "key-a")  # queued: it may still run
    assert status == 409 and body["error"]["code"] == "job_not_finished" and "cancel" in body["error"]["message"]
    a.fine_tuning.jobs.cancel(job.id)
    name = _finish_with_a_model(state, tiny_model, job.id)
    deadline = time.time() + 20
    while call(url, "GET", f"/v1/models/{name}", "key-a")[0] != 200:  # the server loads it within a second
        assert time.time() < deadline, "the fine-tuned model was not served"
        time.sleep(0.1)
    assert call(url, "GET", f"/v1/models/{name}:ckpt-step-1", "key-a")[0] == 200
    results = a.fine_tuning.jobs.retrieve(job.id).result_files

    # a job that continues from its model holds it
    child = a.fine_tuning.jobs.create(model=name, training_file=upload.id)
    status, body = call(url, "DELETE", f"/v1/fine_tuning/jobs/{job.id}", "key-a")
    assert status == 409 and child.id in body["error"]["message"]
    a.fine_tuning.jobs.cancel(child.id)
    assert call(url, "DELETE", f"/v1/fine_tuning/jobs/{child.id}", "key-a")[0] == 200

    assert call(url, "DELETE", f"/v1/fine_tuning/jobs/{job.id}", "key-b")[0] == 404  # another project's
    status, body = call(url, "DELETE", f"/v1/fine_tuning/jobs/{job.id}", "key-a")
    assert status == 200 and body == {"id": job.id, "object": "fine_tuning.job", "deleted": True,
                                      "fine_tuned_model": name}
    for path in (f"/v1/fine_tuning/jobs/{job.id}", f"/v1/models/{name}", f"/v1/models/{name}:ckpt-step-1",
                 f"/v1/files/{results[0]}", f"/v1/fine_tuning/jobs/{job.id}/exports/hf"):
        assert call(url, "GET", path, "key-a")[0] in (400, 404), path
    assert name not in state.engine.model_names and f"{name}:ckpt-step-1" not in state.engine.model_names
    assert not work.exists() and not state.jobs.exports.folder(job.id, "hf").parent.exists()
    assert [p.name for p in (data / "jobs").iterdir() if job.id in p.name] == []  # nothing half-deleted either
    with state.jobs.db.sessions() as s:
        assert s.query(EventRow).filter_by(job_id=job.id).count() == 0
        assert s.query(CheckpointRow).filter_by(job_id=job.id).count() == 0
    assert a.files.retrieve(upload.id).id == upload.id  # the upload is the user's to delete on its own
    assert call(url, "DELETE", f"/v1/fine_tuning/jobs/{job.id}", "key-a")[0] == 404


def test_an_old_request_log_gains_its_project_column(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as c:  # the table as servers before projects made it
        c.execute("CREATE TABLE requests (id VARCHAR(64) PRIMARY KEY, created FLOAT, endpoint VARCHAR(64), "
                  "model VARCHAR(256), adapter VARCHAR(256), status INTEGER, error TEXT, prompt_tokens INTEGER, "
                  "completion_tokens INTEGER, latency_ms FLOAT, ttft_ms FLOAT, stream BOOLEAN, finish_reason "
                  "VARCHAR(32), prompt TEXT, completion TEXT, embedding BLOB)")
        c.executemany("INSERT INTO requests (id, created, endpoint, model, status) VALUES (?, ?, 'chat', ?, 200)",
                      [("r1", 1.0, "ft:tiny:acme:s:abc"), ("r2", 2.0, "tiny")])
    store = Store(f"sqlite:///{db}")
    assert store.get_request("r1").project == "acme"  # a fine-tuned model's name says its project
    assert store.get_request("r2").project is None  # a shared model's: nobody's but the operator's
    Store(f"sqlite:///{db}")  # opening it again changes nothing
    assert store.delete_requests("acme") == (1, 0) and store.get_request("r2") is not None
