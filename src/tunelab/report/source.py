"""A run directory as the report reads it: every file optional, a damaged one noted and left out instead of
stopping the report. Reads through the typed run directory (runs.RunDir); nothing here opens a file by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ..config import TunelabConfig
from ..runs import RunDir, RunDirError
from ..runs import layout as files
from .numbers import LOWER_IS_BETTER, num

T = TypeVar("T")


@dataclass
class Run:
    path: Path
    summary: dict[str, Any] = field(default_factory=dict)
    config: TunelabConfig | None = None
    resolved: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] | None = None
    curation: dict[str, Any] | None = None  # data.curate's findings
    metrics: list[dict[str, Any]] | None = None
    predictions: list[dict[str, Any]] | None = None
    evaluations: dict[str, dict[str, Any]] = field(default_factory=dict)  # every evaluation kept, by name
    probes: dict[str, Any] | None = None
    unreadable: list[str] = field(default_factory=list)
    eval_name: str | None = None  # the evaluation the verdict is about (see headline_evaluation)

    @property
    def eval(self) -> dict[str, Any] | None:
        return self.evaluations.get(self.eval_name) if self.eval_name else None

    @property
    def eval_source(self) -> str:
        """Where the headline evaluation is kept, relative to the run."""
        return source_of(self.eval_name or "")

    @property
    def task(self) -> str:
        cfg_task = self.config.task if self.config is not None else None
        return str(self.summary.get("task") or cfg_task or (self.eval or {}).get("task") or "chat")

    @property
    def classification(self) -> bool:
        return "classification" in (self.task, (self.eval or {}).get("task"))

    @property
    def method(self) -> str:
        return str(self.summary.get("method") or (self.config.method if self.config is not None else "sft"))

    def series(self, key: str) -> list[tuple[float, float]]:
        """(step, value) of one logged metric, in logging order."""
        out = []
        for row in self.metrics or []:
            step, v = num(row.get("step")), num(row.get(key))
            if step is not None and v is not None:
                out.append((step, v))
        return out

    def loss_points(self) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
        return self.series("loss"), self.series("eval_loss")


def source_of(eval_name: str) -> str:
    """The file an evaluation is kept in, relative to the run."""
    return eval_name if eval_name == files.LEGACY_EVAL else f"{files.EVALS}/{eval_name}.json"


def is_evaluation(source: str | None) -> bool:
    return bool(source) and (source == files.LEGACY_EVAL or str(source).startswith(f"{files.EVALS}/"))


def task_level(classification: bool, model: dict[str, Any]) -> bool:
    """Whether metrics say how well the task is done (accuracy, F1...), not only loss and perplexity."""
    if classification:
        return num(model.get("accuracy")) is not None
    return any(num(v) is not None for k, v in model.items() if k not in LOWER_IS_BETTER)


def headline_evaluation(run: Run) -> str | None:
    """The evaluation the verdict is about: the newest one that compares tuned with base on a task metric; else,
    when training compared them itself (classification runs), none; else the newest that scores the task; else
    the newest. Evaluating on other data without a base comparison never hides the run's own comparison."""
    def usable(ev: dict[str, Any]) -> bool:
        return isinstance(ev.get("model"), dict) and bool(ev["model"])

    def cls(ev: dict[str, Any]) -> bool:
        return run.classification or ev.get("task") == "classification"

    newest_first = [(n, ev) for n, ev in reversed(run.evaluations.items()) if usable(ev)]
    for n, ev in newest_first:
        comp = ev.get("comparison")
        if isinstance(comp, dict) and num(comp.get("base")) is not None and task_level(cls(ev), ev["model"]):
            return n
    if num(run.summary.get("base_accuracy")) is not None:
        return None
    for n, ev in newest_first:
        if task_level(cls(ev), ev["model"]):
            return n
    return newest_first[0][0] if newest_first else None


def load_run(run_dir: str | Path) -> Run:
    path = Path(run_dir)
    if not path.is_dir():
        raise RunDirError(f"{path}: no such run directory (give the run's folder, e.g. runs/<name>)")
    rd = RunDir(path)
    if not rd.looks_like_run():
        raise RunDirError(f"{path} is not a tunelab run directory: it has no {files.SUMMARY}, {files.CONFIG} or "
                          f"{files.METRICS} (give the folder `tunelab train` wrote, e.g. runs/<name>)")
    run = Run(path)

    def read(what: str, reader: Callable[[], T], default: T) -> T:
        try:
            return reader()
        except Exception as exc:  # a damaged file (bad JSON or YAML, unreadable) must not stop the report
            run.unreadable.append(f"{what}: {exc}")
            return default

    run.summary = read(files.SUMMARY, rd.summary, {})
    run.config = read(files.CONFIG, rd.config, None) if rd.config_path.is_file() else None
    run.resolved = read(files.RESOLVED, rd.resolved, {})
    run.data = read(files.DATA_REPORT, rd.data_report, None)
    run.curation = read(files.CURATION, rd.curation, None)
    lines = read(files.METRICS, rd.metrics, None)
    if lines is not None:
        run.metrics = lines.rows if rd.metrics_path.is_file() else None
        if lines.damaged:
            run.unreadable.append(f"{files.METRICS}: {lines.damaged} damaged line(s) skipped")
    run.predictions = read(files.PREDICTIONS, rd.predictions, None)
    run.evaluations = rd.evaluations(damaged=run.unreadable)  # each damaged one noted, the others shown
    run.probes = read(files.PROBES, rd.probes, None)
    run.eval_name = headline_evaluation(run)
    return run
