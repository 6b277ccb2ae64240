"""A tuned model's life after training (tunelab's extensions of the API, used by the web UI and open to scripts):
exports to download (a merged model, a GGUF file); its requests, errors and latency over time with the drift of
its traffic from its training data; its logged conversations with their feedback, for review; and the next round
of tuning, made from that feedback."""

from __future__ import annotations

import asyncio
import io
import json
import time
from dataclasses import asdict
from typing import Any, Literal

from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field, ValidationError

from ..jobs.schemas import JobCreate
from .exports import FORMATS, ExportBusy, zip_response
from .feedback import collect
from .monitor import drift, model_stats, parse_since, percentiles
from .schemas import APIError
from .state import State
from .store import RequestLog

MAX_BUCKETS = 200


class ExportRequest(BaseModel):
    format: Literal["hf", "gguf"]


class NextRound(BaseModel):
    method: Literal["supervised", "dpo"] = "supervised"
    suffix: str | None = Field(None, max_length=64)


def series(rows: list[RequestLog], since: float, until: float, buckets: int) -> list[dict[str, Any]]:
    """Requests, errors and latency percentiles per time bucket, oldest first; empty buckets kept (as zero
    requests) so that a chart shows quiet hours as quiet."""
    width = max((until - since) / buckets, 1.0)
    out = [{"start": since + i * width, "requests": 0, "errors": 0, "latency_ms": {}} for i in range(buckets)]
    latencies: list[list[float]] = [[] for _ in range(buckets)]
    for r in rows:
        i = min(int((r.created - since) / width), buckets - 1)
        if i < 0:
            continue
        out[i]["requests"] += 1
        if r.status >= 400 and r.status != 499:
            out[i]["errors"] += 1
        if r.status == 200 and r.latency_ms is not None:
            latencies[i].append(r.latency_ms)
    for b, lat in zip(out, latencies, strict=True):
        b["latency_ms"] = percentiles(lat)
    return out


def _conversation(r: RequestLog) -> dict[str, Any]:
    prompt: Any = None
    if r.prompt is not None:
        try:
            prompt = json.loads(r.prompt)
        except ValueError:
            prompt = r.prompt
    return {"id": r.id, "created": r.created, "status": r.status, "prompt": prompt, "completion": r.completion,
            "latency_ms": r.latency_ms}


def add_watch_routes(app: FastAPI, state: State, auth: Any) -> None:
    def visible_model(name: str, project: str) -> str:
        # only the project's own tuned models: the log of a shared model (the base, an --adapter) holds every
        # project's conversations, and the request log does not say whose each one is
        if not state.visible(name, project) or state.owner(name) != project:
            raise APIError(404, f"The model '{name}' does not exist", param="model", code="model_not_found")
        return name

    @app.get("/v1/tunelab/models/{name:path}/monitor")
    async def monitor(name: str, since: str = "24h", buckets: int = 24, project: str = auth) -> Any:
        """Requests, errors and latency of one model over time, and the drift of its prompts from its data."""
        visible_model(name, project)
        try:
            window = parse_since(since)
        except ValueError as exc:
            raise APIError(400, str(exc), param="since") from None
        if not 1 <= buckets <= MAX_BUCKETS:
            raise APIError(400, f"buckets must be 1 to {MAX_BUCKETS}, not {buckets}", param="buckets")

        def build() -> dict[str, Any]:
            now = time.time()
            rows = state.store.requests_of(name, since=now - window)
            stats = model_stats(rows)
            profile = state.store.profiles().get(name)
            d = drift(name, rows, profile[1], profile[2]) if profile else None
            return {"object": "model.monitor", "model": name, "since_seconds": window,
                    "logs_content": state.settings.log_content,
                    "summary": (asdict(stats[0]) | {"error_rate": stats[0].error_rate}) if stats else
                    {"model": name, "requests": 0, "errors": 0, "error_rate": 0.0},
                    "series": series(list(reversed(rows)), now - window, now, buckets),
                    "drift": asdict(d) if d else None}

        return await asyncio.to_thread(build)

    @app.get("/v1/tunelab/models/{name:path}/requests")
    async def requests(name: str, limit: int = 50, project: str = auth) -> Any:
        """One model's logged conversations, newest first, each with the feedback it got: the review queue."""
        visible_model(name, project)
        limit = max(1, min(limit, 500))

        def build() -> dict[str, Any]:
            rows = state.store.requests_of(name, limit=limit)
            feedback = state.store.feedback_on([r.id for r in rows])
            data = [_conversation(r) | {"feedback": [{"rating": f.rating, "correction": f.correction,
                                                      "comment": f.comment, "created": f.created}
                                                     for f in feedback.get(r.id, [])]} for r in rows]
            return {"object": "list", "data": data, "logs_content": state.settings.log_content}

        return await asyncio.to_thread(build)

    def model_job(job_id: str, project: str) -> Any:
        if state.jobs is None:
            raise APIError(404, "this server runs no fine-tuning jobs (--no-jobs)")
        job = state.jobs.service.get(project, job_id)
        if job.status != "succeeded" or not job.fine_tuned_model or not job.run_dir or job.model_deleted:
            raise APIError(400, f"job {job_id} has no tuned model (status {job.status})", param="fine_tuning_job_id")
        return job

    def export_format(fmt: str) -> str:
        if fmt not in FORMATS:
            raise APIError(404, f"no export format {fmt!r}: use one of {sorted(FORMATS)}", param="format")
        return fmt

    @app.post("/v1/fine_tuning/jobs/{job_id}/exports", status_code=202)
    async def start_export(job_id: str, body: ExportRequest, project: str = auth) -> Any:
        """Make the job's model downloadable as a merged model (hf) or a GGUF file (gguf), in the background."""
        job = model_job(job_id, project)
        try:
            return await asyncio.to_thread(state.jobs.exports.start, job_id, body.format, job.run_dir)
        except ExportBusy as exc:
            raise APIError(429, str(exc), code="rate_limit_exceeded", headers={"Retry-After": "30"}) from None

    @app.get("/v1/fine_tuning/jobs/{job_id}/exports/{fmt}")
    async def export_status(job_id: str, fmt: str, project: str = auth) -> Any:
        model_job(job_id, project)
        return state.jobs.exports.status(job_id, export_format(fmt))

    @app.get("/v1/fine_tuning/jobs/{job_id}/exports/{fmt}/content")
    async def export_content(job_id: str, fmt: str, project: str = auth) -> Any:
        job = model_job(job_id, project)
        return export_download(state, job_id, export_format(fmt), job.fine_tuned_model)

    @app.post("/v1/fine_tuning/jobs/{job_id}/next_round", status_code=201)
    async def next_round(job_id: str, body: NextRound | None = None, project: str = auth) -> Any:
        """The feedback on a job's model turned into a training file (corrected and up-rated answers; for dpo,
        them preferred over down-rated ones) and a new job that continues from that model."""
        from ..jobs.service import job_object

        body = body or NextRound()
        jobs = state.jobs
        job = model_job(job_id, project)
        try:  # the request as it will be made, checked before any file is written
            JobCreate(model=job.fine_tuned_model, training_file="file-pending", suffix=body.suffix)
        except ValidationError as exc:
            raise APIError(400, f"suffix: {exc.errors()[0]['msg']}", param="suffix") from None
        exported = await asyncio.to_thread(collect, state.store, job.fine_tuned_model)
        rows = exported.sft if body.method == "supervised" else exported.pairs
        if not rows:
            need = ("a thumbs-up or a corrected answer" if body.method == "supervised" else
                    "a corrected answer, or a thumbs-up and a thumbs-down on answers to the same message")
            hint = "" if state.settings.log_content else (" The server does not keep conversations (start it with "
                                                          "--log-content): feedback without them can't train.")
            raise APIError(400, f"no usable feedback on {job.fine_tuned_model} yet for a {body.method} round: it "
                                f"needs {need} ({exported.summary()}).{hint}", param="method")
        text = "".join(json.dumps(r) + "\n" for r in rows).encode()
        name = f"feedback-{job_id}-{body.method}.jsonl"
        upload = await asyncio.to_thread(jobs.files.add, project, name, "fine-tune", io.BytesIO(text))
        method = {"type": body.method, body.method: {"hyperparameters": {}}}
        request = JobCreate(model=job.fine_tuned_model, training_file=upload.id, method=method,
                            suffix=body.suffix or job.suffix, metadata={"next_round_of": job_id},
                            tunelab={"config": {"data.val_fraction": 0}} if len(rows) < 10 else None)
        try:
            new = await asyncio.to_thread(jobs.service.create, project, request, job.run_dir)
        except Exception:
            await asyncio.to_thread(jobs.files.delete, project, upload.id)  # no orphaned feedback file
            raise
        return job_object(new) | {"feedback": exported.summary(), "training_file_rows": len(rows)}


def export_download(state: State, job_id: str, fmt: str, model: str) -> StreamingResponse:
    """A finished export as a zip, streamed; 404 until it is ready."""
    folder = state.jobs.exports.folder(job_id, fmt)
    if not folder.is_dir():
        raise APIError(404, f"the {fmt} export of {job_id} is not ready: POST /v1/fine_tuning/jobs/{job_id}/exports "
                            "starts it, and its status says when it is done", param="format")
    return zip_response(folder, f"{model.replace(':', '_')}-{fmt}")
