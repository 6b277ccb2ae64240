"""The OpenAI-compatible server, driven by the official `openai` client over real HTTP (uvicorn).

The model is a tiny random llama whose greedy answers differ by prompt; the adapters are random LoRA
weights, so each model id answers differently.
"""

from __future__ import annotations

import http.client
import json
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest
import torch

from tests.helpers import build_tiny_model, make_adapter
from tunelab.serve.server import BackgroundServer, build
from tunelab.serve.state import ServeSettings

PROMPTS = ["where is my card", "hello", "how do I reset my password", "the capital of France", "top up",
           "my card was stolen", "exchange rate", "hello world", "card arrival", "quick brown fox",
           "lazy dog", "reset it", "Italy is Rome", "tiny tokenizer", "you are a helpful assistant", "0123456789"]


@pytest.fixture(scope="module")
def chatty(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("chatty"), init_std=0.2)


@pytest.fixture(scope="module")
def adapters(chatty: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {name: make_adapter(chatty, root / name, seed) for seed, name in enumerate(["support", "legal", "late"])}


@pytest.fixture(scope="module")
def server(chatty: Path, adapters: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    app = build(str(chatty), name="base", adapters=[("support", str(adapters["support"])),
                                                    ("legal", str(adapters["legal"]))],
                data=str(tmp_path_factory.mktemp("serve-data")), settings=ServeSettings(log_content=True))
    with BackgroundServer(app) as url:
        yield url, app.state.tunelab


def client(url: str, key: str = "unused", **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, **kw)


def chat(c: openai.OpenAI, model: str, prompt: str, **kw: Any) -> Any:
    kw = {"temperature": 0, "max_tokens": 16} | kw
    return c.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}], **kw)


def raw(url: str, method: str, path: str, body: bytes | None = None,
        headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    req = urllib.request.Request(url + path, data=body, method=method,
                                 headers={"content-type": "application/json"} | (headers or {}))
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_models_chat_stream_and_completions(server: Any) -> None:
    url, _ = server
    c = client(url)
    assert [m.id for m in c.models.list().data] == ["base", "support", "legal"]
    assert c.models.retrieve("support").id == "support"

    answers = {m: chat(c, m, "where is my card") for m in ("base", "support", "legal")}
    texts = {m: r.choices[0].message.content for m, r in answers.items()}
    assert all(texts.values()) and len(set(texts.values())) == 3, texts  # each model answers its own way
    r = answers["support"]
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion" and r.model == "support"
    assert r.usage.completion_tokens <= 16 and r.usage.prompt_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens

    stream = chat(c, "support", "where is my card", stream=True, stream_options={"include_usage": True})
    pieces, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(pieces) == texts["support"]  # streaming gives the same greedy answer
    assert finish == r.choices[0].finish_reason and usage.completion_tokens == r.usage.completion_tokens

    comp = c.completions.create(model="legal", prompt="hello world", max_tokens=8, temperature=0)
    assert comp.object == "text_completion" and comp.choices[0].text and comp.usage.completion_tokens <= 8

    # sampling: a seed repeats itself; n gives n choices
    a = chat(c, "base", "hello", temperature=1.0, seed=7, n=3)
    b = chat(c, "base", "hello", temperature=1.0, seed=7, n=3)
    assert [x.message.content for x in a.choices] == [x.message.content for x in b.choices]
    assert len(a.choices) == 3 and [x.index for x in a.choices] == [0, 1, 2]
    assert chat(c, "base", "hello", temperature=0.9, top_p=0.5, max_tokens=4).usage.completion_tokens <= 4


def test_stop_sequences_cut_the_answer(server: Any) -> None:
    url, _ = server
    c = client(url)
    full = chat(c, "base", "how do I reset my password", max_tokens=24).choices[0].message.content
    stop = full[len(full) // 2: len(full) // 2 + 2]
    assert stop.strip(), full
    cut = chat(c, "base", "how do I reset my password", max_tokens=24, stop=[stop])
    assert cut.choices[0].message.content == full[:full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = "".join(ch.choices[0].delta.content or "" for ch in
                       chat(c, "base", "how do I reset my password", max_tokens=24, stop=stop, stream=True)
                       if ch.choices)
    assert streamed == full[:full.index(stop)]


def test_sixteen_concurrent_clients_get_their_one_at_a_time_answers(server: Any) -> None:
    url, state = server
    c = client(url)
    jobs = [(["base", "support", "legal"][i % 3], p) for i, p in enumerate(PROMPTS)]
    alone = [chat(c, m, p, max_tokens=24).choices[0].message.content for m, p in jobs]
    batches_before = state.engine.tokens_generated
    start = threading.Barrier(len(jobs))

    def concurrent(job: tuple[str, str]) -> str:
        start.wait()
        return chat(client(url), *job, max_tokens=24).choices[0].message.content

    with ThreadPoolExecutor(len(jobs)) as pool:
        together = list(pool.map(concurrent, jobs))
    assert together == alone
    assert len(set(alone)) > 8  # the prompts really do get different answers
    assert state.engine.tokens_generated > batches_before


def test_adapter_added_and_removed_at_run_time(server: Any, adapters: dict[str, Path]) -> None:
    url, _ = server
    c = client(url)
    with pytest.raises(openai.NotFoundError):
        chat(c, "late", "hello")
    status, _, body = raw(url, "POST", "/v1/adapters", json.dumps({"name": "late",
                                                                   "path": str(adapters["late"])}).encode())
    assert status == 201, body
    assert "late" in [m.id for m in c.models.list().data]
    late = chat(c, "late", "where is my card").choices[0].message.content
    assert late != chat(c, "support", "where is my card").choices[0].message.content
    status, _, body = raw(url, "POST", "/v1/adapters", json.dumps({"name": "late", "path": "x"}).encode())
    assert status == 409 and json.loads(body)["error"]["param"] == "name"
    status, _, body = raw(url, "POST", "/v1/adapters", json.dumps({"name": "bad", "path": "/nope"}).encode())
    assert status == 400 and "not an adapter" in json.loads(body)["error"]["message"]
    status, _, body = raw(url, "POST", "/v1/adapters", json.dumps({"name": "a.b", "path": "x"}).encode())
    assert status == 400 and json.loads(body)["error"]["param"] == "name"
    status, _, _ = raw(url, "DELETE", "/v1/adapters/late")
    assert status == 200
    with pytest.raises(openai.NotFoundError):
        chat(c, "late", "hello")
    assert raw(url, "DELETE", "/v1/adapters/late")[0] == 404
    assert chat(c, "support", "hello").choices[0].message.content  # the others are untouched


def test_a_bad_adapter_leaves_the_server_as_it_was(server: Any, tmp_path: Path) -> None:
    """An adapter made for another model fails to load with 400, and nothing of it stays behind."""
    url, state = server
    c = client(url)
    before = {m: chat(c, m, "hello").choices[0].message.content for m in ("base", "support")}
    other = build_tiny_model(tmp_path / "other-base", seed=3)
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig.from_pretrained(other)
    cfg.hidden_size, cfg.intermediate_size = 32, 64
    AutoModelForCausalLM.from_config(cfg).save_pretrained(other)
    wrong = make_adapter(other, tmp_path / "wrong", 5)
    status, _, body = raw(url, "POST", "/v1/adapters", json.dumps({"name": "wrong", "path": str(wrong)}).encode())
    assert status == 400 and "can't load this adapter" in json.loads(body)["error"]["message"]
    assert "wrong" not in [m.id for m in c.models.list().data]
    assert "wrong" not in state.engine.model.peft_config
    assert {m: chat(c, m, "hello").choices[0].message.content for m in ("base", "support")} == before


def test_dora_adapters_get_batches_of_their_own(chatty: Path, adapters: dict[str, Path], tmp_path: Path) -> None:
    """peft can't mix DoRA with other adapters in one pass: concurrent requests still get their answers."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(9)
    get_peft_model(AutoModelForCausalLM.from_pretrained(chatty), LoraConfig(
        r=4, target_modules="all-linear", use_dora=True, init_lora_weights=False)).save_pretrained(tmp_path / "dora")
    app = build(str(chatty), name="base", adapters=[("dora", str(tmp_path / "dora")),
                                                    ("support", str(adapters["support"]))], data=str(tmp_path))
    with BackgroundServer(app) as url:
        jobs = [(["base", "dora", "support"][i % 3], p) for i, p in enumerate(PROMPTS[:9])]
        alone = [chat(client(url), m, p).choices[0].message.content for m, p in jobs]
        with ThreadPoolExecutor(len(jobs)) as pool:
            together = list(pool.map(lambda job: chat(client(url), *job).choices[0].message.content, jobs))
    assert together == alone


def test_int8_base_serves_adapters_unmerged_and_batches_without_changing_answers(
        chatty: Path, adapters: dict[str, Path], tmp_path: Path) -> None:
    """--dtype int8: said in /v1/models; concurrent requests get their one-at-a-time answers."""
    app = build(str(chatty), name="base", adapters=[("support", str(adapters["support"]))], data=str(tmp_path),
                dtype="int8")
    with BackgroundServer(app) as url:
        cards = client(url).models.list().data
        assert {c.id: c.model_extra["dtype"] for c in cards} == {"base": "int8", "support": "int8"}
        jobs = [(["base", "support"][i % 2], p) for i, p in enumerate(PROMPTS[:8])]
        alone = [chat(client(url), m, p).choices[0].message.content for m, p in jobs]
        with ThreadPoolExecutor(len(jobs)) as pool:
            together = list(pool.map(lambda job: chat(client(url), *job).choices[0].message.content, jobs))
    assert together == alone
    assert len(set(alone)) > 4


def test_llama_cpp_engine_answers_as_torch_does(chatty: Path, adapters: dict[str, Path], server: Any,
                                                tmp_path: Path) -> None:
    """--engine llama.cpp with an f32 GGUF: the torch server's greedy answers, streamed, adapter unmerged; the engine
    and the GGUF's type in /v1/models; concurrent clients wait their turn and get their one-at-a-time answers."""
    from tunelab.serve.llama_engine import available

    if (why := available()) is not None:
        pytest.skip(f"llama.cpp engine not tested: {why}")
    torch_url, _ = server
    jobs = [(["base", "support"][i % 2], p) for i, p in enumerate(PROMPTS[:6])]
    want = [chat(client(torch_url), m, p).choices[0].message.content for m, p in jobs]
    app = build(str(chatty), name="base", adapters=[("support", str(adapters["support"]))], data=str(tmp_path),
                engine_kind="llama.cpp", dtype="f32")
    with BackgroundServer(app) as url:
        cards = client(url).models.list().data
        assert {c.id: (c.model_extra["engine"], c.model_extra["dtype"]) for c in cards} == \
            {"base": ("llama.cpp", "f32"), "support": ("llama.cpp", "f32")}
        alone = [chat(client(url), m, p).choices[0].message.content for m, p in jobs]
        streamed = "".join(chunk.choices[0].delta.content or "" for chunk in
                           chat(client(url), "support", PROMPTS[1], stream=True) if chunk.choices)
        with ThreadPoolExecutor(len(jobs)) as pool:
            together = list(pool.map(lambda job: chat(client(url), *job).choices[0].message.content, jobs))
    assert alone == want and together == want
    assert streamed == want[1]


def test_llama_cpp_engine_refused_with_what_to_do(chatty: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.helpers import tunelab_cli
    from tunelab.models.load import ModelError

    r = tunelab_cli("serve", "--model", chatty, "--engine", "llama.cpp", "--dtype", "int8", cwd=tmp_path)
    assert r.returncode == 2 and "with --engine llama.cpp expected auto, f32, f16, bf16, q8_0" in r.stderr
    r = tunelab_cli("serve", "--model", chatty, "--engine", "vllm", cwd=tmp_path)
    assert r.returncode == 2 and "expected torch or llama.cpp" in r.stderr
    monkeypatch.setattr("tunelab.serve.llama_engine.available", lambda: "llama-cpp-python is not installed: pip ...")
    with pytest.raises(ModelError, match="llama-cpp-python is not installed"):
        build(str(chatty), engine_kind="llama.cpp", data=str(tmp_path))


def test_errors_come_back_in_openai_shape(server: Any) -> None:
    url, _ = server
    c = client(url)
    with pytest.raises(openai.NotFoundError) as nf:
        chat(c, "no-such-model", "hello")
    assert nf.value.body["code"] == "model_not_found" and nf.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as bad:
        chat(c, "base", "hello", temperature=5)
    assert bad.value.body["param"] == "temperature" and "5" in bad.value.body["message"]
    with pytest.raises(openai.BadRequestError) as bad:
        chat(c, "base", "hello", logprobs=True)
    assert bad.value.body["param"] == "logprobs"
    status, _, body = raw(url, "POST", "/v1/chat/completions", b"{not json")
    assert status == 400 and set(json.loads(body)["error"]) == {"message", "type", "param", "code"}
    status, _, body = raw(url, "POST", "/v1/chat/completions", json.dumps({"model": "base"}).encode())
    assert status == 400 and json.loads(body)["error"]["param"] == "messages"
    big = json.dumps({"model": "base", "messages": [{"role": "user", "content": "x" * 3_000_000}]}).encode()
    status, _, body = raw(url, "POST", "/v1/chat/completions", big)
    assert status == 413 and json.loads(body)["error"]["code"] == "request_too_large"
    long = " ".join(["card"] * 600)  # over the tiny model's 512-token context
    with pytest.raises(openai.BadRequestError) as bad:
        chat(c, "base", long)
    assert bad.value.body["code"] == "context_length_exceeded"
    assert raw(url, "GET", "/v1/nothing-here")[0] == 404
    with pytest.raises(openai.BadRequestError) as bad:
        chat(c, "base", "hello", temperature=1.0, seed=2**70)
    assert bad.value.body["param"] == "seed"
    with pytest.raises(openai.BadRequestError) as bad:
        c.completions.create(model="base", prompt=["a"] * 16, n=2, max_tokens=2)
    assert "at most 16" in bad.value.body["message"]
    # null means "the default", as in OpenAI's API
    status, _, body = raw(url, "POST", "/v1/chat/completions", json.dumps(
        {"model": "base", "messages": [{"role": "user", "content": "hi"}], "temperature": None, "top_p": None,
         "n": None, "stream": None, "max_tokens": 3, "seed": None, "stop": None}).encode())
    assert status == 200, body
    assert chat(c, "base", "hello").choices  # still serving


def test_api_keys(chatty: Path, tmp_path: Path) -> None:
    app = build(str(chatty), name="base", data=str(tmp_path), settings=ServeSettings(api_keys=["k1", "k2"]))
    with BackgroundServer(app) as url:
        with pytest.raises(openai.AuthenticationError) as e:
            chat(client(url, "wrong"), "base", "hello")
        assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
        status, _, body = raw(url, "GET", "/v1/models")
        assert status == 401 and "API key" in json.loads(body)["error"]["message"]
        assert raw(url, "GET", "/metrics")[0] == 401
        status, _, body = raw(url, "GET", "/health")
        assert status == 200 and json.loads(body) == {"status": "ok"}  # names no model of any project
        assert chat(client(url, "k2"), "base", "hello").choices[0].message.content is not None
        assert raw(url, "GET", "/metrics", headers={"authorization": "Bearer k1"})[0] == 200


def test_full_queue_answers_429_with_retry_after(chatty: Path, tmp_path: Path) -> None:
    app = build(str(chatty), name="base", data=str(tmp_path), max_batch=1, max_queue=2)
    state = app.state.tunelab
    with BackgroundServer(app) as url:
        state.engine._model_lock.acquire()  # hold the model: nothing finishes, the queue fills
        try:
            with ThreadPoolExecutor(12) as pool:
                def send() -> Any:
                    return pool.submit(lambda: chat(client(url), "base", "hello", max_tokens=4))

                futures = [send() for _ in range(5)]
                # whether the engine takes its first request before or after the others arrive is a race: top the
                # queue up until it is full, so the next request has no room whatever the timing
                deadline = time.time() + 30
                while time.time() < deadline and state.engine.queue_depth < 2:
                    time.sleep(0.5)
                    if state.engine.queue_depth < 2:
                        futures.append(send())
                status, headers, body = raw(url, "POST", "/v1/chat/completions", json.dumps(
                    {"model": "base", "messages": [{"role": "user", "content": "hi"}]}).encode())
                state.engine._model_lock.release()
                results = []
                for f in futures:
                    try:
                        results.append(f.result(timeout=60).choices[0].finish_reason)
                    except openai.RateLimitError as exc:
                        results.append(exc.status_code)
        finally:
            if state.engine._model_lock._is_owned():
                state.engine._model_lock.release()
        assert status == 429 and int(headers["retry-after"]) >= 1
        assert json.loads(body)["error"]["code"] == "rate_limit_exceeded"
        assert results.count(429) >= 1 and any(r in ("length", "stop") for r in results), results
        assert chat(client(url), "base", "hello").choices  # it recovers


def test_client_disconnect_cancels_generation(chatty: Path, tmp_path: Path) -> None:
    app = build(str(chatty), name="base", data=str(tmp_path))
    state = app.state.tunelab
    step = state.engine._decode_step

    def slow_step() -> None:  # a slow model, so the client can leave mid-answer
        time.sleep(0.02)
        step()

    state.engine._decode_step = slow_step
    with BackgroundServer(app) as url:
        host, port = url.removeprefix("http://").split(":")
        body = json.dumps({"model": "base", "messages": [{"role": "user", "content": "hello"}], "stream": True,
                           "max_tokens": 400, "temperature": 0})
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200
        resp.fp.readline()  # the first event: generation is under way
        conn.sock.close()
        conn.close()
        # non-streaming: the client gives up after 0.3 s
        with pytest.raises(openai.APITimeoutError):
            client(url, timeout=0.3).chat.completions.create(
                model="base", messages=[{"role": "user", "content": "hi"}], max_tokens=400, temperature=0)
        deadline = time.time() + 20
        while state.engine.active_rows and time.time() < deadline:
            time.sleep(0.05)
        assert state.engine.active_rows == 0  # both generations stopped well before 400 tokens
        time.sleep(0.5)
    rows = sqlite3.connect(tmp_path / "tunelab-serve.db").execute(
        "select status, completion_tokens from requests").fetchall()
    assert sorted(s for s, _ in rows) == [499, 499] and all(n < 400 for _, n in rows), rows


def test_request_log_metrics_and_feedback(server: Any, tmp_path: Path) -> None:
    url, state = server
    c = client(url)
    good = chat(c, "support", "where is my card")
    bad = chat(c, "support", "how do I reset my password")
    with pytest.raises(openai.NotFoundError):
        chat(c, "nope", "x")
    raw_resp = c.chat.completions.with_raw_response.create(
        model="support", messages=[{"role": "user", "content": "hello"}], max_tokens=4, temperature=0)
    assert raw_resp.headers["x-request-id"] == raw_resp.parse().id

    def feedback(payload: dict[str, Any]) -> tuple[int, Any]:
        status, _, body = raw(url, "POST", "/v1/feedback", json.dumps(payload).encode())
        return status, json.loads(body)

    assert feedback({"request_id": good.id, "rating": "up"})[0] == 201
    assert feedback({"request_id": bad.id, "rating": "down", "correction": "Reset it from the app."})[0] == 201
    assert feedback({"request_id": bad.id, "rating": "down"})[0] == 201
    status, body = feedback({"request_id": "chatcmpl-nope", "rating": "up"})
    assert status == 404 and body["error"]["param"] == "request_id"
    assert feedback({"request_id": good.id, "rating": "meh"})[0] == 400

    time.sleep(0.3)
    db = state.store.engine.url.database
    rows = {r[0]: r for r in sqlite3.connect(db).execute(
        "select id, model, adapter, status, prompt_tokens, completion_tokens, latency_ms, ttft_ms, prompt, "
        "completion from requests")}
    row = rows[good.id]
    assert row[1:4] == ("support", "support", 200) and row[4] == good.usage.prompt_tokens
    assert row[5] == good.usage.completion_tokens and row[6] > 0 and 0 < row[7] <= row[6]
    assert json.loads(row[8])["messages"][-1]["content"] == "where is my card"
    assert row[9] == good.choices[0].message.content
    refused = sqlite3.connect(db).execute("select status, error from requests where model = 'nope'").fetchall()
    assert refused == [(404, "The model 'nope' does not exist. Loaded: base, support, legal")]

    status, _, text = raw(url, "GET", "/metrics")
    metrics = text.decode()
    assert status == 200
    assert 'tunelab_requests_total{endpoint="chat",model="support",status="200"}' in metrics
    assert 'tunelab_request_errors_total{model="unknown",status="404"}' in metrics  # no label per made-up name
    for name in ("tunelab_request_latency_seconds_bucket", "tunelab_time_to_first_token_seconds_bucket",
                 "tunelab_completion_tokens_total", "tunelab_queue_depth", "tunelab_adapters_loaded",
                 'tunelab_adapter_loaded{adapter="support"} 1.0', "tunelab_generation_tokens_per_second"):
        assert name in metrics, name

    from tunelab.serve.feedback import collect, write

    exported = collect(state.store, "support")
    assert exported.summary() == {"feedback": 3, "sft_rows": 2, "preference_pairs": 1, "skipped_no_content": 0}
    paths = write(exported, tmp_path / "fb")
    sft = [json.loads(x) for x in paths["sft.jsonl"].read_text().splitlines()]
    pairs = [json.loads(x) for x in paths["preference.jsonl"].read_text().splitlines()]
    assert {r["messages"][-1]["content"] for r in sft} == {good.choices[0].message.content,
                                                            "Reset it from the app."}
    assert pairs[0]["chosen"][0]["content"] == "Reset it from the app."
    assert pairs[0]["rejected"][0]["content"] == bad.choices[0].message.content
    assert pairs[0]["prompt"][-1] == {"role": "user", "content": "how do I reset my password"}
    # the exported SFT rows are training data tunelab reads as they are
    from tunelab.data.load import load_records

    loaded = load_records(paths["sft.jsonl"])
    assert not loaded.errors and len(loaded.records) == 2
