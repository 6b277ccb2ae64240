"""What stands around the routes: the request-body limit, bearer-key auth, and the handlers that turn every
exception into OpenAI's error shape."""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import is_disk_full
from .schemas import APIError
from .state import DEFAULT_PROJECT, State
from .ui.session import COOKIE, UI_HEADER, Sessions

log = logging.getLogger("tunelab.serve")
DRAIN_BYTES = 64 * 1024 * 1024  # past this a too-large body is not read at all: the connection just closes


class _TooLarge(Exception):
    """A body without a declared length ran past the limit while the app read it."""


class BodyLimit:
    """Refuse request bodies over `limit` bytes with 413, whether or not they declare their length; paths in
    `limits` (file uploads) have their own."""

    def __init__(self, app: Any, limit: int, limits: dict[str, int] | None = None) -> None:
        self.app, self.default, self.limits = app, limit, limits or {}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limits.get(scope.get("path", ""), self.default)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._drain(receive, int(declared))
            return await self._too_large(send, limit)
        if declared is None and scope.get("method") in ("POST", "PUT", "PATCH"):
            return await self._counted(scope, receive, send, limit)
        return await self.app(scope, receive, send)

    async def _counted(self, scope: dict[str, Any], receive: Any, send: Any, limit: int) -> None:
        """A body of no declared length (chunked) goes on to the app as it arrives, never held here whole (an upload
        may be hundreds of MB), counted: past `limit` the app's reading fails and the client gets the 413 instead of
        whatever the app would have answered."""
        seen, over, started = 0, False, False

        async def counting() -> dict[str, Any]:
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    over = True
                    raise _TooLarge
            return dict(message)

        async def answer(message: dict[str, Any]) -> None:
            nonlocal started
            if over and not started:  # the app's answer to a body cut short: the 413 below says what happened
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        with contextlib.suppress(_TooLarge):
            await self.app(scope, counting, answer)
        if over and not started:
            await self._too_large(send, limit)

    async def _drain(self, receive: Any, declared: int) -> None:
        """Read and drop a too-large body (up to DRAIN_BYTES) before answering: a client still sending when the
        server closes gets a broken pipe instead of the 413 that says what was wrong."""
        if declared > DRAIN_BYTES:
            return
        while True:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body"):
                return

    async def _too_large(self, send: Any, limit: int) -> None:
        body = json.dumps(APIError(413, f"request body over {limit} bytes", code="request_too_large")
                          .body()).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def bearer_auth(keys: dict[str, str], sessions: Sessions | None = None) -> Callable[[Request], Awaitable[str]]:
    """A FastAPI dependency that requires `Authorization: Bearer KEY` with one of `keys` (key -> project; none:
    anyone may, as project "default") and gives the key's project. With `sessions`, the web UI's calls (its
    header and a signed-in cookie) count as that key's."""
    encoded = [(k.encode(), project) for k, project in keys.items()]

    async def check(request: Request) -> str:
        if not encoded:
            request.state.project = DEFAULT_PROJECT
            return DEFAULT_PROJECT
        header = request.headers.get("authorization", "")
        if not header and sessions is not None and request.headers.get(UI_HEADER):
            project = sessions.project(request.cookies.get(COOKIE))
            if project is not None:
                request.state.project = project
                return project
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise APIError(401, "You didn't provide an API key. Send it as 'Authorization: Bearer KEY'.",
                           code="invalid_api_key")
        given = token.strip().encode()
        # compare with every key, in constant time, so neither the match nor its position leaks through timing
        matches = [project for k, project in encoded if hmac.compare_digest(given, k)]
        if not matches:
            raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")
        request.state.project = matches[0]  # whose the request-log row is
        return matches[0]

    return check


def add_error_handlers(app: FastAPI, state: State) -> None:
    """OpenAI-shaped errors for everything; failed generation requests also go to the request log."""

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        if exc.status != 429 and not exc.recorded:  # a full queue is logged where it happens, with its id
            state.record_failure(request, exc.status, exc.log_text(state.settings.log_content))
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
        logged = message  # what the client sent stays out of the request log unless content is logged
        if "input" in first and param and first.get("type") != "missing":
            got = repr(first["input"])
            message += f" (got {got if len(got) <= 200 else got[:200] + '...'})"
        state.record_failure(request, 400, message if state.settings.log_content else logged)
        return JSONResponse(APIError(400, message, param=param).body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        err = APIError(exc.status_code, str(exc.detail), code="not_found" if exc.status_code == 404 else None)
        return JSONResponse(err.body(), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(OperationalError)
    async def database_away(request: Request, exc: OperationalError) -> JSONResponse:
        # the server's database locked, read-only, full or gone: the client may retry; SQLAlchemy's message (which
        # echoes the statement's parameters, i.e. what clients sent) goes neither to the client nor to the log
        reason = str(exc.orig or "")[:200]
        log.warning("%s %s: the database is unavailable (%s)", request.method, request.url.path, reason)
        state.record_failure(request, 503, f"database unavailable: {reason}")
        err = APIError(503, f"the server's database is unavailable right now ({reason}); retry in a few seconds",
                       type="server_error", code="database_unavailable")
        return JSONResponse(err.body(), status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception) -> JSONResponse:
        if is_disk_full(exc):  # 507, a server error clients retry; the path stays in the server's log
            log.error("%s %s: %s", request.method, request.url.path, exc)
            state.record_failure(request, 507, "disk full")
            err = APIError(507, "the server's disk is full: nothing was stored. Try again once space has been freed "
                           "on the server", type="server_error", code="insufficient_storage")
            return JSONResponse(err.body(), status_code=507)
        log.exception("unhandled error")
        state.record_failure(request, 500, str(exc))
        return JSONResponse(APIError(500, f"internal error: {exc}", type="server_error").body(), status_code=500)
