"""One generation request from submission to answer: queue it on the engine, wait for its events (or the
client's disconnect), answer whole or as a stream, and record it in the metrics and the request log."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from .engine import Event, GenRequest, QueueFull, Sampling
from .openai_format import STREAM_END, choice_indexes, chunk, completion_response, event_chunk, usage_chunk
from .schemas import APIError
from .state import State


async def run_generation(state: State, request: Request, body: Any, endpoint: str, adapter: str | None,
                         prompts: list[list[int]], max_tokens: int, prompt_record: dict[str, Any]) -> Any:
    """Check the request, submit it, and answer: a JSON body, or a stream of server-sent events."""
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
        return StreamingResponse(_stream(state, req, queue, request, endpoint, body, prompt_record),
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
    return JSONResponse(completion_response(req, endpoint), headers=headers)


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


async def _stream(state: State, req: GenRequest, queue: asyncio.Queue[Event], request: Request, endpoint: str,
                  body: Any, prompt_record: dict[str, Any]) -> AsyncIterator[str]:
    status, error = 499, "client disconnected"
    try:
        if endpoint == "chat":
            for i in choice_indexes(req):
                yield chunk(req, endpoint, i, None, None, role=True)
        async with _Watch(request) as watch:
            while True:
                event = await watch.next(queue)
                if event is None:
                    return
                if event.kind == "done":
                    break
                yield event_chunk(req, endpoint, event)
                if event.kind == "error":
                    status, error = 500, str(event.error)
                    return
        if (body.stream_options or {}).get("include_usage"):
            yield usage_chunk(req, endpoint)
        yield STREAM_END
        status, error = 200, None
    finally:  # also runs when the client goes away mid-stream: stop generating for it
        if status != 200:
            req.cancelled = True
        _record(state, req, endpoint, status, True, prompt_record, error=error)


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
    state.log_request(fields, req.prompts[0])
