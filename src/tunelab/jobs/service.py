"""The fine-tuning jobs API's logic, apart from HTTP: create, list, read, cancel, pause, resume; events and
checkpoints; the fine-tuned models a project owns. Objects come back in OpenAI's shapes. Every read is by
project: another project's id is answered exactly as an id that does not exist."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from ..config import dump_config
from ..runs import RunDir
from .db import CheckpointRow, EventRow, JobRow, JobsDB, now
from .errors import JobsError, invalid, not_found
from .files import FileStore
from .ids import event_id, job_id
from .schemas import JobCreate
from .spec import build_config

log = logging.getLogger("tunelab.jobs")

FINISHED = ("succeeded", "failed", "cancelled")
JOB_CONFIG = "train.yaml"  # in the job's directory: the config its training runs with
SWEEP_DIR = "run-sweep"  # in the job's directory: a sweep job's trials and study (the config's name is "run")
CKPT = ":ckpt-step-"


def fine_tuned_name(base: str, project: str, suffix: str | None, jid: str) -> str:
    """OpenAI's layout: ft:<base>:<organisation>:<suffix>:<id>."""
    return f"ft:{base}:{project}:{suffix or ''}:{jid.removeprefix('ftjob-')}"


def add_event(db: JobsDB, jid: str, message: str, *, level: str = "info", kind: str = "message",
              data: dict[str, Any] | None = None, created_at: int | None = None) -> None:
    try:
        with db.session() as s:
            last = s.scalar(select(EventRow.seq).where(EventRow.job_id == jid).order_by(EventRow.seq.desc()).limit(1))
            s.add(EventRow(id=event_id(), job_id=jid, seq=(last or 0) + 1, created_at=created_at or now(),
                           level=level, type=kind, message=message, data=data))
    except IntegrityError:
        with db.sessions() as s:
            if s.get(JobRow, jid) is not None:
                raise
        # the job was deleted as it finished (DELETE /v1/fine_tuning/jobs/{id}): nothing to tell


def job_object(row: JobRow) -> dict[str, Any]:
    hp = ((row.method or {}).get((row.method or {}).get("type", "supervised")) or {}).get("hyperparameters") or {}
    return {
        "id": row.id, "object": "fine_tuning.job", "created_at": row.created_at, "error": row.error,
        "fine_tuned_model": row.fine_tuned_model if row.status == "succeeded" else None,
        "finished_at": row.finished_at, "model": row.model, "organization_id": row.project,
        "hyperparameters": {k: hp.get(k, "auto") for k in ("n_epochs", "batch_size", "learning_rate_multiplier")},
        "result_files": row.result_files or [], "seed": row.seed, "status": row.status,
        "trained_tokens": row.trained_tokens, "training_file": row.training_file,
        "validation_file": row.validation_file, "estimated_finish": row.estimated_finish if row.status == "running"
        else None, "integrations": [], "metadata": row.meta, "method": row.method, "user_provided_suffix": row.suffix,
        "tunelab": {"run_dir": row.run_dir, "report": f"/v1/fine_tuning/jobs/{row.id}/report"}
        | ({"sweep": row.sweep, "sweep_report": f"/v1/fine_tuning/jobs/{row.id}/sweep/"} if row.sweep is not None
           else {}),
    }


def event_object(row: EventRow) -> dict[str, Any]:
    return {"id": row.id, "object": "fine_tuning.job.event", "created_at": row.created_at, "level": row.level,
            "message": row.message, "data": row.data or {}, "type": row.type}


def checkpoint_object(row: CheckpointRow, job: JobRow) -> dict[str, Any]:
    return {"id": row.id, "object": "fine_tuning.job.checkpoint", "created_at": row.created_at,
            "fine_tuned_model_checkpoint": f"{job.fine_tuned_model}{CKPT}{row.step}",
            "fine_tuning_job_id": job.id, "metrics": row.metrics, "step_number": row.step}


def page(items: list[Any], ids: list[str], after: str | None, limit: int) -> tuple[list[Any], bool]:
    """OpenAI's cursor paging: the items after the one with id `after`, at most `limit`, and whether more."""
    if after is not None:
        start = ids.index(after) + 1 if after in ids else len(ids)
        items = items[start:]
    if not 1 <= limit <= 100:
        raise invalid("limit must be between 1 and 100", param="limit")
    return items[:limit], len(items) > limit


@dataclass
class Served:
    """A fine-tuned model a project owns: what the server loads under its name."""

    name: str
    project: str
    run_dir: Path
    created_at: int


class JobsService:
    def __init__(self, db: JobsDB, files: FileStore, root: Path) -> None:
        self.db, self.files, self.root = db, files, root

    # --- jobs --------------------------------------------------------------------------------------

    def job_dir(self, jid: str) -> Path:
        return self.root / jid

    def create(self, project: str, req: JobCreate, base: str) -> JobRow:
        """A new job, validating_files until a worker has checked its data. `base` is the model reference the
        request's model name stands for (the server's base, or a run the project tuned before)."""
        train = self.files.get(project, req.training_file, "training_file")
        val = self.files.get(project, req.validation_file, "validation_file") if req.validation_file else None
        jid = job_id()
        work = self.job_dir(jid)
        data = work / "data"
        seed = req.seed if req.seed is not None else secrets.randbelow(2**31 - 1)
        cfg, method = build_config(req, base=base, train=data / Path(train.path).name,
                                   validation=data / Path(val.path).name if val else None, workdir=work, seed=seed)
        for row in (train, val):
            if row is not None:
                _link_or_copy(Path(row.path), data / Path(row.path).name)
        cfg_text = dump_config(cfg)
        (work / JOB_CONFIG).write_text(cfg_text)
        job = JobRow(id=jid, project=project, status="validating_files", model=req.model, training_file=train.id,
                     validation_file=val.id if val else None, suffix=req.suffix, seed=seed, meta=req.metadata,
                     method=method, extension=req.tunelab.config if req.tunelab else None, config=cfg_text,
                     sweep=req.tunelab.sweep if req.tunelab else None,
                     created_at=now(), run_dir=str(work / "run"), attempts=0, resume=0, model_deleted=0)
        with self.db.session() as s:
            s.add(job)
        add_event(self.db, jid, f"Validating training file: {train.id}")
        return job

    def sweep_page(self, job: JobRow, trial: str | None = None) -> Path | None:
        """A sweep job's page (sweep.html), or one of its trials' reports (trial-NNN); None where there is none
        (yet)."""
        if job.sweep is None or (trial is not None and not (trial.startswith("trial-") and trial[6:].isdigit())):
            return None
        where = self.job_dir(job.id) / SWEEP_DIR
        page = RunDir(where / trial).report_html if trial else where / "sweep.html"
        return page if page.is_file() else None

    def get(self, project: str, jid: str) -> JobRow:
        with self.db.sessions() as s:
            row = s.get(JobRow, jid)
        if row is None or row.project != project:
            raise not_found("fine-tuning job", jid, "fine_tuning_job_id")
        return row

    def list(self, project: str, *, after: str | None = None, limit: int = 20,
             metadata: dict[str, str] | None = None) -> tuple[list[JobRow], bool]:
        with self.db.sessions() as s:
            rows = list(s.scalars(select(JobRow).where(JobRow.project == project)
                                  .order_by(JobRow.created_at.desc(), JobRow.id.desc())))
        if metadata:
            rows = [r for r in rows if all((r.meta or {}).get(k) == v for k, v in metadata.items())]
        return page(rows, [r.id for r in rows], after, limit)

    def _set(self, jid: str, **fields: Any) -> JobRow:
        with self.db.session() as s:
            row = s.get(JobRow, jid)
            assert row is not None
            for k, v in fields.items():
                setattr(row, k, v)
        return row

    def cancel(self, project: str, jid: str) -> JobRow:
        row = self.get(project, jid)
        if row.status in FINISHED:
            raise invalid(f"the job has already {'ended' if row.status != 'succeeded' else 'succeeded'} "
                          f"({row.status}): there is nothing to cancel", param="fine_tuning_job_id")
        with self.db.session() as s:  # only if no worker holds it: one may be claiming it right now
            done = s.execute(update(JobRow).where(JobRow.id == jid, JobRow.worker.is_(None),
                                                  JobRow.status.in_(("validating_files", "queued", "paused")))
                             .values(status="cancelled", finished_at=now(), requested=None)).rowcount
        if done:
            add_event(self.db, jid, "Job cancelled")
            return self.get(project, jid)
        with self.db.session() as s:  # a worker holds it, unless it finished a moment ago
            asked = s.execute(update(JobRow).where(JobRow.id == jid, JobRow.status.not_in(FINISHED))
                              .values(requested="cancel")).rowcount
        if not asked:
            return self.get(project, jid)
        add_event(self.db, jid, "Cancelling: the job stops after its current step")
        return self.get(project, jid)

    def pause(self, project: str, jid: str) -> JobRow:
        row = self.get(project, jid)
        if row.status != "running":
            raise invalid(f"only a running job can be paused; this one is {row.status}", param="fine_tuning_job_id")
        add_event(self.db, jid, "Pausing: a checkpoint is saved after the current step")
        return self._set(jid, requested="pause")

    def resume(self, project: str, jid: str) -> JobRow:
        row = self.get(project, jid)
        if row.status != "paused":
            raise invalid(f"only a paused job can be resumed; this one is {row.status}", param="fine_tuning_job_id")
        add_event(self.db, jid, "Resumed: queued to continue from its last checkpoint")
        return self._set(jid, status="queued", resume=1, requested=None)

    def events(self, project: str, jid: str, *, after: str | None = None,
               limit: int = 20) -> tuple[list[EventRow], bool]:
        self.get(project, jid)
        with self.db.sessions() as s:
            rows = list(s.scalars(select(EventRow).where(EventRow.job_id == jid).order_by(EventRow.seq.desc())))
        return page(rows, [r.id for r in rows], after, limit)

    def checkpoints(self, project: str, jid: str, *, after: str | None = None,
                    limit: int = 10) -> tuple[list[CheckpointRow], bool]:
        self.get(project, jid)
        with self.db.sessions() as s:
            rows = list(s.scalars(select(CheckpointRow).where(CheckpointRow.job_id == jid)
                                  .order_by(CheckpointRow.step.desc())))
        return page(rows, [r.id for r in rows], after, limit)

    # --- the models jobs made -----------------------------------------------------------------------

    def served(self) -> list[Served]:
        """Every fine-tuned model of a succeeded job that is not deleted, of every project."""
        with self.db.sessions() as s:
            rows = list(s.scalars(select(JobRow).where(JobRow.status == "succeeded", JobRow.model_deleted == 0)))
        return [Served(r.fine_tuned_model, r.project, Path(r.run_dir), r.finished_at or r.created_at)
                for r in rows if r.fine_tuned_model and r.run_dir]

    def job_of_model(self, project: str, name: str) -> JobRow | None:
        base = name.split(CKPT, 1)[0]
        with self.db.sessions() as s:
            row = s.scalar(select(JobRow).where(JobRow.fine_tuned_model == base, JobRow.model_deleted == 0))
        return row if row is not None and row.project == project else None

    def checkpoint_path(self, project: str, name: str) -> Path | None:
        """The adapter of `<fine_tuned_model>:ckpt-step-N`, when the project's job kept it."""
        if CKPT not in name:
            return None
        job = self.job_of_model(project, name)
        step = name.rsplit(CKPT, 1)[1]
        if job is None or not step.isdigit():
            return None
        with self.db.sessions() as s:
            row = s.scalar(select(CheckpointRow).where(CheckpointRow.job_id == job.id,
                                                       CheckpointRow.step == int(step)))
        return Path(row.path) if row is not None and row.path and Path(row.path).is_dir() else None

    def delete_model(self, project: str, name: str) -> None:
        job = self.job_of_model(project, name)
        if job is None or CKPT in name:
            raise not_found("model", name, "model")
        self._set(job.id, model_deleted=1)
        add_event(self.db, job.id, f"Model {name} deleted")

    def delete_job(self, project: str, jid: str) -> JobRow:
        """A finished job and what it made: its records (events, checkpoints, result files) and its directory (the
        data copy, run, checkpoints, sweep trials), which is first renamed away so that nothing half-deleted looks
        like a job. Refused while it may still run, and while another job continues from its model (that job's
        run is built on this one's)."""
        row = self.get(project, jid)
        if row.status not in FINISHED:
            raise JobsError(409, f"the job is {row.status}: cancel it first (POST /v1/fine_tuning/jobs/{jid}/cancel), "
                            "then delete it once it has stopped", param="fine_tuning_job_id", code="job_not_finished")
        with self.db.sessions() as s:
            child = s.scalar(select(JobRow.id).where(JobRow.project == project, JobRow.id != jid,
                                                     JobRow.model == row.fine_tuned_model).limit(1)) \
                if row.fine_tuned_model else None
        if child is not None:
            raise JobsError(409, f"job {child} continues from this job's model {row.fine_tuned_model}: delete that "
                            "job first", param="fine_tuning_job_id", code="model_in_use")
        # the directory first: if it can't be moved, the job and its records stay (nothing orphaned on disk)
        work, trash = self.job_dir(jid), self.job_dir(jid).with_name(f".deleting-{jid}")
        if work.exists():
            os.replace(work, trash)
        with self.db.session() as s:
            s.execute(delete(EventRow).where(EventRow.job_id == jid))
            s.execute(delete(CheckpointRow).where(CheckpointRow.job_id == jid))
            s.execute(delete(JobRow).where(JobRow.id == jid))
        for fid in row.result_files or []:
            with contextlib.suppress(JobsError):  # deleted by its owner already
                self.files.delete(project, fid)
        if trash.exists():
            shutil.rmtree(trash, onerror=lambda _f, path, exc: log.warning("deleting job %s: %s: %s", jid, path,
                                                                           exc[1]))
        return row


def _link_or_copy(src: Path, dest: Path) -> None:
    """The job keeps its own copy of its data (a hard link where the filesystem allows): deleting the upload
    later does not break a queued or resumed job."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)
