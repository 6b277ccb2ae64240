"""The HTTP API: OpenAI's /v1/models, /v1/chat/completions and /v1/completions, plus adapters at run
time, feedback, and Prometheus metrics. Errors always come back in OpenAI's shape."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response

from ..data.templates import render_chat
from .deletion import add_deletion_routes, request_visible
from .generation import run_generation
from .jobs_api import add_jobs_routes
from .middleware import BodyLimit, add_error_handlers, bearer_auth
from .schemas import MAX_PROMPTS, AdapterRequest, APIError, ChatRequest, CompletionRequest, FeedbackRequest
from .state import DEFAULT_PROJECT, State
from .ui.pages import add_ui_routes
from .watch_api import add_watch_routes


def create_app(state: State) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.engine.start()
        if state.jobs is not None:
            state.jobs.start()
        try:
            yield
        finally:
            if state.jobs is not None:  # running jobs save a checkpoint and go back to the queue
                await asyncio.to_thread(state.jobs.stop)
            state.engine.stop()
            state.request_log.close()  # a last try for rows still waiting, then the writer stops

    # no /docs, /redoc or /openapi.json: every route the server answers needs a key (tests/e2e/test_route_auth.py)
    app = FastAPI(title="tunelab", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.tunelab = state
    app.add_middleware(BodyLimit, limit=state.settings.max_body_bytes,
                       limits={"/v1/files": state.settings.max_file_bytes})
    add_error_handlers(app, state)
    projects = state.settings.projects()
    auth = Depends(bearer_auth(projects, state.sessions))
    admin = Depends(bearer_auth({k: DEFAULT_PROJECT for k in state.settings.admin_keys} or projects))

    @app.get("/health")
    async def health() -> dict[str, Any]:  # open for liveness probes, so it names nothing a project owns
        return {"status": "ok"}

    @app.get("/metrics", dependencies=[admin])  # its labels name every project's models
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models(project: str = auth) -> dict[str, Any]:
        return {"object": "list", "data": [state.model_card(n) for n in state.models_for(project)]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str, project: str = auth) -> dict[str, Any]:
        await asyncio.to_thread(state.resolve_model, name, project)
        return state.model_card(name)

    @app.get("/v1/adapters")
    async def adapters(project: str = auth) -> dict[str, Any]:
        return {"object": "list", "data": [state.model_card(n) for n in state.engine.adapters
                                           if state.visible(n, project)]}

    @app.post("/v1/adapters", dependencies=[admin], status_code=201)
    async def add_adapter(body: AdapterRequest) -> dict[str, Any]:
        return await asyncio.to_thread(state.add_adapter, body.name, body.path)

    @app.delete("/v1/adapters/{name:path}", dependencies=[admin])
    async def delete_adapter(name: str) -> dict[str, Any]:
        state.remove_adapter(name)
        return {"id": name, "object": "model", "deleted": True}

    @app.post("/v1/feedback", status_code=201)
    async def feedback(body: FeedbackRequest, project: str = auth) -> dict[str, Any]:
        def write() -> int:
            logged = state.store.get_request(body.request_id)
            if logged is None or not request_visible(state, logged, project):  # another project's: as unknown
                raise APIError(404, f"no request with id {body.request_id!r}; use the `id` of a completion "
                                    f"(also sent as the x-request-id header)", param="request_id")
            return state.store.add_feedback(body.request_id, body.rating, body.correction, body.comment)

        # through the log writer, so a completion logged a moment ago is already there
        fb_id = await asyncio.wrap_future(state.writer.submit(write))
        return {"id": fb_id, "object": "feedback", "request_id": body.request_id, "rating": body.rating}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request, project: str = auth) -> Any:
        request.state.model = body.model
        adapter = await asyncio.to_thread(state.resolve_model, body.model, project)
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
            # as training rendered it: a template with no system role gets the system prompt in the first user turn
            ids = list(render_chat(tok, messages, add_generation_prompt=True, tokenize=True,
                                   return_dict=True)["input_ids"])
        except Exception as exc:  # the template rejects the conversation (e.g. roles out of order)
            raise APIError(400, f"the chat template can't render these messages: {exc}", param="messages") from None
        max_tokens = body.max_completion_tokens or body.max_tokens  # None: the default, cut to fit the context
        return await run_generation(state, request, body, "chat", adapter, [ids], max_tokens, {"messages": messages})

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request, project: str = auth) -> Any:
        request.state.model = body.model
        adapter = await asyncio.to_thread(state.resolve_model, body.model, project)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts or len(prompts) > MAX_PROMPTS:
            raise APIError(400, f"prompt must be a string or a list of 1 to {MAX_PROMPTS} strings", param="prompt")
        ids = [state.base.tokenizer(p, add_special_tokens=True)["input_ids"] for p in prompts]
        max_tokens = body.max_tokens if "max_tokens" in body.model_fields_set else None
        return await run_generation(state, request, body, "completions", adapter, ids, max_tokens,
                                    {"prompt": body.prompt})

    add_watch_routes(app, state, auth)
    add_deletion_routes(app, state, auth)
    if state.jobs is not None:
        add_jobs_routes(app, state, auth)
        if state.sessions is not None:  # the web UI is a face of the jobs API
            add_ui_routes(app, state, state.sessions)
    return app
