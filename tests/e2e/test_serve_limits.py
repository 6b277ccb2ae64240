"""What one request may ask of `tunelab serve`, checked on a real server: bodies over 2 MB and uploads over
--max-file-mb are refused while they stream in (never held whole), prompts beyond the model's context and
max_tokens past what the context leaves are 400s that say so, n, stop, messages and unsupported parameters are
bounded, and no id or path (files, exports, sweep pages, the web UI's assets, adapters) leaves its directory."""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import select
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tunelab.jobs.files import clean_filename
from tunelab.serve.generation import token_budget
from tunelab.serve.middleware import BodyLimit
from tunelab.serve.schemas import MAX_MESSAGES, MAX_STOP_CHARS, APIError
from tunelab.serve.server import BackgroundServer, build
from tunelab.serve.state import ServeSettings

KEY, ADMIN = "key-a", "key-admin"
CONTEXT = 512  # the tiny model's max_position_embeddings
MAX_FILE = 200_000


@pytest.fixture(scope="module")
def server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    data = tmp_path_factory.mktemp("limits-server")
    settings = ServeSettings(api_keys=[f"acme:{KEY}"], admin_keys=[ADMIN], worker_jobs=0, max_file_bytes=MAX_FILE,
                             default_max_tokens=64)
    app = build(str(tiny_model), name="tiny", data=str(data), settings=settings, max_batch=8)
    with BackgroundServer(app) as url:
        yield url, data


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def raw(url: str, method: str, path: str, body: bytes | None = None, key: str = KEY,
        headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """A request exactly as written: http.client keeps `..` and %2f in the path."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.request(method, path, body=body, headers={"authorization": f"Bearer {key}",
                                                   "content-type": "application/json"} | (headers or {}))
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    try:
        return resp.status, json.loads(data)
    except ValueError:
        return resp.status, data


def error(exc: pytest.ExceptionInfo[openai.APIStatusError]) -> dict[str, Any]:
    body = exc.value.body
    assert isinstance(body, dict) and set(body) == {"message", "type", "param", "code"}, body  # OpenAI's shape
    return body


def chunked(url: str, path: str, head: bytes, piece: bytes, pieces: int, tail: bytes,
            headers: dict[str, str]) -> tuple[int, dict[str, Any], int]:
    """POST a body of no declared length (chunked), a piece at a time, until the server answers: its status, its
    JSON, and how many bytes went out before the answer."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock.sendall(f"POST {path} HTTP/1.1\r\nhost: {host}\r\ntransfer-encoding: chunked\r\n{lines}\r\n".encode())
    sent = 0
    for part in [head, *([piece] * pieces), tail]:
        if select.select([sock], [], [], 0.005)[0]:  # answered already: stop sending
            break
        try:
            sock.sendall(f"{len(part):x}\r\n".encode() + part + b"\r\n")
        except OSError:
            break
        sent += len(part)
    else:
        sock.sendall(b"0\r\n\r\n")
    resp = http.client.HTTPResponse(sock)
    resp.begin()
    body = json.loads(resp.read())
    sock.close()
    return resp.status, body, sent


# --- request bodies and uploads ---------------------------------------------------------------------------------

def test_bodies_over_2_mb_are_refused_declared_or_chunked(server: tuple[str, Path]) -> None:
    url, _ = server
    big = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "x" * 2_100_000}]}).encode()
    status, body = raw(url, "POST", "/v1/chat/completions", big)
    assert status == 413 and body["error"]["code"] == "request_too_large" and "2000000" in body["error"]["message"]
    status, body, sent = chunked(url, "/v1/chat/completions", b'{"model": "tiny", "x": "', b"x" * 65536, 480, b'"}',
                                 {"authorization": f"Bearer {KEY}", "content-type": "application/json"})
    assert status == 413 and body["error"]["code"] == "request_too_large", body
    assert sent < 480 * 65536  # answered while the body was still coming
    # a chunked body under the limit goes through whole
    status, body, _ = chunked(url, "/v1/chat/completions", b'{"model": "tiny", "max_tokens": 1, ', b" " * 1000, 3,
                              b'"messages": [{"role": "user", "content": "hi"}]}',
                              {"authorization": f"Bearer {KEY}", "content-type": "application/json"})
    assert status == 200 and body["object"] == "chat.completion", body


def test_a_chunked_body_streams_through_the_limit_never_held_whole() -> None:
    """The app reads the first piece before the client has sent the second: nothing buffers the body."""

    async def scenario(pieces: int) -> tuple[list[dict[str, Any]], list[int]]:
        first = asyncio.Event()
        got: list[int] = []

        async def app(scope: Any, receive: Any, send: Any) -> None:
            while True:
                message = await receive()
                got.append(len(message.get("body", b"")))
                first.set()
                if not message.get("more_body"):
                    break
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

        incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        out: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            out.append(message)

        scope = {"type": "http", "method": "POST", "path": "/v1/files", "headers": []}
        task = asyncio.ensure_future(BodyLimit(app, limit=10, limits={"/v1/files": 350})(scope, incoming.get, send))
        await incoming.put({"type": "http.request", "body": b"x" * 100, "more_body": True})
        await asyncio.wait_for(first.wait(), 5)
        assert got == [100]  # the app has the first piece; the rest is not even sent yet
        for i in range(1, pieces):
            await incoming.put({"type": "http.request", "body": b"x" * 100, "more_body": i < pieces - 1})
        await asyncio.wait_for(task, 5)
        return out, got

    out, got = asyncio.run(scenario(3))
    assert out[0]["status"] == 200 and got == [100, 100, 100]
    out, got = asyncio.run(scenario(5))  # past the path's own limit: the app's answer becomes the 413
    assert [m.get("status") for m in out if m["type"] == "http.response.start"] == [413]
    assert json.loads(out[1]["body"])["error"]["code"] == "request_too_large" and got == [100, 100, 100]


def test_uploads_over_max_file_mb_are_refused_while_streaming(server: tuple[str, Path]) -> None:
    url, data = server
    files = data / "files"
    before = set(files.iterdir())
    boundary = "tunelab-test-boundary"
    head = (f"--{boundary}\r\ncontent-disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n--{boundary}\r\n"
            f"content-disposition: form-data; name=\"file\"; filename=\"big.jsonl\"\r\n"
            f"content-type: application/octet-stream\r\n\r\n").encode()
    line = (json.dumps({"messages": [{"role": "user", "content": "x" * 200}, {"role": "assistant", "content": "y"}]})
            + "\n").encode()
    piece = line * (16384 // len(line))
    headers = {"authorization": f"Bearer {KEY}", "content-type": f"multipart/form-data; boundary={boundary}"}
    status, body, sent = chunked(url, "/v1/files", head, piece, 500, f"\r\n--{boundary}--\r\n".encode(), headers)
    assert status == 413 and body["error"]["code"] == "request_too_large", body
    assert sent < 500 * len(piece)
    # declared too large: refused from the headers, the body never read
    status, body = raw(url, "POST", "/v1/files", b"", headers={"content-length": str(10**9),
                                                                 "content-type": headers["content-type"]})
    assert status == 413 and str(MAX_FILE) in body["error"]["message"]
    assert set(files.iterdir()) == before  # nothing half-uploaded left behind
    assert client(url).files.list().data == []
    # one under the limit, its name sanitised: the stored path is the id's, the name metadata without its folders
    # and control characters
    f = client(url).files.create(file=("../../etc/evil.jsonl", piece), purpose="fine-tune")
    assert f.filename == "evil.jsonl" and f.bytes == len(piece)
    assert [p.name for p in set(files.iterdir()) - before] == [f"{f.id}.jsonl"]
    client(url).files.delete(f.id)
    assert clean_filename("C:\\Users\\me\\evil\x00\n.csv") == "evil.csv"
    assert clean_filename("..") == clean_filename("") == "upload" and len(clean_filename("x" * 1000)) == 255


# --- the context, max_tokens, n and the rest ---------------------------------------------------------------------

def test_a_prompt_beyond_the_context_is_a_400_that_says_so(server: tuple[str, Path]) -> None:
    url, _ = server
    c = client(url)
    long = " ".join(["card"] * 600)
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as bad:
            c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": long}], stream=stream)
        e = error(bad)
        assert e["code"] == "context_length_exceeded" and e["param"] == "messages"
        tokens = int(re.search(r"prompt tokens (\d+)", e["message"]).group(1))  # type: ignore[union-attr]
        assert tokens > CONTEXT and f"context {CONTEXT}" in e["message"]
        assert "shorten the messages" in e["message"]
        with pytest.raises(openai.BadRequestError) as bad:
            c.completions.create(model="tiny", prompt=["hello", long], stream=stream)
        e = error(bad)
        assert e["code"] == "context_length_exceeded" and e["param"] == "prompt" and "prompt 1 takes" in e["message"]


def test_max_tokens_past_the_context_is_a_400_and_the_default_fits(server: tuple[str, Path]) -> None:
    url, _ = server
    c = client(url)
    hi = [{"role": "user", "content": "hi"}]
    for field in ("max_tokens", "max_completion_tokens"):
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError) as bad:
                c.chat.completions.create(model="tiny", messages=hi, stream=stream, **{field: CONTEXT})
            e = error(bad)
            assert e["param"] == field and e["message"].startswith(f"{field} is too large: {CONTEXT}.")
            assert f"context length is {CONTEXT}" in e["message"] and "set " + field in e["message"]
    with pytest.raises(openai.BadRequestError) as bad:
        c.completions.create(model="tiny", prompt="hello", max_tokens=10**9)
    assert error(bad)["param"] == "max_tokens"
    # asked nothing: the default (64 here), cut to what a long prompt leaves
    near = " ".join(["card"] * 500)
    r = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": near}], temperature=0)
    assert r.usage.prompt_tokens + r.usage.completion_tokens <= CONTEXT


def test_token_budget() -> None:
    assert token_budget([[1] * 10], 502, 64, 512, "chat") == 502  # exactly fills the context
    assert token_budget([[1] * 10], None, 64, 512, "chat") == 64
    assert token_budget([[1] * 500], None, 64, 512, "chat") == 12
    with pytest.raises(APIError, match="max_tokens is too large: 503"):
        token_budget([[1] * 10], 503, 64, 512, "chat")
    with pytest.raises(APIError, match="prompt tokens 512, context 512"):
        token_budget([[1] * 512], 1, 64, 512, "completions")
    with pytest.raises(APIError, match="empty"):
        token_budget([[]], 1, 64, 512, "completions")


def test_n_stop_messages_and_unsupported_parameters_are_bounded(server: tuple[str, Path]) -> None:
    url, _ = server
    c = client(url)
    hi = [{"role": "user", "content": "hi"}]

    def refused(param: str, **kw: Any) -> str:
        with pytest.raises(openai.BadRequestError) as bad:
            c.chat.completions.create(model="tiny", messages=kw.pop("messages", hi), max_tokens=1, **kw)
        e = error(bad)
        assert e["param"] == param, e
        assert len(e["message"]) < 600, e  # what was sent is not echoed back whole
        return str(e["message"])

    refused("n", n=17)
    assert "--max-batch" in refused("n", n=9)  # choices x prompts beyond what is generated at once
    refused("stop", stop=["a", "b", "c", "d", "e"])
    assert str(MAX_STOP_CHARS) in refused("stop", stop="x" * (MAX_STOP_CHARS + 1))
    assert str(MAX_MESSAGES) in refused("messages", messages=hi * (MAX_MESSAGES + 1))
    refused("logit_bias", extra_body={"logit_bias": {str(i): 1 for i in range(1000)}})
    refused("tools", tools=[{"type": "function", "function": {"name": f"f{i}", "description": "d" * 500}}
                            for i in range(100)])
    refused("best_of", extra_body={"best_of": 4})
    with pytest.raises(openai.BadRequestError) as bad:
        c.completions.create(model="tiny", prompt=["a"] * 17, max_tokens=1)
    assert error(bad)["param"] == "prompt"
    assert c.chat.completions.create(model="tiny", messages=hi, max_tokens=1, n=8).choices  # the bounds themselves


# --- ids and paths ------------------------------------------------------------------------------------------------

def test_ids_and_paths_cannot_leave_their_directories(server: tuple[str, Path]) -> None:
    url, _ = server
    for path in ("/v1/files/..%2F..%2Ftunelab-jobs.db", "/v1/files/..%2F..%2Ftunelab-jobs.db/content",
                 "/v1/files/%2e%2e/content", "/v1/fine_tuning/jobs/..%2F..%2Fjobs/report",
                 "/v1/fine_tuning/jobs/..%2Ffiles/exports/..%2F..%2F",
                 "/v1/fine_tuning/jobs/x/sweep/..%2F..%2F/report.html", "/v1/models/..%2F..%2Fetc%2Fpasswd"):
        status, body = raw(url, "GET", path)
        assert status == 404, (path, status, body)
    # the web UI's assets: only files inside its static folder
    assert raw(url, "GET", "/ui/static/app.css")[0] == 200
    for path in ("/ui/static/../pages.py", "/ui/static/..%2fpages.py", "/ui/static/%2e%2e/pages.py",
                 "/ui/static/..%2f..%2f..%2fserve%2fstate.py", "/ui/static//etc/passwd"):
        status, body = raw(url, "GET", path)
        assert status == 404 and b"import" not in (body if isinstance(body, bytes) else b""), (path, status)
    # adapters: the admin's operation, and only an adapter directory loads (never a file, never a half)
    for where in ("../../etc", "/etc", "/etc/passwd", "/proc/self/environ"):
        status, body = raw(url, "POST", "/v1/adapters", json.dumps({"name": "x", "path": where}).encode(), key=ADMIN)
        assert status == 400 and "not an adapter" in body["error"]["message"], (where, body)
        assert raw(url, "POST", "/v1/adapters", json.dumps({"name": "x", "path": where}).encode())[0] == 401
