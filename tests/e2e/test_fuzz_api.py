"""Fuzzed API requests against a real server on the tiny model: chat, completions, feedback, files, jobs,
adapters and graders get a result or a 4xx in OpenAI's error shape; never a 500, a hang, or a dead server."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunelab.serve.server import BackgroundServer, build
from tunelab.serve.state import ServeSettings

pytestmark = pytest.mark.e2e
FUZZ = settings(max_examples=int(os.environ.get("TUNELAB_FUZZ_EXAMPLES", "40")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

scalars = st.none() | st.booleans() | st.integers(-3, 2**40) | st.floats(allow_nan=True) | st.text(max_size=12)
anything = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                        | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
text = st.text(max_size=30)
chat = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system"]), "content": text}),
                min_size=1, max_size=3)
inputs = st.sampled_from(["{{sample.output_text}}", "{{item.a}}", "", "{{nope}}"])
grader = (st.fixed_dictionaries({"type": st.just("string_check"), "name": text, "input": inputs, "reference": inputs,
                                 "operation": st.sampled_from(["eq", "ne", "like", "ilike", "bad"])})
          | st.fixed_dictionaries({"type": st.just("text_similarity"), "name": text, "input": inputs,
                                   "reference": inputs,
                                   "evaluation_metric": st.sampled_from(["fuzzy_match", "bleu", "rouge_l", "x"])})
          | st.fixed_dictionaries({"type": st.just("python"), "name": text, "source": st.sampled_from(
              ["def grade(sample, item):\n    return 1.0", "def grade(sample, item):\n    return 1 / 0", "boom(",
               "def grade(sample, item):\n    return 'x'"])}))
# Plausible values for each field (most requests get past validation into the code behind it); each example
# then replaces a few fields with anything at all.
FIELDS: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "/v1/chat/completions": {"model": st.just("tiny"), "messages": chat, "max_tokens": st.integers(1, 4),
                             "n": st.integers(1, 3), "temperature": st.floats(0, 2), "top_p": st.floats(0.01, 1),
                             "stop": st.lists(st.text(min_size=1, max_size=3), max_size=2),
                             "stream": st.booleans(), "seed": st.integers(0, 2**31), "logprobs": st.booleans(),
                             "top_logprobs": st.integers(0, 3), "response_format": st.just({"type": "text"}),
                             "stream_options": st.just({"include_usage": True})},
    "/v1/completions": {"model": st.just("tiny"), "prompt": text | st.lists(text, min_size=1, max_size=2),
                        "max_tokens": st.integers(1, 4), "n": st.integers(1, 2), "echo": st.booleans(),
                        "stream": st.booleans(), "temperature": st.floats(0, 2), "logprobs": st.integers(0, 2)},
    "/v1/feedback": {"request_id": text, "rating": st.sampled_from(["up", "down"]), "correction": text,
                     "comment": text},
    "/v1/fine_tuning/jobs": {"model": st.just("tiny"), "training_file": st.just("file-nope"), "suffix": text,
                             "seed": st.integers(0, 99), "metadata": st.dictionaries(text, text, max_size=2),
                             "method": st.just({"type": "supervised"}), "hyperparameters": st.just({}),
                             "tunelab": st.just({"config": {"train.epochs": 1}})},
    "/v1/adapters": {"name": text, "path": st.sampled_from(["../../etc", "/etc/passwd", ".", "runs/none"])},
    "/v1/fine_tuning/alpha/graders/run": {"grader": grader, "model_sample": text,
                                          "item": st.dictionaries(st.just("a"), text, max_size=1)},
    "/v1/fine_tuning/alpha/graders/validate": {"grader": grader},
}


REQUIRED = {"model", "messages", "prompt", "request_id", "rating", "training_file", "name", "path", "grader",
            "model_sample", "item"}


@pytest.fixture(scope="module")
def server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data = tmp_path_factory.mktemp("fuzz-server")
    settings_ = ServeSettings(api_keys=["acme:key-a"], worker_jobs=0, default_max_tokens=4)
    with BackgroundServer(build(str(tiny_model), name="tiny", data=str(data), settings=settings_)) as url:
        yield url


def _post(url: str, path: str, body: Any) -> tuple[int, bytes]:
    req = urllib.request.Request(url + path, data=json.dumps(body, allow_nan=True).encode(), method="POST",
                                 headers={"authorization": "Bearer key-a", "content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@st.composite
def _body(draw: st.DrawFn, path: str) -> Any:
    fields = FIELDS[path]
    body = draw(st.fixed_dictionaries({k: v for k, v in fields.items() if k in REQUIRED}, optional={
        k: v for k, v in fields.items() if k not in REQUIRED}))
    for key in draw(st.lists(st.sampled_from(sorted(fields)), max_size=2, unique=True)):
        body[key] = draw(anything)  # a wrong type, a missing value, a nested mess
    return draw(st.just(body) | anything) if draw(st.integers(0, 9)) == 0 else body


@pytest.mark.parametrize("path", sorted(FIELDS))
@FUZZ
@given(data=st.data())
def test_fuzzed_requests_never_break_the_server(server: str, path: str, data: st.DataObject) -> None:
    body = data.draw(_body(path), label="body")
    status, raw = _post(server, path, body)
    assert status < 500, (status, raw[:300])
    if status >= 400:
        assert "error" in json.loads(raw), raw[:300]  # OpenAI's shape, a message the client can show
    with urllib.request.urlopen(server + "/health", timeout=10) as r:  # still serving
        assert r.status == 200


def _upload(url: str, filename: str, purpose: str, content: bytes) -> tuple[int, bytes]:
    """A multipart upload built by hand, so that any filename and purpose reach the server as they are."""
    boundary = "tunelab-fuzz-boundary"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n{purpose}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode("utf-8", "surrogatepass")
    body = head + content + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(url + "/v1/files", data=body, method="POST", headers={
        "authorization": "Bearer key-a", "content-type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


names = st.text(st.characters(blacklist_characters='"\r\n', blacklist_categories=("Cs",)), max_size=20) | \
    st.sampled_from(["../../etc/passwd", "/abs/x.jsonl", "a.jsonl", "b.csv", "c.jsonl.gz", "d.parquet", ".."])
contents = st.binary(max_size=200) | st.lists(st.text(max_size=20), max_size=4).map(
    lambda xs: "\n".join(json.dumps({"messages": [{"role": "user", "content": x},
                                                  {"role": "assistant", "content": x}]}) for x in xs).encode())


@FUZZ
@given(filename=names, purpose=st.sampled_from(["fine-tune", "batch", ""]) | st.text(max_size=10), content=contents)
def test_fuzzed_uploads_never_break_the_server(server: str, filename: str, purpose: str, content: bytes) -> None:
    """Any name, purpose and bytes: a file object or a 4xx; an uploaded file's data check answers too."""
    status, raw = _upload(server, filename, purpose, content)
    assert status < 500, (status, raw[:300])
    if status >= 400:
        assert "error" in json.loads(raw), raw[:300]
        return
    fid = json.loads(raw)["id"]
    status, raw = _post(server, f"/v1/files/{fid}/check", {})
    assert status < 500, (status, raw[:300])
    with urllib.request.urlopen(server + "/health", timeout=10) as r:
        assert r.status == 200
