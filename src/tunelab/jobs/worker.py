"""The worker: claims jobs from the database and runs each in a process of its own, so that a crash or an
out-of-memory in training never takes the server (or the worker) down.

A job validating_files is checked (`python -m tunelab.jobs.check`), then queued; a queued job is trained
(`tunelab train CONFIG [--resume]`) while the worker copies the run's events, metrics and checkpoints into the
database and acts on cancel and pause. Claims are compare-and-set updates (`... WHERE status = 'queued' AND
worker IS NULL`), which PostgreSQL's row locks make exclusive: two workers never run one job. A job whose
worker died (its process gone, or no heartbeat for STALE_S) is queued again to continue from its last
checkpoint, at most MAX_ATTEMPTS times.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from .. import distributed
from ..runs import RunDir, layout, observe
from .db import CheckpointRow, FileRow, JobRow, JobsDB, now
from .files import FileStore
from .ids import checkpoint_id
from .service import JOB_CONFIG, SWEEP_DIR, add_event, fine_tuned_name

log = logging.getLogger("tunelab.jobs")
HEARTBEAT_S = 2.0
TASK_METRICS = ("accuracy", "token_f1", "rouge_l", "exact_match", "numeric_accuracy", "reward_accuracy")
TAIL_S = 0.25  # how often a running job's files are looked at (a stat each; read only when changed)
STALE_S = 60.0  # no heartbeat for this long: the worker is taken for dead (another machine's worker)
MAX_ATTEMPTS = 3
CANCEL_GRACE_S = 10.0  # after Ctrl-C the run finishes its step and saves; past this it is killed
QUIET_ENV = {"TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
             "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}


def die_with_parent() -> None:
    """In the job's process before it starts. Linux: the job's process is killed when its worker dies (kill -9
    included), so that a job taken over by another worker never has two processes training it."""
    distributed.end_with_parent()
    # cancel and pause are SIGINTs: never inherit an ignored SIGINT (a worker started in the background)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Worker:
    def __init__(self, db: JobsDB, files: FileStore, root: Path, *, max_jobs: int = 1, poll_s: float = 0.5,
                 env: dict[str, str] | None = None,
                 job_env: Callable[[JobRow], dict[str, str]] | None = None, nproc: int = 1) -> None:
        self.db, self.files, self.root = db, files, root
        self.max_jobs, self.poll_s = max_jobs, poll_s
        self.nproc = nproc  # training processes a job runs in (tunelab train --nproc)
        self.env = os.environ | QUIET_ENV | (env or {})
        self.job_env = job_env  # per job: e.g. where its graders reach the server's models, with its key
        self.identity = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.active: dict[str, threading.Thread] = {}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # --- life -------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run_forever, name="tunelab-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        """Stop claiming; running jobs get Ctrl-C (they save a checkpoint) and go back to the queue, to continue
        when a worker takes them again."""
        self._stop.set()
        with self._lock:
            procs = dict(self.procs)
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for thread in list(self.active.values()):
            thread.join(timeout)
        if self._thread is not None:
            self._thread.join(timeout)

    def run_forever(self) -> None:
        last_recovery = 0.0
        while not self._stop.is_set():
            try:
                if time.time() - last_recovery > 5:
                    self.recover()
                    last_recovery = time.time()
                self._reap()
                while len(self.active) < self.max_jobs and not self._stop.is_set():
                    job = self.claim()
                    if job is None:
                        break
                    thread = threading.Thread(target=self._supervise, args=(job,), name=f"job-{job.id}",
                                              daemon=True)
                    self.active[job.id] = thread
                    thread.start()
            except Exception:  # the database away for a moment must not end the worker
                log.exception("worker loop")
            self._stop.wait(self.poll_s)

    def _reap(self) -> None:
        for jid, thread in list(self.active.items()):
            if not thread.is_alive():
                del self.active[jid]

    # --- claiming and recovery ---------------------------------------------------------------------

    def claim(self) -> JobRow | None:
        for status in ("validating_files", "queued"):
            with self.db.sessions() as s:
                ids = list(s.scalars(select(JobRow.id).where(JobRow.status == status, JobRow.worker.is_(None))
                                     .order_by(JobRow.created_at).limit(8)))
            for jid in ids:
                new_status = "running" if status == "queued" else status
                with self.db.session() as s:
                    got = s.execute(update(JobRow).where(JobRow.id == jid, JobRow.status == status,
                                                         JobRow.worker.is_(None))
                                    .values(worker=self.identity, heartbeat=time.time(), status=new_status))
                if got.rowcount == 1:
                    with self.db.sessions() as s:
                        return s.get(JobRow, jid)
        return None

    def _dead(self, row: JobRow) -> bool:
        host, _, rest = (row.worker or "").partition(":")
        pid = rest.split(":", 1)[0]
        if row.worker == self.identity:
            return row.id not in self.active
        if host == socket.gethostname() and pid.isdigit() and not _pid_alive(int(pid)):
            return True
        return time.time() - (row.heartbeat or 0) > STALE_S

    def recover(self) -> None:
        """Jobs whose worker died: validation starts again; training continues from its last checkpoint."""
        with self.db.sessions() as s:
            rows = list(s.scalars(select(JobRow).where(JobRow.status.in_(("validating_files", "running")),
                                                       JobRow.worker.is_not(None))))
        for row in rows:
            if not self._dead(row):
                continue
            with self.db.session() as s:
                job = s.get(JobRow, row.id)
                if job is None or job.worker != row.worker:  # someone else got there first
                    continue
                job.worker = None
                if job.status == "running":
                    job.attempts += 1
                    if job.attempts >= MAX_ATTEMPTS:
                        job.status, job.finished_at = "failed", now()
                        job.error = {"code": "worker_lost", "param": None,
                                     "message": f"the job's worker stopped {job.attempts} times while training it"}
                    else:
                        job.status, job.resume = "queued", 1
            if row.status == "running":
                add_event(self.db, row.id, "The worker running this job stopped; the job continues from its last "
                          "checkpoint", level="warn")

    # --- one job ----------------------------------------------------------------------------------

    def _update(self, jid: str, **fields: Any) -> None:
        with self.db.session() as s:
            s.execute(update(JobRow).where(JobRow.id == jid, JobRow.worker == self.identity).values(**fields))

    def _row(self, jid: str) -> JobRow:
        with self.db.sessions() as s:
            row = s.get(JobRow, jid)
        assert row is not None
        return row

    def _supervise(self, job: JobRow) -> None:
        try:
            if job.status == "validating_files":
                self._validate(job)
            else:
                self._train(job)
        except Exception as exc:  # a bug here fails the job, never the worker
            log.exception("job %s", job.id)
            self._update(job.id, status="failed", finished_at=now(), worker=None,
                         error={"code": "internal_error", "message": f"{type(exc).__name__}: {exc}", "param": None})
            add_event(self.db, job.id, f"The job failed: {type(exc).__name__}: {exc}", level="error")

    def _spawn(self, job: JobRow, args: list[str], log_file: Path | None) -> subprocess.Popen[bytes]:
        jid = job.id
        out = log_file.open("ab") if log_file else subprocess.PIPE
        env = self.env | (self.job_env(job) if self.job_env else {})
        proc = subprocess.Popen([sys.executable, *args], cwd=self.root / jid, env=env, stdout=out,
                                stderr=subprocess.STDOUT if log_file else subprocess.PIPE, preexec_fn=die_with_parent)
        with self._lock:
            self.procs[jid] = proc
        return proc

    def _validate(self, job: JobRow) -> None:
        cfg = self.root / job.id / JOB_CONFIG
        proc = self._spawn(job, ["-m", "tunelab.jobs.check", str(cfg)], None)
        while proc.poll() is None:
            if self._row(job.id).requested == "cancel" or self._stop.is_set():
                proc.kill()
            self._update(job.id, heartbeat=time.time())
            time.sleep(0.2)
        stdout, stderr = proc.communicate()
        with self._lock:
            self.procs.pop(job.id, None)
        if self._row(job.id).requested == "cancel":
            self._update(job.id, status="cancelled", finished_at=now(), worker=None, requested=None)
            add_event(self.db, job.id, "Job cancelled")
            return
        if self._stop.is_set():
            self._update(job.id, worker=None)
            return
        lines = stdout.decode(errors="replace").strip().splitlines()
        try:
            result = json.loads(lines[-1]) if lines else {}
        except ValueError:
            result = {}
        if result.get("ok"):
            report = result.get("report") or {}
            rows = report.get("train_rows", report.get("train_pairs", report.get("train_prompts")))
            self._update(job.id, status="queued", worker=None)
            add_event(self.db, job.id, f"Files validated ({rows} training rows), moving job to queued state",
                      data={"report": report})
            est = result.get("estimate")
            if est:
                what = "Estimated on this server" + (", each trial" if job.sweep is not None else "")
                add_event(self.db, job.id, f"{what}: " + " ".join(est["lines"][1:3]),
                          data={"estimate": {k: est[k] for k in ("peak_memory_mib", "total_seconds", "fits",
                                                                 "limit_mib", "train", "phases")}})
            elif result.get("estimate_error"):
                add_event(self.db, job.id, f"No estimate: {result['estimate_error'][:500]}", level="warn")
            return
        kind = result.get("kind")
        message = self._readable(job, result.get("message") or _killed(proc.returncode, "files' check")
                                 or stderr.decode(errors="replace")[-2000:] or "the check stopped without a result")
        code = {"data": "invalid_training_file", "config": "invalid_request"}.get(kind or "", "invalid_job")
        self._update(job.id, status="failed", finished_at=now(), worker=None,
                     error={"code": code, "message": message[:8000], "param": "training_file" if kind == "data"
                            else None})
        add_event(self.db, job.id, f"Validation failed: {message[:2000]}", level="error")

    def _readable(self, job: JobRow, message: str) -> str:
        """Messages name the job's copy of a file: say the file id and the name it was uploaded under."""
        for fid in (job.training_file, job.validation_file):
            if not fid:
                continue
            with self.db.sessions() as s:
                row = s.get(FileRow, fid)
            if row is not None:
                copy = str(self.root / job.id / "data" / Path(row.path).name)
                message = message.replace(copy, f"{row.filename} ({fid})")
        return message

    def _train(self, job: JobRow) -> None:
        if job.sweep is not None:
            self._sweep(job)
            return
        work = self.root / job.id
        run = RunDir(Path(job.run_dir or work / "run"))
        seen = observe(run) if run.is_run() else None
        if seen is not None and seen.alive:  # an earlier attempt's process on this host: this worker owns it now
            pid = (run.progress() or {}).get("pid")
            if isinstance(pid, int):
                os.kill(pid, signal.SIGKILL)
        resume = bool(job.resume) or (seen is not None and seen.status not in (None, "completed"))
        args = ["-m", "tunelab.cli.main", "train", str(work / JOB_CONFIG)] + (["--resume"] if resume else [])
        # a checkpoint holds each process's place in the data: a resumed job goes on with as many as it had
        resolved = run.resolved() if resume and run.is_run() else {}
        nproc = int(resolved.get("processes", 1)) if resolved else self.nproc
        args += ["--nproc", str(nproc)] if nproc > 1 else []
        add_event(self.db, job.id, "Fine-tuning job started" if not resume else
                  "Fine-tuning job continues from its last checkpoint")
        asked, code = self._drive(job, args, work / "train.log", _Tail(self.db, job, run, work))
        self._finish(job, run, work, asked, code)

    def _sweep(self, job: JobRow) -> None:
        """A sweep job: `tunelab sweep` in the job's process; its study (SQLite in the job's directory) is where
        it resumes from, the interrupted trial running again. The best trial's run becomes the job's model."""
        work = self.root / job.id
        sweep = work / SWEEP_DIR
        add_event(self.db, job.id, "Sweep started" if not job.resume and not sweep.is_dir() else
                  "Sweep continues: finished trials are kept, an interrupted one runs again")
        tail = _SweepTail(self.db, job, sweep, work)
        asked, code = self._drive(job, ["-m", "tunelab.cli.main", "sweep", str(work / JOB_CONFIG)],
                                  work / "train.log", tail)
        best = _best_trial(sweep)
        if code == 0 and best is not None:  # finished, also when a pause or stop came too late to stop it
            self._update(job.id, run_dir=best["run_dir"])
            job.run_dir = best["run_dir"]
            add_event(self.db, job.id, f"Best: trial {best['number']}, {best['objective']} {best['value']:.4f} "
                      f"with {best['shown']}; its model is the job's", data={"best": best})
        elif asked is None and code == 0:
            code = 1  # no trial finished: a failure, with the log's tail as its message
        self._finish(job, RunDir(Path(job.run_dir or work / "run")), work, asked, code, sweep=tail.trials)

    def _drive(self, job: JobRow, args: list[str], log_file: Path, tail: _Tail | _SweepTail) -> tuple[str | None, int]:
        """Run the job's process to its end, following its files and acting on cancel, pause and stop:
        (what was asked of it, its exit code)."""
        proc = self._spawn(job, args, log_file)
        asked: str | None = None
        signalled_at = 0.0
        last_beat = 0.0
        while proc.poll() is None:
            time.sleep(TAIL_S)  # cheap when nothing changed (stat calls), so a logged step reaches the job soon
            tail.forward()
            if time.time() - last_beat > HEARTBEAT_S:
                last_beat = time.time()
                row = self._row(job.id)
                self._update(job.id, heartbeat=time.time(), estimated_finish=tail.estimated_finish())
                wanted = row.requested or ("stop" if self._stop.is_set() else None)
                if wanted and not asked:
                    asked, signalled_at = wanted, time.time()
                    proc.send_signal(signal.SIGINT)  # the run finishes its step and saves a checkpoint
            if asked == "cancel" and time.time() - signalled_at > CANCEL_GRACE_S:
                proc.kill()
        with self._lock:
            self.procs.pop(job.id, None)
        tail.forward()
        return asked, proc.returncode

    def _finish(self, job: JobRow, run: RunDir, work: Path, asked: str | None, code: int,
                sweep: list[RunDir] | None = None) -> None:
        if asked in ("pause", "stop") and self._row(job.id).requested == "cancel":
            asked = "cancel"  # cancelled while pausing: the cancel is what the user asked last
        status = run.status() if run.is_run() else None
        if sweep is not None:  # a sweep: done when the process says so; stopped part way is "interrupted"
            status = "completed" if code == 0 and status == "completed" else "interrupted" if asked else None
        if asked == "cancel":
            self._update(job.id, status="cancelled", finished_at=now(), worker=None, requested=None)
            add_event(self.db, job.id, "Job cancelled; what it wrote is kept")
        elif status == "completed":
            summary = run.summary()
            tokens = sum(int(r.summary().get("tokens_seen") or 0) for r in sweep) if sweep else summary.get(
                "tokens_seen")  # a sweep trained every trial's tokens (those stopped early too)
            name = fine_tuned_name(job.model, job.project, job.suffix, job.id)
            results = self._results(job, run, work)
            self._update(job.id, status="succeeded", finished_at=now(), worker=None, fine_tuned_model=name,
                         trained_tokens=tokens, result_files=results, estimated_finish=None,
                         method=_resolved_method(job, run))
            add_event(self.db, job.id, f"New fine-tuned model created: {name}")
            add_event(self.db, job.id, "The job has successfully completed")
        elif status == "interrupted" and asked in ("pause", "stop"):
            state = "paused" if asked == "pause" else "queued"
            self._update(job.id, status=state, worker=None, requested=None, resume=1)
            add_event(self.db, job.id, "Job paused; resume it to continue from its last checkpoint" if state ==
                      "paused" else "The worker stopped; the job continues from its last checkpoint when a worker "
                      "takes it again")
        else:
            error = run.summary().get("error") if status and sweep is None else None
            message = error or _killed(code, "training", self.db, job.id) or _log_tail(work / "train.log") or \
                f"training stopped with exit code {code}"
            self._update(job.id, status="failed", finished_at=now(), worker=None, requested=None,
                         error={"code": "training_failed", "message": self._readable(job, message)[:8000],
                                "param": None})
            add_event(self.db, job.id, f"The job failed: {self._readable(job, message)[:2000]}", level="error")

    def _results(self, job: JobRow, run: RunDir, work: Path) -> list[str]:
        """step_metrics.csv, as OpenAI's result file: one row per logged step."""
        rows = [r for r in run.metrics().rows if "loss" in r or "eval_loss" in r]
        path = work / "step_metrics.csv"
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["step", "train_loss", "valid_loss", "learning_rate", "tokens_per_s"])
            for r in rows:
                w.writerow([r.get("step"), r.get("loss", ""), r.get("eval_loss", ""), r.get("learning_rate", ""),
                            r.get("tokens_per_s", "")])
        return [self.files.record(job.project, "step_metrics.csv", "fine-tune-results", path).id]


def _resolved_method(job: JobRow, run: RunDir) -> dict[str, Any]:
    """The job's method with its `auto` hyperparameters as training resolved them."""
    method = json.loads(json.dumps(job.method or {}))
    kind = method.get("type", "supervised")
    hp = method.setdefault(kind, {}).setdefault("hyperparameters", {})
    resolved = run.resolved()
    multiplier = hp.get("learning_rate_multiplier")
    hp.update(n_epochs=resolved.get("epochs", hp.get("n_epochs")), batch_size=resolved.get("batch_size",
              hp.get("batch_size")), learning_rate_multiplier=multiplier if multiplier not in (None, "auto") else 1.0)
    return method


def _killed(code: int, what: str, db: JobsDB | None = None, job_id: str | None = None) -> str | None:
    """What to say of a job's process (its `what`: training, files' check) ended by a signal it could not handle
    (kill -9, the out-of-memory killer): its own output stops mid-way and says nothing of it."""
    if code >= 0:
        return None
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    step = None
    if db is not None:
        with db.sessions() as s:
            step = s.scalars(select(CheckpointRow.step).where(CheckpointRow.job_id == job_id)
                             .order_by(CheckpointRow.step.desc()).limit(1)).first()
    why = " (on Linux most often the out-of-memory killer: see `dmesg`)" if -code == signal.SIGKILL else ""
    kept = f"; its checkpoints up to step {step} are kept" if step is not None else ""
    return (f"the {what} process was killed by {name}{why}{kept}; create the job again to retry"
            + (", with a smaller batch size if memory ran out" if what == "training" else ""))


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


def _best_trial(sweep: Path) -> dict[str, Any] | None:
    """The best trial as the sweep's page records it (sweep.json), with its run directory."""
    try:
        facts = json.loads((sweep / "sweep.json").read_text())
    except (OSError, ValueError):
        return None
    best = facts.get("best")
    if not best or not best.get("run_dir"):
        return None
    from ..plan.sweep import shown

    return {"number": best["number"], "value": best["value"], "objective": facts.get("metric"),
            "params": best["params"], "run_dir": best["run_dir"], "shown": shown(best["params"])}


class _SweepTail:
    """Follows a sweep: each trial's start and end become the job's events (from the sweep's trials.jsonl),
    and the running trial's steps as its run writes them."""

    def __init__(self, db: JobsDB, job: JobRow, sweep: Path, work: Path) -> None:
        self.db, self.job, self.sweep, self.work = db, job, sweep, work
        self.seen = len(self._lines())  # a resumed sweep: what was said before is not said again
        self.trial: _Tail | None = None
        self.trials: list[RunDir] = []
        self.durations: list[float] = []
        self.started = time.time()
        self.budget = (job.sweep or {}).get("minutes")
        self.count = (job.sweep or {}).get("trials")

    def _lines(self) -> list[dict[str, Any]]:
        from ..plan.sweep import TRIALS

        try:
            text = (self.sweep / TRIALS).read_text()
        except OSError:
            return []
        out = []
        for line in text.splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def estimated_finish(self) -> int | None:
        ends = []
        if self.budget:
            ends.append(self.started + 60 * float(self.budget))
        if self.count and self.durations:
            left = max(0, int(self.count) - len(self.durations))
            ends.append(time.time() + left * sum(self.durations) / len(self.durations))
        return int(min(ends)) if ends else None

    def forward(self) -> None:
        from ..plan.sweep import shown

        lines = self._lines()
        self.trials = [RunDir(Path(r["run_dir"])) for r in lines if r.get("state") in ("complete", "pruned",
                                                                                        "interrupted")]
        for r in lines[self.seen:]:
            n, state = r.get("trial"), r.get("state")
            params = shown(r.get("params") or {})
            if state == "started":
                self.trial = _Tail(self.db, self.job, RunDir(Path(r["run_dir"])), self.work, trial=int(n))
                add_event(self.db, self.job.id, f"Trial {n} started: {params}", data={"trial": n})
                continue
            if r.get("seconds"):
                self.durations.append(float(r["seconds"]))
            if self.trial is not None:
                self.trial.forward()
                self.trial = None
            values = {k: v for k, v in r.items() if k not in ("trial", "state", "time", "run_dir", "params",
                                                              "seconds", "evaluations")}
            said = ", ".join(f"{k} {v:.4f}" for k, v in values.items() if isinstance(v, float))
            text = {"complete": f"Trial {n} finished: {said}",
                    "pruned": f"Trial {n} stopped early (pruned): worse than the median part way through",
                    "interrupted": f"Trial {n} interrupted; it runs again when the sweep continues",
                    "failed": f"Trial {n} failed"}.get(str(state), f"Trial {n}: {state}")
            add_event(self.db, self.job.id, text, level="warn" if state == "failed" else "info",
                      data={"trial": n, "state": state} | values)
        self.seen = len(lines)
        if self.trial is not None:
            self.trial.forward()


class _Tail:
    """Follows a training run's directory: its events, logged steps and checkpoints become the job's (a sweep's
    trial: its steps, marked with the trial's number; its checkpoints stay the trial's own)."""

    def __init__(self, db: JobsDB, job: JobRow, run: RunDir, work: Path, trial: int | None = None) -> None:
        self.db, self.job, self.run, self.work, self.trial = db, job, run, work, trial
        self.last_event = self._known_events()
        self.metric_rows = 0
        self.total: int | None = None
        self.eta: float | None = None
        self.signature: tuple[float, ...] = ()

    def _known_events(self) -> int:
        return len(self.run.events()) if self.trial is None and self.run.path.is_dir() else 0

    def estimated_finish(self) -> int | None:
        return int(time.time() + self.eta) if self.eta is not None else None

    def _signature(self) -> tuple[float, ...]:
        """When and how large the files the run writes as it goes are: unchanged, there is nothing to read."""
        out: list[float] = []
        for name in (layout.PROGRESS, layout.EVENTS, layout.METRICS):
            try:
                st = (self.run.path / name).stat()
                out += [st.st_mtime_ns, st.st_size]
            except OSError:
                out += [0, 0]
        return tuple(out)

    def forward(self) -> None:
        if not self.run.path.is_dir():
            return
        signature = self._signature()
        if signature == self.signature:  # a few stat calls a tick; the files are read only once they change
            return
        self.signature = signature
        seen = observe(self.run, events_after=self.last_event)
        self.total, self.eta = seen.total_steps or self.total, seen.eta_seconds
        rows = self.run.metrics().rows  # read before the events, so no step is reported ahead of its event
        for e in seen.events:
            self.last_event = int(e["id"])
            data = e.get("data") or {}
            if e.get("type") == "checkpoint" and isinstance(data.get("step"), int):
                if self.trial is None:
                    self._checkpoint(int(data["step"]), rows)
            elif e.get("type") != "metrics" and self.trial is None:  # evaluations: as metrics, from metrics.jsonl
                add_event(self.db, self.job.id, str(e.get("message")), level=str(e.get("level", "info")),
                          created_at=int(e.get("created") or now()))
        for row in rows[self.metric_rows:]:
            self._metrics(row)
        self.metric_rows = len(rows)

    def _metrics(self, row: dict[str, Any]) -> None:
        step = row.get("step")
        data: dict[str, Any] = {"step": step, "total_steps": self.total}
        if self.trial is not None:
            data["trial"] = self.trial
        if "loss" in row:
            data["train_loss"] = row["loss"]
        if "eval_loss" in row:
            data["valid_loss"] = data["full_valid_loss"] = row["eval_loss"]
        for name in TASK_METRICS:  # the task's own score on the validation rows, where the run measures one
            if isinstance(row.get(f"eval_{name}"), int | float):
                data[f"valid_{name}"] = float(row[f"eval_{name}"])
        if len(data) == 2 + (self.trial is not None):
            return
        text = " ".join(f"{k.replace('_', ' ')}={v:.4f}" for k, v in data.items() if isinstance(v, float))
        where = f"Trial {self.trial}, step" if self.trial is not None else "Step"
        add_event(self.db, self.job.id, f"{where} {step}/{self.total}: {text}", kind="metrics", data=data)

    def _checkpoint(self, step: int, rows: list[dict[str, Any]]) -> None:
        """The checkpoint's adapter kept by the job (the run keeps only its last few), servable as
        <model>:ckpt-step-N."""
        src = self.run.checkpoint(step)
        dest = self.work / "checkpoints" / f"step-{step}"
        kept = ""
        if (src / "adapter_config.json").is_file():
            dest.mkdir(parents=True, exist_ok=True)
            for name in ("adapter_config.json", "adapter_model.safetensors"):
                if (src / name).is_file():
                    shutil.copyfile(src / name, dest / name)
            kept = str(dest)
        losses = [r["loss"] for r in rows if "loss" in r and r.get("step", 0) <= step]
        evals = [r["eval_loss"] for r in rows if r.get("step") == step and "eval_loss" in r]
        metrics = {"step": step, "train_loss": losses[-1] if losses else None,
                   "valid_loss": evals[-1] if evals else None}
        with self.db.session() as s:
            s.add(CheckpointRow(id=checkpoint_id(), job_id=self.job.id, step=step, created_at=now(),
                                metrics=metrics, path=kept))
        add_event(self.db, self.job.id, f"Checkpoint created at step {step}", data={"step": step})
