"""`tunelab jobs create|list|show|events|cancel|wait` against a tunelab server (or any OpenAI-compatible
fine-tuning API), and `tunelab worker`, which trains a server's queued jobs on this machine."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .common import console, out, user_errors

app = typer.Typer(help="Fine-tuning jobs on a tunelab server, as OpenAI's API runs them.", no_args_is_help=True)
URL_HELP = "The server: $TUNELAB_URL, else http://127.0.0.1:8000/v1."
KEY_HELP = "API key: $TUNELAB_API_KEY, else none."
FINISHED = ("succeeded", "failed", "cancelled")


def _client(url: str | None, key: str | None) -> Any:
    import openai

    return openai.OpenAI(base_url=url or os.environ.get("TUNELAB_URL", "http://127.0.0.1:8000/v1"),
                         api_key=key or os.environ.get("TUNELAB_API_KEY", "none"), max_retries=2)


def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """The API's own error message, not a traceback."""
    import openai

    try:
        return fn(*args, **kwargs)
    except openai.APIStatusError as exc:
        body = exc.body if isinstance(exc.body, dict) else {}
        message = (body.get("error") or body).get("message") if isinstance(body, dict) else None
        console.print(f"[red bold]error:[/] {exc.status_code}: {message or exc.message}", highlight=False)
        raise typer.Exit(2) from None
    except openai.APIConnectionError as exc:
        console.print(f"[red bold]error:[/] can't reach the server ({exc}); start one with `tunelab serve`",
                      highlight=False)
        raise typer.Exit(2) from None


def _show(job: Any) -> None:
    t = Table(show_header=False)
    for key in ("id", "status", "model", "fine_tuned_model", "training_file", "validation_file", "trained_tokens",
                "created_at", "finished_at"):
        value = getattr(job, key, None)
        if value is not None:
            t.add_row(key, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value)) if key.endswith("_at")
                      else str(value))
    if job.error and getattr(job.error, "message", None):
        t.add_row("error", f"[red]{job.error.message}[/]")
    report = (getattr(job, "model_extra", None) or {}).get("tunelab", {}).get("report")
    if report:
        t.add_row("report", report)
    console.print(t)


@app.command("create")
def create_cmd(
    training_file: Path = typer.Argument(..., help="Training data to upload (or an uploaded file's id: file-...)."),
    model: str = typer.Option(..., "--model", "-m", help="The model to tune, as the server names it."),
    method: str = typer.Option("supervised", "--method", help="supervised | dpo (reinforcement: use the API)."),
    validation_file: Path | None = typer.Option(None, "--validation-file", help="Validation data (or its id)."),
    suffix: str | None = typer.Option(None, "--suffix", help="Part of the fine-tuned model's name."),
    epochs: int | None = typer.Option(None, "--epochs", help="n_epochs (default auto)."),
    set_: list[str] = typer.Option([], "--set", help="A tunelab config key=value for the job, e.g. peft.r=32."),
    sweep_trials: int | None = typer.Option(None, "--sweep-trials", help="Make it a sweep of this many trials "
                                            "(the best trial's model is the job's)."),
    sweep_minutes: float | None = typer.Option(None, "--sweep-minutes", help="Make it a sweep with this time "
                                               "budget (with --sweep-trials: whichever ends first)."),
    wait: bool = typer.Option(False, "--wait", help="Follow the job until it ends."),
    url: str | None = typer.Option(None, "--url", help=URL_HELP),
    key: str | None = typer.Option(None, "--key", help=KEY_HELP),
) -> None:
    """Upload the data and start a fine-tuning job; prints its id."""
    import yaml

    c = _client(url, key)

    def file_id(p: Path) -> str:
        if str(p).startswith("file-") and not p.exists():
            return str(p)
        with user_errors():
            if not p.is_file():
                raise FileNotFoundError(f"{p}: no such file")
        with p.open("rb") as f:
            return _call(c.files.create, file=f, purpose="fine-tune").id

    config: dict[str, Any] = {}
    for item in set_:
        k, sep, v = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"{item!r}: expected key=value", param_hint="--set")
        config[k.strip()] = yaml.safe_load(v)
    hp = {"n_epochs": epochs} if epochs else {}
    ext: dict[str, Any] = {"config": config} if config else {}
    if sweep_trials is not None or sweep_minutes is not None:
        ext["sweep"] = {"trials": sweep_trials, "minutes": sweep_minutes}
    job = _call(c.fine_tuning.jobs.create, model=model, training_file=file_id(training_file),
                validation_file=file_id(validation_file) if validation_file else None, suffix=suffix,
                method={"type": method, method: {"hyperparameters": hp}},
                extra_body={"tunelab": ext} if ext else None)
    out.print(job.id, highlight=False)
    if wait:
        _follow(c, job.id)


@app.command("list")
def list_cmd(limit: int = typer.Option(20, "--limit"), url: str | None = typer.Option(None, "--url", help=URL_HELP),
             key: str | None = typer.Option(None, "--key", help=KEY_HELP)) -> None:
    """The jobs of your project, newest first."""
    jobs = _call(_client(url, key).fine_tuning.jobs.list, limit=limit).data
    t = Table("id", "status", "model", "fine-tuned model", "created")
    for j in jobs:
        t.add_row(j.id, j.status, j.model, j.fine_tuned_model or "",
                  time.strftime("%Y-%m-%d %H:%M", time.localtime(j.created_at)))
    console.print(t)


@app.command("show")
def show_cmd(job_id: str, as_json: bool = typer.Option(False, "--json"),
             url: str | None = typer.Option(None, "--url", help=URL_HELP),
             key: str | None = typer.Option(None, "--key", help=KEY_HELP)) -> None:
    """One job: status, model, files, error, report."""
    job = _call(_client(url, key).fine_tuning.jobs.retrieve, job_id)
    if as_json:
        out.print_json(job.model_dump_json())
    else:
        _show(job)


@app.command("events")
def events_cmd(job_id: str, limit: int = typer.Option(50, "--limit"),
               url: str | None = typer.Option(None, "--url", help=URL_HELP),
               key: str | None = typer.Option(None, "--key", help=KEY_HELP)) -> None:
    """A job's events, oldest first."""
    for e in reversed(_call(_client(url, key).fine_tuning.jobs.list_events, job_id, limit=limit).data):
        _print_event(e)


@app.command("cancel")
def cancel_cmd(job_id: str, url: str | None = typer.Option(None, "--url", help=URL_HELP),
               key: str | None = typer.Option(None, "--key", help=KEY_HELP)) -> None:
    """Cancel a job (a running one stops after its current step)."""
    job = _call(_client(url, key).fine_tuning.jobs.cancel, job_id)
    console.print(f"{job.id}: {job.status}")


@app.command("wait")
def wait_cmd(job_id: str, url: str | None = typer.Option(None, "--url", help=URL_HELP),
             key: str | None = typer.Option(None, "--key", help=KEY_HELP)) -> None:
    """Follow a job until it ends: its events and a progress bar. Exit 1 unless it succeeds."""
    _follow(_client(url, key), job_id)


def _print_event(e: Any) -> None:
    colour = {"warn": "yellow", "error": "red"}.get(e.level, "dim")
    console.print(f"[{colour}]{time.strftime('%H:%M:%S', time.localtime(e.created_at))}[/] {e.message}",
                  highlight=False)


def _follow(c: Any, job_id: str) -> None:
    seen: set[str] = set()
    with Progress(TextColumn("[bold]{task.fields[status]}"), BarColumn(), TextColumn("step {task.completed}/"
                  "{task.total}"), TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), console=console,
                  transient=True) as bar:
        task = bar.add_task("job", total=None, status="validating", loss="–")
        while True:
            job = _call(c.fine_tuning.jobs.retrieve, job_id)
            events = _call(c.fine_tuning.jobs.list_events, job_id, limit=100).data
            for e in reversed(events):
                if e.id in seen:
                    continue
                seen.add(e.id)
                data = e.data if isinstance(e.data, dict) else {}
                if e.type == "metrics":
                    bar.update(task, completed=data.get("step") or 0, total=data.get("total_steps"),
                               loss=f"{data['train_loss']:.4f}" if isinstance(data.get("train_loss"), float)
                               else bar.tasks[0].fields["loss"])
                else:
                    bar.console.print(f"[dim]{time.strftime('%H:%M:%S', time.localtime(e.created_at))}[/] "
                                      f"{e.message}", highlight=False)
            bar.update(task, status=job.status)
            if job.status in FINISHED:
                break
            time.sleep(1.0)
    _show(job)
    if job.status != "succeeded":
        raise typer.Exit(1)


def worker_cmd(
    db: str = typer.Option(..., "--db", help="The server's jobs database URL, e.g. postgresql://user@host/db."),
    data: Path = typer.Option(..., "--data", help="Where jobs keep their data and runs: the server's data "
                              "directory, shared with it (e.g. over NFS)."),
    jobs: int = typer.Option(1, "--jobs", min=1, help="Jobs trained at once on this machine."),
    nproc: int = typer.Option(1, "--nproc", min=1, help="Training processes each job runs in on this machine "
                              "(data-parallel, as `tunelab train --nproc`)."),
) -> None:
    """Train queued jobs on this machine, claiming them from the server's database; Ctrl-C stops after saving."""
    from ..jobs.db import JobsDB
    from ..jobs.files import FileStore
    from ..jobs.worker import Worker

    with user_errors():
        try:
            store = JobsDB(db)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--db") from None
        worker = Worker(store, FileStore(store, data / "files", 1 << 40), data / "jobs", max_jobs=jobs, nproc=nproc)
    each = f", {nproc} processes each" if nproc > 1 else ""
    console.print(f"[bold]tunelab worker[/] {worker.identity}: up to {jobs} job(s) at once{each} from {db}")
    # Ctrl-C and SIGTERM (a service manager's stop) both stop after saving, even where the worker was started
    # with SIGINT ignored (a background job of a non-interactive shell, nohup)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        worker.run_forever()
    except KeyboardInterrupt:
        console.print("stopping: running jobs save a checkpoint and go back to the queue")
        worker.stop()
    out.print(json.dumps({"worker": worker.identity, "stopped": True}))
