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
from .schemas import COMPLETIONS_MAX_TOKENS, APIError
from .state import State


def token_budget(prompts: list[list[int]], asked: int | None, default: int, context: int, endpoint: str,
                 param: str = "max_tokens") -> int:
    """The completion tokens a request may generate: what it asked for, if prompt + that fits the model's context
    (else a 400, as OpenAI answers); when it asked nothing, the default, cut to the room the prompt leaves."""
    what = "messages" if endpoint == "chat" else "prompt"
    for i, p in enumerate(prompts):
        if not p:
            raise APIError(400, "the prompt is empty", param="prompt")
        name = f"your {what}" if len(prompts) == 1 else f"prompt {i}"
        if len(p) >= context:
            raise APIError(400, f"This model's maximum context length is {context} tokens, and {name} take"
                                f"{'s' if len(prompts) > 1 or endpoint != 'chat' else ''} {len(p)} tokens (prompt "
                                f"tokens {len(p)}, context {context}), which leaves no room for an answer: shorten "
                                f"the {what} to well under {context} tokens"
                                f"{' (drop earlier turns, or a long system prompt)' if endpoint == 'chat' else ''}, "
                                "or use a model with a longer context.", param=what,
                           code="context_length_exceeded")
    longest = max(len(p) for p in prompts)
    room = context - longest
    if asked is None:
        return min(default, room)
    if longest + asked > context:
        raise APIError(400, f"{param} is too large: {asked}. This model's maximum context length is {context} tokens "
                            f"and the {what} take{'s' if endpoint != 'chat' else ''} {longest} (prompt tokens "
                            f"{longest}), so at most {room} are left for the completion: set {param} to {room} or "
                            f"less (or leave it out), or shorten the {what}.", param=param,
                       code="context_length_exceeded")
    return asked


def _shown(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


async def run_generation(state: State, request: Request, body: Any, endpoint: str, adapter: str | None,
                         prompts: list[list[int]], max_tokens: int | None, prompt_record: dict[str, Any]) -> Any:
    """Check the request, submit it, and answer: a JSON body, or a stream of server-sent events. `max_tokens`:
    what the request asked for (None: the default, as much as fits)."""
    bad = body.unsupported()
    if bad:
        name, value = bad[0]
        raise APIError(400, f"{name}={_shown(value)} is not supported by this server", param=name,
                       code="unsupported_parameter", logged=f"{name} is not supported by this server")
    default = state.settings.default_max_tokens if endpoint == "chat" else COMPLETIONS_MAX_TOKENS
    param = "max_completion_tokens" if getattr(body, "max_completion_tokens", None) else "max_tokens"
    max_tokens = token_budget(prompts, max_tokens, default, state.engine.max_context, endpoint, param)
    project = getattr(request.state, "project", None)  # set by the key check
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
        _record(state, req, endpoint, 429, body.stream, prompt_record, project, error="queue full")
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
                req.cancel()
                _record(state, req, endpoint, 499, False, prompt_record, project, error="client disconnected")
                return Response(status_code=499)
            if event.kind == "error":
                _record(state, req, endpoint, 500, False, prompt_record, project, error=str(event.error))
                failed = APIError(500, f"generation failed: {event.error}", type="server_error")
                failed.recorded = True
                raise failed
            if event.kind == "done":
                break
    _record(state, req, endpoint, 200, False, prompt_record, project)
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
    project = getattr(request.state, "project", None)
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
            req.cancel()
        _record(state, req, endpoint, status, True, prompt_record, project, error=error)


def _record(state: State, req: GenRequest, endpoint: str, status: int, stream: bool, prompt_record: dict[str, Any],
            project: str | None, error: str | None = None) -> None:
    """Metrics now; the database row, under the project whose key asked, through the single writer thread."""
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
                  completion=completion, project=project)
    state.log_request(fields, req.prompts[0])
