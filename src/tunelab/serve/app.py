"""The HTTP API: OpenAI's /v1/models, /v1/chat/completions and /v1/completions, plus adapters at run
time, feedback, and Prometheus metrics. Errors always come back in OpenAI's shape."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .engine import Engine, Event, GenRequest, QueueFull, Sampling
from .metrics import Metrics
from .models import Base, adapter_source, training_prompts
from .schemas import AdapterRequest, APIError, ChatRequest, CompletionRequest, FeedbackRequest
from .store import Store, pack

log = logging.getLogger("tunelab.serve")
GENERATION_PATHS = {"/v1/chat/completions": "chat", "/v1/completions": "completions"}


@dataclass
class ServeSettings:
    api_keys: list[str] = field(default_factory=list)
    admin_keys: list[str] = field(default_factory=list)  # for loading/unloading adapters; default: api_keys
    log_content: bool = False
    max_body_bytes: int = 2_000_000
    default_max_tokens: int = 256


class State:
    """Everything a request handler needs, in one place."""

    def __init__(self, base: Base, engine: Engine, store: Store, settings: ServeSettings) -> None:
        self.base, self.engine, self.store, self.settings = base, engine, store, settings
        self.metrics = Metrics(engine)
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="tunelab-log")  # one writer: FIFO, no lock fights
        self.adapter_lock = threading.Lock()
        self.started = int(time.time())

    def add_adapter(self, name: str, ref: str) -> dict[str, Any]:
        """Load an adapter (blocking: call from a worker thread) and profile its training data afterwards."""
        with self.adapter_lock:
            if name in self.engine.model_names:
                raise APIError(409, f"a model named {name!r} is already loaded; DELETE /v1/adapters/{name} first",
                               param="name", code="model_exists")
            try:
                src = adapter_source(ref, self.base)
                self.engine.add_adapter(name, src.path, src.info())
            except ValueError as exc:
                if "still finishing" in str(exc):
                    raise APIError(409, str(exc), param="name", code="model_exists") from None
                raise APIError(400, str(exc), param="path", code="invalid_adapter") from None
            except Exception as exc:  # e.g. an adapter made for another model: shapes don't fit
                raise APIError(400, f"{ref}: can't load this adapter onto {self.base.name}: {exc}", param="path",
                               code="invalid_adapter") from None
        self.metrics.adapter.labels(name).set(1)
        threading.Thread(target=self._profile, args=(name, src), daemon=True).start()
        return self.model_card(name)

    def _profile(self, name: str, src: Any) -> None:
        try:
            prompts = training_prompts(src, self.base.tokenizer)
            if prompts:
                self.store.save_profile(name, str(src.run or src.path), [len(p) for p in prompts],
                                        [self.engine.prompt_embedding(p) for p in prompts])
        except Exception as exc:  # drift checks go without a profile; serving goes on
            log.warning("could not profile the training data of adapter %s: %s", name, exc)

    def remove_adapter(self, name: str) -> None:
        if name == self.base.name:
            raise APIError(400, "the base model can't be removed", param="name")
        try:
            self.engine.remove_adapter(name)
        except KeyError:
            raise APIError(404, f"no adapter named {name!r}", param="name", code="model_not_found") from None
        self.metrics.adapter.remove(name)

    def model_card(self, name: str) -> dict[str, Any]:
        card = {"id": name, "object": "model", "created": self.started, "owned_by": "tunelab"}
        if name in self.engine.adapters:
            card["parent"] = self.base.name
            card["source"] = self.engine.adapters[name].get("source")
        return card

    def record_failure(self, request: Request, status: int, error: str) -> None:
        """Requests refused before generation (bad parameters, unknown model, auth) are logged too."""
        endpoint = GENERATION_PATHS.get(request.url.path)
        if endpoint is None or status == 401:  # unauthenticated callers don't get to write to the log
            return
        model = getattr(request.state, "model", None) or "unknown"
        # labels only for models that exist: clients can't grow the metrics without bound
        self.metrics.observe(model if model in self.engine.model_names else "unknown", endpoint, status)
        fields = dict(id="err-" + uuid.uuid4().hex, created=time.time(), endpoint=endpoint, model=model,
                      status=status, error=error[:2000])
        with contextlib.suppress(RuntimeError):
            self.writer.submit(self._safe_log, fields)

    def _safe_log(self, fields: dict[str, Any], prompt: list[int] | None = None) -> None:
        try:
            if prompt:  # computed here, off the event loop
                fields["embedding"] = pack(self.engine.prompt_embedding(prompt))
            self.store.log_request(**fields)
        except Exception as exc:  # a logging failure must not take the server down
            log.error("could not log request %s: %s", fields.get("id"), exc)

    def resolve_model(self, name: str) -> str | None:
        """The adapter to use for a requested model name (None: the base)."""
        if name == self.base.name:
            return None
        if name in self.engine.adapters:
            return name
        raise APIError(404, f"The model '{name}' does not exist. Loaded: {', '.join(self.engine.model_names)}",
                       param="model", code="model_not_found")


def create_app(state: State) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.engine.start()
        try:
            yield
        finally:
            state.engine.stop()
            state.writer.shutdown(wait=True)

    app = FastAPI(title="tunelab", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.tunelab = state
    app.add_middleware(BodyLimit, limit=state.settings.max_body_bytes)
    _error_handlers(app, state)
    auth = Depends(_auth(state.settings.api_keys))
    admin = Depends(_auth(state.settings.admin_keys or state.settings.api_keys))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": state.engine.model_names}

    @app.get("/metrics", dependencies=[auth])
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models", dependencies=[auth])
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [state.model_card(n) for n in state.engine.model_names]}

    @app.get("/v1/models/{name:path}", dependencies=[auth])
    async def model(name: str) -> dict[str, Any]:
        state.resolve_model(name)
        return state.model_card(name)

    @app.get("/v1/adapters", dependencies=[auth])
    async def adapters() -> dict[str, Any]:
        return {"object": "list", "data": [state.model_card(n) for n in state.engine.adapters]}

    @app.post("/v1/adapters", dependencies=[admin], status_code=201)
    async def add_adapter(body: AdapterRequest) -> dict[str, Any]:
        return await asyncio.to_thread(state.add_adapter, body.name, body.path)

    @app.delete("/v1/adapters/{name:path}", dependencies=[admin])
    async def delete_adapter(name: str) -> dict[str, Any]:
        state.remove_adapter(name)
        return {"id": name, "object": "model", "deleted": True}

    @app.post("/v1/feedback", dependencies=[auth], status_code=201)
    async def feedback(body: FeedbackRequest) -> dict[str, Any]:
        def write() -> int:
            if state.store.get_request(body.request_id) is None:
                raise APIError(404, f"no request with id {body.request_id!r}; use the `id` of a completion "
                                    f"(also sent as the x-request-id header)", param="request_id")
            return state.store.add_feedback(body.request_id, body.rating, body.correction, body.comment)

        # through the log writer, so a completion logged a moment ago is already there
        fb_id = await asyncio.wrap_future(state.writer.submit(write))
        return {"id": fb_id, "object": "feedback", "request_id": body.request_id, "rating": body.rating}

    @app.post("/v1/chat/completions", dependencies=[auth])
    async def chat(body: ChatRequest, request: Request) -> Any:
        request.state.model = body.model
        adapter = state.resolve_model(body.model)
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in body.messages]
        system = state.engine.adapters[adapter].get("system_prompt") if adapter else state.base.system_prompt
        if system and messages[0]["role"] != "system":  # the system prompt the adapter was tuned with
            messages.insert(0, {"role": "system", "content": system})
        tok = state.base.tokenizer
        if tok.chat_template is None:
            raise APIError(400, f"the model {body.model!r} has no chat template: use /v1/completions",
                           param="messages")
        try:
            ids = list(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                               return_dict=True)["input_ids"])
        except Exception as exc:  # the template rejects the conversation (e.g. roles out of order)
            raise APIError(400, f"the chat template can't render these messages: {exc}", param="messages") from None
        max_tokens = body.max_completion_tokens or body.max_tokens or state.settings.default_max_tokens
        return await _run(state, request, body, "chat", adapter, [ids], max_tokens, {"messages": messages})

    @app.post("/v1/completions", dependencies=[auth])
    async def completions(body: CompletionRequest, request: Request) -> Any:
        request.state.model = body.model
        adapter = state.resolve_model(body.model)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts or len(prompts) > 16:
            raise APIError(400, "prompt must be a string or a list of 1 to 16 strings", param="prompt")
        ids = [state.base.tokenizer(p, add_special_tokens=True)["input_ids"] for p in prompts]
        max_tokens = body.max_tokens or state.settings.default_max_tokens
        return await _run(state, request, body, "completions", adapter, ids, max_tokens, {"prompt": body.prompt})

    return app


async def _run(state: State, request: Request, body: Any, endpoint: str, adapter: str | None,
               prompts: list[list[int]], max_tokens: int, prompt_record: dict[str, Any]) -> Any:
    bad = body.unsupported()
    if bad:
        name, value = bad[0]
        raise APIError(400, f"{name}={value!r} is not supported by this server", param=name,
                       code="unsupported_parameter")
    for p in prompts:
        if not p:
            raise APIError(400, "the prompt is empty", param="prompt")
        if len(p) >= state.engine.max_context:
            raise APIError(400, f"the prompt is {len(p)} tokens; this model's context is {state.engine.max_context}",
                           param="messages" if endpoint == "chat" else "prompt", code="context_length_exceeded")
    sampling = Sampling(temperature=body.temperature, top_p=body.top_p, max_tokens=max_tokens, stop=body.stops(),
                        seed=body.seed)
    req = GenRequest(body.model, adapter, prompts, sampling, n=body.n)
    req.id = ("chatcmpl-" if endpoint == "chat" else "cmpl-") + req.id
    queue = req.bind(asyncio.get_running_loop())
    try:
        state.engine.submit(req)
    except ValueError as exc:
        raise APIError(400, str(exc), param="n") from None
    except QueueFull as full:
        _record(state, req, endpoint, 429, body.stream, prompt_record, error="queue full")
        raise APIError(429, f"the server is busy ({state.engine.queue_depth} requests waiting); retry in "
                            f"{full.retry_after} s", type="rate_limit_error", code="rate_limit_exceeded",
                       headers={"Retry-After": str(full.retry_after)}) from None
    headers = {"x-request-id": req.id}
    if body.stream:
        return StreamingResponse(_sse(state, req, queue, request, endpoint, body, prompt_record),
                                 media_type="text/event-stream", headers=headers)
    async with _Watch(request) as watch:
        while True:
            event = await watch.next(queue)
            if event is None:  # the client left: free its place in the batch
                req.cancelled = True
                _record(state, req, endpoint, 499, False, prompt_record, error="client disconnected")
                return Response(status_code=499)
            if event.kind == "error":
                _record(state, req, endpoint, 500, False, prompt_record, error=str(event.error))
                failed = APIError(500, f"generation failed: {event.error}", type="server_error")
                failed.recorded = True
                raise failed
            if event.kind == "done":
                break
    _record(state, req, endpoint, 200, False, prompt_record)
    return JSONResponse(_response(req, endpoint), headers=headers)


class _Watch:
    """Waits for the engine's next event or the client's disconnect, whichever comes first.

    Writes to a closed connection don't fail under uvicorn, so the disconnect must be read from the
    ASGI receive channel."""

    def __init__(self, request: Request) -> None:
        self.request = request
        self.gone: asyncio.Future[None] | None = None

    async def __aenter__(self) -> _Watch:
        self.gone = asyncio.ensure_future(self._wait_disconnect())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.gone is not None
        self.gone.cancel()

    async def _wait_disconnect(self) -> None:
        while (await self.request.receive())["type"] != "http.disconnect":
            pass

    async def next(self, queue: asyncio.Queue[Event]) -> Event | None:
        assert self.gone is not None
        get = asyncio.ensure_future(queue.get())
        done, _ = await asyncio.wait({get, self.gone}, return_when=asyncio.FIRST_COMPLETED)
        if get in done:
            return get.result()
        get.cancel()
        return None


def _choices(req: GenRequest) -> list[int]:
    return list(range(len(req.prompts) * req.n))


def _usage(req: GenRequest) -> dict[str, int]:
    return {"prompt_tokens": req.prompt_tokens, "completion_tokens": req.completion_tokens,
            "total_tokens": req.prompt_tokens + req.completion_tokens}


def _response(req: GenRequest, endpoint: str) -> dict[str, Any]:
    if endpoint == "chat":
        choices = [{"index": i, "message": {"role": "assistant", "content": req.texts.get(i, "")},
                    "logprobs": None, "finish_reason": req.finish_reasons.get(i, "stop")} for i in _choices(req)]
        kind = "chat.completion"
    else:
        choices = [{"index": i, "text": req.texts.get(i, ""), "logprobs": None,
                    "finish_reason": req.finish_reasons.get(i, "stop")} for i in _choices(req)]
        kind = "text_completion"
    return {"id": req.id, "object": kind, "created": int(req.created), "model": req.model, "choices": choices,
            "usage": _usage(req), "system_fingerprint": None}


def _chunk(req: GenRequest, endpoint: str, index: int, text: str | None, finish: str | None,
           role: bool = False) -> str:
    if endpoint == "chat":
        delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else (
            {"content": text} if text is not None else {})
        choice: dict[str, Any] = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        kind = "chat.completion.chunk"
    else:
        choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}
        kind = "text_completion"
    return _sse_line({"id": req.id, "object": kind, "created": int(req.created), "model": req.model,
                      "choices": [choice]})


def _sse_line(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data)}\n\n"


async def _sse(state: State, req: GenRequest, queue: asyncio.Queue[Event], request: Request, endpoint: str,
               body: Any, prompt_record: dict[str, Any]) -> AsyncIterator[str]:
    status, error = 499, "client disconnected"
    try:
        if endpoint == "chat":
            for i in _choices(req):
                yield _chunk(req, endpoint, i, None, None, role=True)
        async with _Watch(request) as watch:
            while True:
                event = await watch.next(queue)
                if event is None:
                    return
                if event.kind == "done":
                    break
                yield _event_chunk(req, endpoint, event)
                if event.kind == "error":
                    status, error = 500, str(event.error)
                    return
        if (body.stream_options or {}).get("include_usage"):
            yield _sse_line({"id": req.id, "object": "chat.completion.chunk" if endpoint == "chat" else
                             "text_completion", "created": int(req.created), "model": req.model, "choices": [],
                             "usage": _usage(req)})
        yield "data: [DONE]\n\n"
        status, error = 200, None
    finally:  # also runs when the client goes away mid-stream: stop generating for it
        if status != 200:
            req.cancelled = True
        _record(state, req, endpoint, status, True, prompt_record, error=error)


def _event_chunk(req: GenRequest, endpoint: str, event: Event) -> str:
    if event.kind == "text":
        return _chunk(req, endpoint, event.index, event.text, None)
    if event.kind == "finish":
        return _chunk(req, endpoint, event.index, None if endpoint == "chat" else "", event.finish_reason)
    return _sse_line(APIError(500, f"generation failed: {event.error}", type="server_error").body())


def _record(state: State, req: GenRequest, endpoint: str, status: int, stream: bool, prompt_record: dict[str, Any],
            error: str | None = None) -> None:
    """Metrics now; the database row through the single writer thread."""
    end = req.finished_at or time.time()
    latency = end - req.created
    ttft = (req.first_token_at - req.created) if req.first_token_at else None
    state.metrics.observe(req.model, endpoint, status, latency if status == 200 else None,
                          ttft if status == 200 else None, req.prompt_tokens if status == 200 else 0,
                          req.completion_tokens)
    content = state.settings.log_content
    completion = None
    if content and req.texts:
        completion = req.texts.get(0, "")  # the first choice: what feedback on this request refers to

    fields = dict(id=req.id, created=req.created, endpoint=endpoint, model=req.model, adapter=req.adapter,
                status=status, error=error, prompt_tokens=req.prompt_tokens, completion_tokens=req.completion_tokens,
                latency_ms=latency * 1000, ttft_ms=ttft * 1000 if ttft is not None else None, stream=stream,
                finish_reason=req.finish_reasons.get(0), prompt=json.dumps(prompt_record) if content else None,
                completion=completion)
    with contextlib.suppress(RuntimeError):  # writer already shut down: the server is stopping
        state.writer.submit(state._safe_log, fields, req.prompts[0])


def _auth(keys: list[str]) -> Callable[[Request], Awaitable[None]]:
    encoded = [k.encode() for k in keys]

    async def check(request: Request) -> None:
        if not encoded:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise APIError(401, "You didn't provide an API key. Send it as 'Authorization: Bearer KEY'.",
                           code="invalid_api_key")
        given = token.strip().encode()
        # compare with every key, in constant time, so neither the match nor its position leaks through timing
        ok = [hmac.compare_digest(given, k) for k in encoded]
        if not any(ok):
            raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")

    return check


def _error_handlers(app: FastAPI, state: State) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        if exc.status != 429 and not exc.recorded:  # a full queue is logged where it happens, with its id
            state.record_failure(request, exc.status, exc.message)
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        param = ".".join(loc) or None
        msg = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            msg, param = "the request body is not valid JSON", None
        message = f"{param}: {msg}" if param else msg
        if "input" in first and param and first.get("type") != "missing":
            message += f" (got {first['input']!r})"
        state.record_failure(request, 400, message)
        return JSONResponse(APIError(400, message, param=param).body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        err = APIError(exc.status_code, str(exc.detail), code="not_found" if exc.status_code == 404 else None)
        return JSONResponse(err.body(), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        state.record_failure(request, 500, str(exc))
        return JSONResponse(APIError(500, f"internal error: {exc}", type="server_error").body(), status_code=500)


DRAIN_BYTES = 64 * 1024 * 1024  # past this a too-large body is not read at all: the connection just closes


class BodyLimit:
    """Refuse request bodies over `limit` bytes with 413, whether or not they declare their length."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._drain(receive, int(declared))
            return await self._too_large(send)
        if declared is None and scope.get("method") in ("POST", "PUT", "PATCH"):
            # no declared length (chunked upload): read it all here, counting, then hand it on
            chunks: list[bytes] = []
            seen = 0
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return None  # client left
                chunks.append(message.get("body", b""))
                seen += len(chunks[-1])
                if seen > self.limit:
                    return await self._too_large(send)
                if not message.get("more_body"):
                    break
            replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

            async def replaying() -> dict[str, Any]:
                return replay.pop() if replay else await receive()

            return await self.app(scope, replaying, send)
        return await self.app(scope, receive, send)

    async def _drain(self, receive: Any, declared: int) -> None:
        """Read and drop a too-large body (up to DRAIN_BYTES) before answering: a client still sending when the
        server closes gets a broken pipe instead of the 413 that says what was wrong."""
        if declared > DRAIN_BYTES:
            return
        while True:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body"):
                return

    async def _too_large(self, send: Any) -> None:
        body = json.dumps(APIError(413, f"request body over {self.limit} bytes", code="request_too_large")
                          .body()).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def data_dir(path: str | None) -> Path:
    from ..models.registry import home

    d = Path(path).expanduser() if path else home() / "serve"
    d.mkdir(parents=True, exist_ok=True)
    return d
