"""The web UI: server-rendered pages whose scripts call the same /v1 API a script would (the UI has no logic the
API lacks). Sign-in turns an API key into a cookie; every page shows only the signed-in project's things."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from fastapi import FastAPI, Form, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from ...jobs.errors import JobsError
from ...runs import RunDir, layout
from ..exports import FORMATS, zip_response
from ..state import DEFAULT_PROJECT, State
from ..watch_api import export_download
from .session import COOKIE, Sessions
from .settings import advanced_settings

HERE = Path(__file__).parent
TASKS = [  # what to teach: (value, plain words, what the rows look like); app.js maps each to a job's method
    ("answer", "Answer questions in your domain", "Chat rows: the model learns to give answers like yours."),
    ("classify", "Sort messages into categories", "Rows with a text and a label: the model learns to pick the label."),
    ("prefer", "Prefer better answers", "Pairs of a better and a worse answer to the same prompt (DPO)."),
    ("grader", "Learn from a grader", "Prompts and a grader that scores each answer (reinforcement, GRPO)."),
]


class SignInRequired(Exception):
    pass


def add_ui_routes(app: FastAPI, state: State, sessions: Sessions) -> None:
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.globals["tasks"] = TASKS
    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="ui-static")
    open_server = not sessions.tokens

    def project_of(request: Request) -> str:
        if open_server:
            return DEFAULT_PROJECT
        project = sessions.project(request.cookies.get(COOKIE))
        if project is None:
            raise SignInRequired
        return project

    @app.exception_handler(SignInRequired)
    async def to_sign_in(request: Request, exc: SignInRequired) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/sign-in?next={quote(target)}", status_code=303)

    def page(request: Request, name: str, title: str, status: int = 200, **context: Any) -> HTMLResponse:
        project = context.pop("project", None)
        return templates.TemplateResponse(request, name, {
            "title": title, "project": project, "open_server": open_server, "jobs_on": state.jobs is not None,
            "base_model": state.base.name, **context}, status_code=status)

    def not_found(request: Request, project: str, what: str) -> HTMLResponse:
        return page(request, "not_found.html", "Not found", status=404, project=project, what=what)

    @app.get("/sign-in", response_class=HTMLResponse, include_in_schema=False)
    async def sign_in_page(request: Request, next: str = "/") -> Response:
        if open_server:
            return RedirectResponse(_safe_next(next), status_code=303)
        return page(request, "sign_in.html", "Sign in", next=_safe_next(next), error=None)

    @app.post("/sign-in", include_in_schema=False)
    async def sign_in(request: Request, key: str = Form(""), next: str = Form("/")) -> Response:
        origin = request.headers.get("origin")
        if origin and urlsplit(origin).netloc != request.url.netloc:  # another site signing the browser in
            return page(request, "sign_in.html", "Sign in", status=403, next="/",
                        error="This sign-in came from another site and was refused. Sign in here instead.")
        token = sessions.token(key.strip())
        if sessions.project(token) is None:
            return page(request, "sign_in.html", "Sign in", status=401, next=_safe_next(next),
                        error="That key is not one of this server's keys. Check it and try again.")
        response = RedirectResponse(_safe_next(next), status_code=303)
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict", max_age=30 * 24 * 3600,
                            secure=request.url.scheme == "https")
        return response

    @app.get("/sign-out", include_in_schema=False)
    async def sign_out() -> Response:
        response = RedirectResponse("/sign-in", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def home(request: Request) -> Response:
        return page(request, "home.html", "Your models", project=project_of(request))

    @app.get("/data", response_class=HTMLResponse, include_in_schema=False)
    async def data(request: Request) -> Response:
        return page(request, "data.html", "1. Your data", project=project_of(request))

    @app.get("/jobs/new", response_class=HTMLResponse, include_in_schema=False)
    async def new_job(request: Request, file: str = "", task: str = "answer") -> Response:
        return page(request, "new_job.html", "2. New fine-tuning job", project=project_of(request),
                    file_id=file, task=task, advanced=advanced_settings())

    def job_or_404(request: Request, job_id: str) -> tuple[str, Any]:
        project = project_of(request)
        try:
            return project, state.jobs.service.get(project, job_id)
        except JobsError:  # 404: another project's job answers exactly as one that does not exist
            return project, None

    @app.get("/jobs/{job_id}", response_class=HTMLResponse, include_in_schema=False)
    async def job(request: Request, job_id: str) -> Response:
        project, row = job_or_404(request, job_id)
        if row is None:
            return not_found(request, project, f"fine-tuning job {job_id}")
        return page(request, "job.html", f"3. Training {job_id}", project=project, job_id=job_id)

    @app.get("/jobs/{job_id}/result", response_class=HTMLResponse, include_in_schema=False)
    async def result(request: Request, job_id: str) -> Response:
        project, row = job_or_404(request, job_id)
        if row is None:
            return not_found(request, project, f"fine-tuning job {job_id}")
        return page(request, "result.html", f"4. Result of {job_id}", project=project, job_id=job_id,
                    model=row.fine_tuned_model, base=state.base.name)

    @app.get("/jobs/{job_id}/report", include_in_schema=False)
    async def report(request: Request, job_id: str) -> Response:
        project, row = job_or_404(request, job_id)
        path = RunDir(Path(row.run_dir)).report_html if row is not None and row.run_dir else None
        if path is None or not path.is_file():
            return not_found(request, project, f"the report of {job_id}")
        return FileResponse(path, media_type="text/html")

    @app.get("/jobs/{job_id}/sweep/", include_in_schema=False)
    @app.get("/jobs/{job_id}/sweep/{trial}/{name}", include_in_schema=False)
    async def sweep(request: Request, job_id: str, trial: str | None = None, name: str | None = None) -> Response:
        """A sweep job's page, and its trials' reports where it links them (trial-NNN/report.html)."""
        project, row = job_or_404(request, job_id)
        wanted = row is not None and (trial is None or name == layout.REPORT_HTML)
        path = state.jobs.service.sweep_page(row, trial) if wanted else None
        if path is None:
            return not_found(request, project, f"the sweep page of {job_id}")
        return FileResponse(path, media_type="text/html")

    @app.get("/jobs/{job_id}/model", response_class=HTMLResponse, include_in_schema=False)
    async def model(request: Request, job_id: str) -> Response:
        project, row = job_or_404(request, job_id)
        if row is None or not row.fine_tuned_model or row.model_deleted:
            return not_found(request, project, f"tuned model of job {job_id}")
        return page(request, "model.html", f"{row.fine_tuned_model}", project=project, job_id=job_id,
                    model=row.fine_tuned_model, url=str(request.base_url).rstrip("/"), run_dir=row.run_dir,
                    logs_content=state.settings.log_content)

    @app.get("/jobs/{job_id}/download/adapter", include_in_schema=False)
    async def download_adapter(request: Request, job_id: str) -> Response:
        project, row = job_or_404(request, job_id)
        adapter = RunDir(Path(row.run_dir)).adapter if row is not None and row.run_dir and not row.model_deleted \
            else None
        if adapter is None or not adapter.is_dir():
            return not_found(request, project, f"adapter of job {job_id}")
        name = (row.fine_tuned_model or job_id).replace(":", "_")
        return zip_response(adapter, name)

    @app.get("/jobs/{job_id}/download/{fmt}", include_in_schema=False)
    async def download_export(request: Request, job_id: str, fmt: str) -> Response:
        project, row = job_or_404(request, job_id)
        if row is None or not row.fine_tuned_model or row.model_deleted or fmt not in FORMATS:
            return not_found(request, project, f"{fmt} export of job {job_id}")
        if not state.jobs.exports.folder(job_id, fmt).is_dir():
            return not_found(request, project, f"finished {fmt} export of job {job_id}")
        return export_download(state, job_id, fmt, row.fine_tuned_model)


def _safe_next(target: str) -> str:
    """Only a path on this server: never an open redirect to another site."""
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/"
