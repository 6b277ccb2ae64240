"""API keys never reach the server's output or its data directory, and without --log-content neither does what
clients wrote: `tunelab serve` as users start it (with a project's keys and an admin key, its output captured),
driven through chat, completions (both also streamed), refused requests, feedback, uploads, jobs, the web UI's
sign-in and the admin's routes, each carrying a marker of its own. Then every byte it printed and every file under
its data directory (the databases' pages and write-ahead logs included), and every column of every table of its
databases, are searched.

Where a marker may be, by design (the user's own data, kept to be used, deletable through the API):
- an uploaded file's rows: the stored upload and the job's copy of its data (files/, jobs/<id>/data/);
- a job's metadata: its row in the jobs database;
- feedback (a rating's correction and comment): its row in the request-log database;
- with --log-content, a request's text: its row in the request log (prompt, and the error of a refused one)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.helpers import free_port, wait_up

U = uuid.uuid4().hex
KEY_A, KEY_B, ADMIN, WRONG = f"sk-acme-{U}", f"sk-beta-{U}", f"sk-admin-{U}", f"sk-wrong-{U}"
KEYS = (KEY_A, KEY_B, ADMIN, WRONG)
CHAT, FEEDBACK, FILE, JOB = f"chatmark{U}", f"feedbackmark{U}", f"filemark{U}", f"jobmark{U}"


@dataclass
class Ran:
    """What one server left: its output, its data directory, and where each marker turned up."""

    data: Path
    output: str = ""
    ids: dict[str, str] = field(default_factory=dict)

    def files_with(self, text: str) -> set[str]:
        return {str(p.relative_to(self.data)) for p in self.data.rglob("*")
                if p.is_file() and text.encode() in p.read_bytes()}

    def columns_with(self, text: str) -> set[tuple[str, str, str]]:
        """(database, table, column) of every value holding `text`, in every SQLite database in the directory."""
        found = set()
        for db in self.data.glob("*.db"):
            with sqlite3.connect(db) as c:
                for (table,) in c.execute("select name from sqlite_master where type = 'table'").fetchall():
                    cols = [r[1] for r in c.execute(f'pragma table_info("{table}")')]
                    for row in c.execute(f'select * from "{table}"'):
                        for col, value in zip(cols, row, strict=True):
                            shown = value.decode("latin-1") if isinstance(value, bytes) else str(value)
                            if text in shown:
                                found.add((db.name, table, col))
        return found


def _start(tiny_model: Path, root: Path, *extra: str) -> tuple[subprocess.Popen[str], str, Path, Path]:
    port, data, out = free_port(), root / "data", root / "output.txt"
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tunelab.cli.main", "serve", "--model", str(tiny_model), "--name", "tiny", "--port",
         str(port), "--data", str(data), "--api-key", f"acme:{KEY_A}", "--api-key", f"beta:{KEY_B}", "--admin-key",
         ADMIN, "--jobs", "0", "--max-tokens", "4", *extra],
        cwd=root, env=env, stdout=out.open("w"), stderr=subprocess.STDOUT, text=True)
    return proc, f"http://127.0.0.1:{port}", data, out


def _call(url: str, method: str, path: str, key: str | None, body: Any = None,
          headers: dict[str, str] | None = None) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url + path, data=data, method=method, headers={
        "content-type": "application/json", **({"authorization": f"Bearer {key}"} if key else {}), **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _exercise(url: str, tmp: Path, check: bool) -> dict[str, str]:
    a = openai.OpenAI(base_url=url + "/v1", api_key=KEY_A, max_retries=0, timeout=60)
    msgs = [{"role": "system", "content": f"{CHAT} system"}, {"role": "user", "content": f"{CHAT} user"}]
    answer = a.chat.completions.create(model="tiny", messages=msgs)
    list(a.chat.completions.create(model="tiny", messages=msgs, stream=True))
    a.completions.create(model="tiny", prompt=f"{CHAT} prompt", max_tokens=2)
    list(a.completions.create(model="tiny", prompt=[f"{CHAT} a", f"{CHAT} b"], max_tokens=2, stream=True))
    # refused: a field of the wrong type (the error echoes it to the client), an unsupported one, a model that isn't
    for bad in ({"messages": [{"role": "user", "content": {"text": CHAT}}]},
                {"messages": msgs, "tools": [{"type": "function", "function": {"name": "f", "description": CHAT}}]},
                {"messages": msgs, "model": "no-such-model"},  # model names are metadata: logged
                {"messages": msgs, "max_tokens": 10**6}):
        status, _ = _call(url, "POST", "/v1/chat/completions", KEY_A, {"model": "tiny"} | bad)
        assert status in (400, 404), bad
    assert _call(url, "POST", "/v1/chat/completions", WRONG, {"model": "tiny", "messages": msgs})[0] == 401
    assert _call(url, "POST", "/v1/chat/completions", None, b'{"model": "' + CHAT.encode())[0] in (400, 401)
    status, fb = _call(url, "POST", "/v1/feedback", KEY_A, {"request_id": answer.id, "rating": "down",
                                                            "correction": f"{FEEDBACK} fix", "comment": FEEDBACK})
    assert status == 201, fb
    rows = tmp / "rows.jsonl"
    rows.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"{FILE} q{i}"},
                                                     {"role": "assistant", "content": f"{FILE} a{i}"}]}) + "\n"
                            for i in range(6)))
    with rows.open("rb") as f:
        upload = a.files.create(file=f, purpose="fine-tune")
    if check:  # the data check reads every row (a second or two): once is enough
        assert _call(url, "POST", f"/v1/files/{upload.id}/check", KEY_A, {})[0] == 200
    job = a.fine_tuning.jobs.create(model="tiny", training_file=upload.id, metadata={"note": JOB})
    assert _call(url, "GET", f"/v1/fine_tuning/jobs/{job.id}/events", KEY_A)[0] == 200
    # the admin's routes, and the web UI signed in with a key
    assert _call(url, "GET", "/metrics", ADMIN)[0] == 200
    assert _call(url, "POST", "/v1/adapters", ADMIN, {"name": "nope", "path": "/nonexistent"})[0] == 400
    assert _call(url, "GET", "/v1/models", KEY_B)[0] == 200
    form = urllib.parse.urlencode({"key": KEY_A, "next": "/"}).encode()
    status, _ = _call(url, "POST", "/sign-in", None, form, {"content-type": "application/x-www-form-urlencoded"})
    assert status in (200, 303)
    return {"file": upload.id, "job": job.id}


@contextlib.contextmanager
def _served(tiny_model: Path, root: Path, *extra: str) -> Iterator[tuple[Ran, subprocess.Popen[str], str]]:
    proc, url, data, out = _start(tiny_model, root, *extra)
    ran = Ran(data)
    try:
        yield ran, proc, url
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        ran.output = out.read_text()


@pytest.fixture(scope="module")
def servers(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Ran]:
    """Both servers, started together (each takes seconds to come up), exercised, then stopped."""
    roots = {"plain": tmp_path_factory.mktemp("plain"), "log-content": tmp_path_factory.mktemp("log-content")}
    with contextlib.ExitStack() as stack:
        started = {name: stack.enter_context(_served(tiny_model, root, *(["--log-content"] if name != "plain"
                                                                          else [])))
                   for name, root in roots.items()}
        for name, (ran, proc, url) in started.items():
            wait_up(url, proc)
            ran.ids = _exercise(url, roots[name], check=name == "plain")
    for ran, proc, _ in started.values():
        assert proc.returncode == 0, ran.output
    return {name: ran for name, (ran, _, _) in started.items()}


@pytest.mark.parametrize("which", ["plain", "log-content"])
def test_keys_never_reach_output_files_or_databases(servers: dict[str, Ran], which: str) -> None:
    ran = servers[which]
    assert "POST /v1/chat/completions" in ran.output and "tunelab serve" in ran.output  # the output was captured
    for key in KEYS:
        assert key not in ran.output, key
        assert ran.files_with(key) == set(), key
        assert ran.columns_with(key) == set(), key


@pytest.mark.parametrize("which", ["plain", "log-content"])
def test_content_stays_where_it_belongs(servers: dict[str, Ran], which: str) -> None:
    ran = servers[which]
    fid, jid = ran.ids["file"], ran.ids["job"]
    for marker in (CHAT, FEEDBACK, FILE, JOB):
        assert marker not in ran.output, marker
    # an upload's rows: the stored file and the job's copy of it, nowhere else
    assert ran.files_with(FILE) == {f"files/{fid}.jsonl", f"jobs/{jid}/data/{fid}.jsonl"}
    assert ran.columns_with(FILE) == set()
    # a job's metadata and a feedback: their own rows
    assert ran.columns_with(JOB) == {("tunelab-jobs.db", "ft_jobs", "metadata")}
    assert ran.columns_with(FEEDBACK) == {("tunelab-serve.db", "feedback", "correction"),
                                          ("tunelab-serve.db", "feedback", "comment")}
    assert {f.split(".db")[0] for f in ran.files_with(JOB)} == {"tunelab-jobs"}
    assert {f.split(".db")[0] for f in ran.files_with(FEEDBACK)} == {"tunelab-serve"}
    # what was asked: only in the request log, and only with --log-content
    if which == "plain":
        assert ran.columns_with(CHAT) == set() and ran.files_with(CHAT) == set()
    else:
        assert ("tunelab-serve.db", "requests", "prompt") in ran.columns_with(CHAT)
        assert ran.columns_with(CHAT) <= {("tunelab-serve.db", "requests", c) for c in ("prompt", "error")}
        assert {f.split(".db")[0] for f in ran.files_with(CHAT)} == {"tunelab-serve"}
