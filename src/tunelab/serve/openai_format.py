"""OpenAI's response objects for a finished generation, and the server-sent-event chunks of a streamed one."""

from __future__ import annotations

import json
from typing import Any

from .engine import Event, GenRequest
from .schemas import APIError

STREAM_END = "data: [DONE]\n\n"


def choice_indexes(req: GenRequest) -> list[int]:
    """One choice per prompt and sample: n samples of each prompt, prompt by prompt."""
    return list(range(len(req.prompts) * req.n))


def usage(req: GenRequest) -> dict[str, int]:
    return {"prompt_tokens": req.prompt_tokens, "completion_tokens": req.completion_tokens,
            "total_tokens": req.prompt_tokens + req.completion_tokens}


def completion_response(req: GenRequest, endpoint: str) -> dict[str, Any]:
    """The whole answer of a request that didn't stream."""
    if endpoint == "chat":
        choices = [{"index": i, "message": {"role": "assistant", "content": req.texts.get(i, "")},
                    "logprobs": None, "finish_reason": req.finish_reasons.get(i, "stop")} for i in choice_indexes(req)]
        kind = "chat.completion"
    else:
        choices = [{"index": i, "text": req.texts.get(i, ""), "logprobs": None,
                    "finish_reason": req.finish_reasons.get(i, "stop")} for i in choice_indexes(req)]
        kind = "text_completion"
    return {"id": req.id, "object": kind, "created": int(req.created), "model": req.model, "choices": choices,
            "usage": usage(req), "system_fingerprint": None}


def chunk(req: GenRequest, endpoint: str, index: int, text: str | None, finish: str | None,
          role: bool = False) -> str:
    """One streamed choice's delta; `role` makes the chat chunk that opens each choice."""
    if endpoint == "chat":
        delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else (
            {"content": text} if text is not None else {})
        choice: dict[str, Any] = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        kind = "chat.completion.chunk"
    else:
        choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}
        kind = "text_completion"
    return sse_line({"id": req.id, "object": kind, "created": int(req.created), "model": req.model,
                     "choices": [choice]})


def event_chunk(req: GenRequest, endpoint: str, event: Event) -> str:
    """The chunk for an engine event: new text, a choice's finish, or an error (in OpenAI's error shape)."""
    if event.kind == "text":
        return chunk(req, endpoint, event.index, event.text, None)
    if event.kind == "finish":
        return chunk(req, endpoint, event.index, None if endpoint == "chat" else "", event.finish_reason)
    return sse_line(APIError(500, f"generation failed: {event.error}", type="server_error").body())


def usage_chunk(req: GenRequest, endpoint: str) -> str:
    """The last chunk before [DONE] when the client asked for stream_options.include_usage: no choices."""
    return sse_line({"id": req.id, "object": "chat.completion.chunk" if endpoint == "chat" else "text_completion",
                     "created": int(req.created), "model": req.model, "choices": [], "usage": usage(req)})


def sse_line(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data)}\n\n"
