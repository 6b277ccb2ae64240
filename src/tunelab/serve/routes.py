"""The HTTP API: OpenAI's /v1/models, /v1/chat/completions and /v1/completions, plus adapters at run
time, feedback, and Prometheus metrics. Errors always come back in OpenAI's shape."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response

from .generation import run_generation
from .middleware import BodyLimit, add_error_handlers, bearer_auth
from .schemas import AdapterRequest, APIError, ChatRequest, CompletionRequest, FeedbackRequest
from .state import State


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
    add_error_handlers(app, state)
    auth = Depends(bearer_auth(state.settings.api_keys))
    admin = Depends(bearer_auth(state.settings.admin_keys or state.settings.api_keys))

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
        return await run_generation(state, request, body, "chat", adapter, [ids], max_tokens, {"messages": messages})

    @app.post("/v1/completions", dependencies=[auth])
    async def completions(body: CompletionRequest, request: Request) -> Any:
        request.state.model = body.model
        adapter = state.resolve_model(body.model)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts or len(prompts) > 16:
            raise APIError(400, "prompt must be a string or a list of 1 to 16 strings", param="prompt")
        ids = [state.base.tokenizer(p, add_special_tokens=True)["input_ids"] for p in prompts]
        max_tokens = body.max_tokens or state.settings.default_max_tokens
        return await run_generation(state, request, body, "completions", adapter, ids, max_tokens,
                                    {"prompt": body.prompt})

    return app
