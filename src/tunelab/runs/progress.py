"""A run seen from outside: progress.json (rewritten as the run goes) and events.jsonl (appended), written by
the training process and readable by any other process while the run goes on (`tunelab status`, or a program
that started the run). Only the run directory is shared, nothing else.

Phases, in order: starting, scoring base model, training, saving, scoring tuned model, probing, reporting, done
(or interrupted, failed)."""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from .. import atomic
from . import layout
from .directory import RunDir, now

MIN_WRITE_INTERVAL = 0.5  # seconds between progress.json rewrites during training: steps can take milliseconds


class Reporter:
    """Writes a run's progress and events. One per training process."""

    def __init__(self, run: RunDir) -> None:
        self.run = run
        self.state: dict[str, Any] = {"phase": "starting", "pid": os.getpid(), "host": socket.gethostname(),
                                      "started": now()}
        self._written = 0.0
        self._next_id = len(run.events()) + 1  # a resumed run continues its event numbering
        self.on_phase: list[Any] = []  # called with each new phase's name (a rehearsal times them)
        self.write(force=True)  # from now on an observer can tell whether the process is alive

    def event(self, message: str, *, level: str = "info", kind: str = "message", **data: Any) -> None:
        row = {"id": self._next_id, "created": time.time(), "level": level, "type": kind, "message": message}
        if data:
            row["data"] = data
        self._next_id += 1
        with self.run.file(layout.EVENTS).open("a") as f:
            f.write(json.dumps(row, default=str) + "\n")

    def phase(self, name: str, *, done: int | None = None, total: int | None = None) -> None:
        self.state.update(phase=name, done=done, total=total)
        self.write(force=True)
        for listener in self.on_phase:
            listener(name)

    def advance(self, done: int, total: int | None = None) -> None:
        """Work done within the current phase (rows scored, steps trained)."""
        self.state.update(done=done, total=total if total is not None else self.state.get("total"))
        self.write()

    def update(self, *, force: bool = False, **fields: Any) -> None:
        self.state.update(fields)
        self.write(force=force)

    def write(self, force: bool = False) -> None:
        t = time.monotonic()
        if not force and t - self._written < MIN_WRITE_INTERVAL:
            return
        self._written = t
        atomic.write_json(self.run.file(layout.PROGRESS), self.state | {"updated": now(), "time": time.time()})


class SilentReporter(Reporter):
    """The reporter of a process that trains beside the one that writes the run (rank > 0 of several): it keeps
    the phase for its own use and writes nothing."""

    def __init__(self, run: RunDir) -> None:  # unlike Reporter: reads and writes no file
        self.run = run
        self.state = {"phase": "starting", "pid": os.getpid()}
        self._written, self._next_id = 0.0, 0
        self.on_phase = []

    def event(self, message: str, *, level: str = "info", kind: str = "message", **data: Any) -> None:
        pass

    def write(self, force: bool = False) -> None:
        pass


@dataclass
class Observation:
    """What another process can tell about a run from its directory alone."""

    path: str
    status: str | None  # running | interrupted | failed | completed | None (not started)
    phase: str | None = None
    step: int | None = None
    total_steps: int | None = None
    done: int | None = None  # work done in the current phase, of `total`
    total: int | None = None
    epoch: float | None = None
    loss: float | None = None
    eval_loss: float | None = None
    tokens_per_s: float | None = None
    elapsed_seconds: float | None = None
    eta_seconds: float | None = None
    alive: bool | None = None  # running and its process still there; None when that can't be told from here
    error: str | None = None
    updated: str | None = None
    events: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def observe(run: RunDir, *, events_after: int = 0) -> Observation:
    """The run's status, progress and events after id `events_after`, read without disturbing the run."""
    summary = run.summary()
    prog = run.progress() or {}
    status = summary.get("status")
    alive = None
    if status == "running" and prog.get("host") == socket.gethostname() and isinstance(prog.get("pid"), int):
        alive = _process_alive(prog["pid"])
    keys = ("phase", "step", "total_steps", "done", "total", "epoch", "loss", "eval_loss", "tokens_per_s",
            "elapsed_seconds", "eta_seconds")
    return Observation(str(run.path), status, **{k: prog.get(k) for k in keys}, alive=alive,
                       error=summary.get("error"), updated=prog.get("updated") or summary.get("updated"),
                       events=[e for e in run.events() if int(e.get("id", 0)) > events_after])
