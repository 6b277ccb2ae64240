"""Deleting a project's data through the API: its request log (with the feedback on it), one feedback, and a
finished fine-tuning job with everything it made (run, checkpoints, result files, exports, the served model).
Another project's objects answer 404, as if they did not exist."""

from __future__ import annotations

import asyncio
import contextlib
import math
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI

from ..jobs.service import CKPT
from .schemas import APIError
from .state import State
from .store import RequestLog


def request_visible(state: State, row: RequestLog, project: str) -> bool:
    """Whether a project may give feedback on a logged request: its own; a row logged before requests carried
    their project counts as its model's (a fine-tuned model's project, or anyone's for a shared model)."""
    whose = row.project if row.project is not None else state.owner(row.model)
    return whose in (None, project)


def _own(state: State, row: RequestLog, project: str) -> bool:
    """Whether a project may delete a logged request: only its own; rows that name no project only on a server
    without keys (one user's)."""
    return row.project == project or (row.project is None and not state.settings.api_keys)


def parse_before(value: str | None) -> float | None:
    """A Unix time in seconds, or an ISO 8601 date or time (UTC unless it says)."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds):
            raise APIError(400, f"before: {value!r} is not a time", param="before")
        return seconds
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise APIError(400, f"before: {value!r} is neither a Unix time in seconds nor an ISO 8601 date "
                            "(e.g. 1767225600 or 2026-01-01T00:00:00Z)", param="before") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def add_deletion_routes(app: FastAPI, state: State, auth: Any) -> None:
    async def on_writer(fn: Any, *args: Any, **kwargs: Any) -> Any:
        # through the request log's single writer: rows queued or waiting for it are written first, then deleted
        def settled() -> Any:
            state.request_log.settle()
            return fn(*args, **kwargs)

        return await asyncio.wrap_future(state.writer.submit(settled))

    @app.delete("/v1/requests")
    async def delete_requests(before: str | None = None, model: str | None = None, project: str = auth) -> Any:
        """The project's logged requests (all, or those before a time, or of one model) and the feedback on them."""
        cutoff = parse_before(before)
        n, fb = await on_writer(state.store.delete_requests, project, before=cutoff, model=model,
                                unowned=not state.settings.api_keys)
        return {"object": "request_log.deleted", "deleted": True, "requests": n, "feedback": fb,
                "before": cutoff, "model": model}

    @app.delete("/v1/requests/{request_id}")
    async def delete_request(request_id: str, project: str = auth) -> Any:
        """One logged request (the `id` of a completion, also its x-request-id header) and its feedback."""
        def run() -> int:
            row = state.store.get_request(request_id)
            if row is None or not _own(state, row, project):
                raise APIError(404, f"no request with id {request_id!r} in this project's log", param="request_id",
                               code="not_found")
            return state.store.delete_requests(project, ids=[request_id], unowned=not state.settings.api_keys)[1]

        fb = await on_writer(run)
        return {"id": request_id, "object": "request", "deleted": True, "feedback": fb}

    @app.delete("/v1/feedback/{feedback_id}")
    async def delete_feedback(feedback_id: str, project: str = auth) -> Any:
        """One feedback (the `id` POST /v1/feedback gave); the request it was on stays."""
        def run() -> None:
            number = feedback_id.isascii() and feedback_id.isdigit() and len(feedback_id) < 19  # fits SQLite's int
            found = state.store.get_feedback(int(feedback_id)) if number else None
            if found is None or not _own(state, found[1], project):
                raise APIError(404, f"no feedback with id {feedback_id!r} in this project", param="feedback_id",
                               code="not_found")
            state.store.delete_feedback(int(feedback_id))

        await on_writer(run)
        return {"id": feedback_id, "object": "feedback", "deleted": True}

    if state.jobs is None:
        return

    @app.delete("/v1/fine_tuning/jobs/{job_id}")
    async def delete_job(job_id: str, project: str = auth) -> Any:
        """A finished job and what it made: its directory (data copy, run, checkpoints, sweep trials), events,
        checkpoints, result files, exports, and its model, no longer served. Refused while the job may still run
        (cancel it first) and while another job continues from its model. The uploaded files it trained on stay
        (DELETE /v1/files/{id}), and so do the model's logged requests (DELETE /v1/requests?model=...)."""
        jobs = state.jobs
        row = await asyncio.to_thread(jobs.service.delete_job, project, job_id)
        await asyncio.to_thread(jobs.exports.remove, job_id)
        if row.fine_tuned_model:
            for loaded in [n for n in list(state.owners) if n.split(CKPT, 1)[0] == row.fine_tuned_model]:
                with contextlib.suppress(APIError):  # unloaded meanwhile by the model sync
                    state.remove_adapter(loaded)
        return {"id": job_id, "object": "fine_tuning.job", "deleted": True, "fine_tuned_model": row.fine_tuned_model}
