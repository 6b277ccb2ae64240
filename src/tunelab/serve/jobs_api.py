"""The files and fine_tuning.jobs API on the server, in OpenAI's shapes: uploads, jobs run by the worker, and
each succeeded job's model loaded as an adapter under its ft: name the moment the job is done."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field

from ..config import default
from ..graders.model_graders import API_KEY_ENV, BASE_URL_ENV
from ..jobs.db import JobsDB, database_url
from ..jobs.errors import JobsError
from ..jobs.files import FileStore, file_object
from ..jobs.schemas import JobCreate
from ..jobs.service import CKPT, JobsService, checkpoint_object, event_object, job_object
from ..jobs.worker import QUIET_ENV, Worker
from ..runs import RunDir, layout
from .exports import Exports
from .schemas import APIError
from .state import State

log = logging.getLogger("tunelab.serve")
SYNC_S = 0.5  # how often the server looks for newly succeeded (or deleted) fine-tuned models


class FileCheck(BaseModel):
    format: str = "auto"
    max_length: int = Field(default("model.max_length"), gt=0)


class JobsRuntime:
    """The jobs database, file store, service, the server's own worker (unless workers run elsewhere), and the
    thread that keeps the served fine-tuned models in step with the jobs."""

    def __init__(self, state: State, data: Path, db_url: str | None, worker_jobs: int) -> None:
        self.state = state
        self.db = JobsDB(database_url(data, db_url))
        self.files = FileStore(self.db, data / "files", state.settings.max_file_bytes)
        self.service = JobsService(self.db, self.files, data / "jobs")
        self.exports = Exports(data / "exports", env=QUIET_ENV)
        self.worker = (Worker(self.db, self.files, data / "jobs", max_jobs=worker_jobs, job_env=self.job_env,
                              nproc=state.settings.job_processes)
                       if worker_jobs else None)
        self._stop = threading.Event()
        self.estimates: set[threading.Event] = set()  # the rehearsals under way: stopped with the server
        self._failed: set[str] = set()  # models that would not load: said once, not retried every tick
        self._thread = threading.Thread(target=self._sync_forever, name="tunelab-models", daemon=True)

    def job_env(self, job: Any) -> dict[str, str]:
        """A job's grader models are this server's own models, reached with a key of the job's project."""
        url = self.state.settings.url
        if not url or os.environ.get(BASE_URL_ENV):
            return {}
        keys = [k for k, project in self.state.settings.projects().items() if project == job.project]
        return {BASE_URL_ENV: url.rstrip("/") + "/v1", API_KEY_ENV: keys[0] if keys else "none"}

    def start(self) -> None:
        if self.worker is not None:
            self.worker.start()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        for cancel in list(self.estimates):
            cancel.set()
        self.exports.stop()
        if self.worker is not None:
            self.worker.stop()
        self._thread.join(timeout=10)

    def _sync_forever(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync()
            except Exception:  # the database away for a moment: try again next tick
                log.exception("model sync")
            self._stop.wait(SYNC_S)

    def sync(self) -> None:
        served = {m.name: m for m in self.service.served()}
        for name, m in served.items():
            if name not in self.state.engine.adapters and name not in self._failed:
                try:
                    self.state.add_adapter(name, str(m.run_dir), owner=m.project)
                except APIError as exc:
                    self._failed.add(name)
                    log.error("fine-tuned model %s could not be loaded: %s", name, exc.message)
        for name in [n for n in self.state.owners if n.split(CKPT, 1)[0] not in served]:
            self.state.remove_adapter(name)  # deleted: the model and its checkpoints go


def _uses_python(grader: Any) -> bool:
    """Whether a grader object is, or contains, a python grader."""
    if isinstance(grader, dict):
        return grader.get("type") == "python" or any(_uses_python(v) for v in grader.values())
    if isinstance(grader, list):
        return any(_uses_python(v) for v in grader)
    return False


def add_jobs_routes(app: FastAPI, state: State, auth: Any) -> None:
    jobs: JobsRuntime = state.jobs
    service, files = jobs.service, jobs.files

    @app.exception_handler(JobsError)
    async def jobs_error(request: Request, exc: JobsError) -> JSONResponse:
        kind = "server_error" if exc.status >= 500 else "invalid_request_error"
        err = APIError(exc.status, exc.message, type=kind, param=exc.param, code=exc.code)
        return JSONResponse(err.body(), status_code=exc.status)

    # --- files ----------------------------------------------------------------------------------

    @app.post("/v1/files")
    async def upload(file: UploadFile = File(...), purpose: str = Form(...), project: str = auth) -> Any:
        row = await asyncio.to_thread(files.add, project, file.filename or "upload", purpose, file.file)
        return file_object(row)

    @app.get("/v1/files")
    async def list_files(purpose: str | None = None, limit: int = 10000, after: str | None = None,
                         order: str = "desc", project: str = auth) -> Any:
        rows, more = files.list(project, purpose=purpose, limit=limit, after=after, order=order)
        return {"object": "list", "data": [file_object(r) for r in rows], "has_more": more,
                "first_id": rows[0].id if rows else None, "last_id": rows[-1].id if rows else None}

    @app.get("/v1/files/{file_id}")
    async def get_file(file_id: str, project: str = auth) -> Any:
        return file_object(files.get(project, file_id))

    @app.get("/v1/files/{file_id}/content")
    async def file_content(file_id: str, project: str = auth) -> Any:
        row = files.get(project, file_id)
        return FileResponse(row.path, media_type="application/octet-stream")

    @app.delete("/v1/files/{file_id}")
    async def delete_file(file_id: str, project: str = auth) -> Any:
        await asyncio.to_thread(files.delete, project, file_id)
        return {"id": file_id, "object": "file", "deleted": True}

    @app.post("/v1/files/{file_id}/check")
    async def check_file(file_id: str, body: FileCheck | None = None, project: str = auth) -> Any:
        """tunelab's data check of an uploaded file (what `tunelab data check --json` prints), every place named
        by the file's own name: the format, rows, bad rows with their lines, token lengths, time per epoch."""
        row = files.get(project, file_id)
        body = body or FileCheck()

        def run() -> dict[str, Any]:
            from ..data.check import check
            from ..errors import TunelabError

            try:
                rep = check(row.path, fmt=body.format, model=state.base_ref, max_length=body.max_length)
            except (TunelabError, ValueError) as exc:  # unreadable as any format: said as a check that failed
                return {"ok": False, "rows": 0, "errors": [{"where": row.filename, "message": str(exc),
                                                           "severity": "error", "field": None}], "warnings": []}
            return rep.to_dict()

        report = await asyncio.to_thread(run)
        text = json.dumps(report, default=str).replace(json.dumps(str(row.path))[1:-1], json.dumps(row.filename)[1:-1])
        return {"object": "file.check", "file_id": file_id, "filename": row.filename} | json.loads(text)

    estimating = asyncio.Lock()  # one rehearsal at a time: each takes the cores for its few seconds

    @app.post("/v1/files/{file_id}/estimate")
    async def estimate_file(request: Request, file_id: str, project: str = auth) -> Any:
        """What training on an uploaded file takes on this server: the config `tunelab init` would choose for it
        (task, method, length, labels), rehearsed for a few real steps and scaled to the whole run. A client that
        goes away (a page left) stops its rehearsal: it would only slow the jobs training beside it."""
        from ..plan.estimate import CANCEL, EstimateCancelled

        row = files.get(project, file_id)

        def run() -> dict[str, Any]:
            from ..errors import TunelabError
            from ..plan.estimate import describe
            from ..plan.init import estimate_file as measure

            try:
                est = measure(str(row.path), state.base_ref)
            except (TunelabError, ValueError) as exc:
                raise JobsError(400, str(exc).replace(str(row.path), row.filename), param="file_id",
                                code="invalid_file") from None
            return {k: v for k, v in est.to_dict().items() if k != "ladder"} | {"lines": describe(est)}

        cancel = threading.Event()
        jobs.estimates.add(cancel)
        try:
            async with estimating:
                token = CANCEL.set(cancel)
                task = asyncio.ensure_future(asyncio.to_thread(run))  # the thread gets CANCEL's value
                CANCEL.reset(token)
                while not task.done():
                    await asyncio.wait({task}, timeout=0.5)
                    if not task.done() and await request.is_disconnected():
                        cancel.set()
                try:
                    result = task.result()
                except EstimateCancelled:
                    raise JobsError(499, "the estimate was stopped: its client went away or the server is "
                                    "stopping", param="file_id", code="cancelled") from None
        finally:
            jobs.estimates.discard(cancel)
        return {"object": "file.estimate", "file_id": file_id, "filename": row.filename} | result

    # --- jobs -----------------------------------------------------------------------------------

    def base_for(project: str, model: str) -> str:
        """The model reference a job trains from: the server's base, or a model the project tuned before."""
        if model == state.base.name:
            return state.base_ref or model
        job = service.job_of_model(project, model)
        if job is not None and job.status == "succeeded" and CKPT not in model and job.run_dir:
            return job.run_dir
        raise JobsError(400, f"model {model!r} can't be fine-tuned on this server: use {state.base.name!r} (the "
                        "model it serves) or one of your own fine-tuned models", param="model",
                        code="model_not_available")

    @app.post("/v1/fine_tuning/jobs")
    async def create_job(body: JobCreate, project: str = auth) -> Any:
        reinforcement = body.method.reinforcement if body.method else None
        if reinforcement is not None and not state.settings.python_graders and _uses_python(reinforcement.grader):
            raise JobsError(400, "python graders are switched off on this server (--no-python-graders)",
                            param="method.reinforcement.grader")
        row = await asyncio.to_thread(service.create, project, body, base_for(project, body.model))
        return job_object(row)

    @app.get("/v1/fine_tuning/jobs")
    async def list_jobs(request: Request, after: str | None = None, limit: int = 20, project: str = auth) -> Any:
        wanted = {k[len("metadata["):-1]: v for k, v in request.query_params.items()
                  if k.startswith("metadata[") and k.endswith("]")}
        rows, more = service.list(project, after=after, limit=limit, metadata=wanted)
        return {"object": "list", "data": [job_object(r) for r in rows], "has_more": more}

    @app.get("/v1/fine_tuning/jobs/{job_id}")
    async def get_job(job_id: str, project: str = auth) -> Any:
        return job_object(service.get(project, job_id))

    @app.post("/v1/fine_tuning/jobs/{job_id}/cancel")
    async def cancel_job(job_id: str, project: str = auth) -> Any:
        return job_object(service.cancel(project, job_id))

    @app.post("/v1/fine_tuning/jobs/{job_id}/pause")
    async def pause_job(job_id: str, project: str = auth) -> Any:
        return job_object(service.pause(project, job_id))

    @app.post("/v1/fine_tuning/jobs/{job_id}/resume")
    async def resume_job(job_id: str, project: str = auth) -> Any:
        return job_object(service.resume(project, job_id))

    @app.get("/v1/fine_tuning/jobs/{job_id}/events")
    async def job_events(job_id: str, after: str | None = None, limit: int = 20, project: str = auth) -> Any:
        rows, more = service.events(project, job_id, after=after, limit=limit)
        return {"object": "list", "data": [event_object(r) for r in rows], "has_more": more}

    @app.get("/v1/fine_tuning/jobs/{job_id}/checkpoints")
    async def job_checkpoints(job_id: str, after: str | None = None, limit: int = 10, project: str = auth) -> Any:
        job = service.get(project, job_id)
        rows, more = service.checkpoints(project, job_id, after=after, limit=limit)
        data = [checkpoint_object(r, job) for r in rows]
        return {"object": "list", "data": data, "has_more": more, "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None}

    @app.get("/v1/fine_tuning/jobs/{job_id}/report")
    async def job_report(job_id: str, project: str = auth) -> Any:
        job = service.get(project, job_id)
        page = RunDir(Path(job.run_dir or "")).report_html
        if not page.is_file():
            raise JobsError(404, f"the job's report is written when its training completes (status {job.status})",
                            param="fine_tuning_job_id", code="not_found")
        return FileResponse(page, media_type="text/html")

    @app.get("/v1/fine_tuning/jobs/{job_id}/sweep/")
    async def job_sweep(job_id: str, project: str = auth) -> Any:
        """A sweep job's page: its trials, history and importances; each trial's report one link away."""
        return _sweep_page(service.get(project, job_id), None)

    @app.get("/v1/fine_tuning/jobs/{job_id}/sweep/{trial}/{name}")
    async def job_sweep_trial(job_id: str, trial: str, name: str, project: str = auth) -> Any:
        """A trial's report, where the sweep's page links it (trial-NNN/report.html)."""
        job = service.get(project, job_id)
        if name != layout.REPORT_HTML:
            raise JobsError(404, f"no {trial}/{name} in this sweep", param="trial", code="not_found")
        return _sweep_page(job, trial)

    def _sweep_page(job: Any, trial: str | None) -> FileResponse:
        page = service.sweep_page(job, trial)
        if page is None:
            raise JobsError(404, "not a sweep job" if job.sweep is None else f"no such page in this sweep (yet: "
                            f"status {job.status})", param="fine_tuning_job_id", code="not_found")
        return FileResponse(page, media_type="text/html")

    # --- graders: try one before a job --------------------------------------------------------

    def grader_of(body: dict[str, Any]) -> Any:
        from ..config import ConfigError
        from ..graders import validate

        if not isinstance(body.get("grader"), dict):
            raise JobsError(400, "grader: an object is required", param="grader")
        try:
            grader = validate(body["grader"])
        except ConfigError as exc:
            raise JobsError(400, str(exc), param="grader") from None
        if not state.settings.python_graders and _uses_python(body["grader"]):
            raise JobsError(400, "python graders are switched off on this server (--no-python-graders)",
                            param="grader")
        return grader

    @app.post("/v1/fine_tuning/alpha/graders/validate")
    async def validate_grader(body: dict[str, Any], project: str = auth) -> Any:
        grader_of(body)
        return {"grader": body["grader"]}

    @app.post("/v1/fine_tuning/alpha/graders/run")
    async def run_grader(body: dict[str, Any], project: str = auth) -> Any:
        from ..graders import grade, sample_from_text

        grader = grader_of(body)
        if not isinstance(body.get("model_sample"), str):
            raise JobsError(400, "model_sample: the model's answer, as a string, is required", param="model_sample")
        item = body.get("item") or {}
        if not isinstance(item, dict):
            raise JobsError(400, "item: an object is required", param="item")
        result = await asyncio.to_thread(grade, grader, sample_from_text(body["model_sample"]), item)
        return result.to_dict()

    @app.delete("/v1/models/{name:path}")
    async def delete_model(name: str, project: str = auth) -> Any:
        await asyncio.to_thread(service.delete_model, project, name)
        job = service.job_of_model(project, name)
        if job is not None:  # its downloads go with it
            await asyncio.to_thread(jobs.exports.remove, job.id)
        for loaded in [n for n in list(state.owners) if n.split(CKPT, 1)[0] == name]:
            state.remove_adapter(loaded)
        return {"id": name, "object": "model", "deleted": True}
