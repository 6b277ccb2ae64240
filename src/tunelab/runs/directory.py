"""The run directory, runs/<name>/, as a typed object: its paths, readers and writers.

summary.json carries a status; only "completed" runs are loadable as models, so an interrupted or failed
run never looks finished. Every file is written atomically (a killed process leaves the previous version).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import atomic
from ..errors import TunelabError
from . import layout
from .checkpoint import problem as checkpoint_problem

if TYPE_CHECKING:
    from ..config import TunelabConfig

Summary = dict[str, Any]  # status, name, started, updated, error, task, method, base_model, steps, losses, scores


class RunDirError(TunelabError, ValueError):
    """A run directory that is missing, unfinished where a finished one is needed, or damaged."""


@dataclass
class RunResult:
    """What a training run returns: where it is, how it ended, and its summary."""

    run_dir: Path
    status: str  # completed | interrupted
    summary: Summary = field(default_factory=dict)


@dataclass
class Lines:
    """The rows of a JSON Lines file; a line cut short by a killed process costs that line only."""

    rows: list[dict[str, Any]]
    damaged: int = 0


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


@dataclass
class RunDir:
    path: Path

    def __post_init__(self) -> None:
        self.path = Path(self.path)

    # --- paths -----------------------------------------------------------------------------------

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def config_path(self) -> Path:
        return self.path / layout.CONFIG

    @property
    def checkpoints(self) -> Path:
        return self.path / layout.CHECKPOINTS

    def checkpoint(self, step: int) -> Path:
        """The trainer's checkpoint of a step (transformers names them checkpoint-<step>)."""
        return self.checkpoints / f"checkpoint-{step}"

    @property
    def metrics_path(self) -> Path:
        return self.path / layout.METRICS

    @property
    def adapter(self) -> Path:
        return self.path / layout.ADAPTER

    @property
    def full_model(self) -> Path:
        return self.path / layout.MODEL

    @property
    def tokenizer(self) -> Path:
        return self.path / layout.TOKENIZER

    @property
    def report_html(self) -> Path:
        return self.path / layout.REPORT_HTML

    def is_run(self) -> bool:
        """A run directory as training writes it (config and summary), finished or not."""
        return self.file(layout.CONFIG).is_file() and self.file(layout.SUMMARY).is_file()

    def looks_like_run(self) -> bool:
        """Any file a run leaves, even in a damaged or partly copied run (what the report accepts)."""
        return any(self.file(name).exists() for name in layout.RUN_MARKERS)

    def has_full_model(self) -> bool:
        return self.full_model.is_dir()

    def has_tokenizer(self) -> bool:
        return self.tokenizer.is_dir()

    # --- reading ---------------------------------------------------------------------------------

    def _json(self, name: str) -> Any:
        path = self.file(name)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise RunDirError(f"{path}: can't be read ({type(exc).__name__}: {exc})") from None

    def _object(self, name: str) -> dict[str, Any] | None:
        got = self._json(name)
        if got is not None and not isinstance(got, dict):
            raise RunDirError(f"{self.file(name)}: expected a JSON object")
        return got

    def _objects(self, name: str) -> list[dict[str, Any]] | None:
        got = self._json(name)
        if got is not None and not (isinstance(got, list) and all(isinstance(x, dict) for x in got)):
            raise RunDirError(f"{self.file(name)}: expected a list of objects")
        return got

    def _lines(self, name: str) -> Lines:
        path = self.file(name)
        if not path.is_file():
            return Lines([])
        rows, damaged = [], 0
        for ln in path.read_text(errors="replace").splitlines():
            if not ln.strip():
                continue
            try:
                row = json.loads(ln)
            except ValueError:
                damaged += 1
                continue
            if isinstance(row, dict):
                rows.append(row)
            else:
                damaged += 1
        return Lines(rows, damaged)

    def config(self) -> TunelabConfig:
        """The run's config, through the config loader (defaults filled in, checked)."""
        from ..config import ConfigError, load_config

        path = self.file(layout.CONFIG)
        if not path.is_file():
            raise RunDirError(f"{self.path}: no {layout.CONFIG}; this is not a tunelab run directory")
        try:
            return load_config(path, rules=False)
        except ConfigError as exc:
            raise RunDirError(f"{path}: the run's config can't be read: {exc}") from None

    def summary(self) -> Summary:
        return self._object(layout.SUMMARY) or {}

    def status(self) -> str | None:
        return self.summary().get("status")

    def resolved(self) -> dict[str, Any]:
        return self._object(layout.RESOLVED) or {}

    def data_report(self) -> dict[str, Any] | None:
        return self._object(layout.DATA_REPORT)

    def curation(self) -> dict[str, Any] | None:
        return self._object(layout.CURATION)

    def labels(self) -> list[str] | None:
        """A classification head's labels in output order (a reward model's one score is ["reward"])."""
        got = self._json(layout.LABELS)
        if got is not None and not (isinstance(got, list) and all(isinstance(x, str) for x in got)):
            raise RunDirError(f"{self.file(layout.LABELS)}: expected a list of label names")
        return got

    def metrics(self) -> Lines:
        return self._lines(layout.METRICS)

    def series(self, key: str) -> list[tuple[float, float]]:
        """(step, value) of one logged metric, in logging order."""
        out = []
        for row in self.metrics().rows:
            step, value = row.get("step"), row.get(key)
            if _finite(step) and _finite(value):
                out.append((float(step), float(value)))
        return out

    def predictions(self) -> list[dict[str, Any]] | None:
        return self._objects(layout.PREDICTIONS)

    def base_predictions(self) -> list[Any] | None:
        got = self._json(layout.BASE_PREDICTIONS)
        return got if isinstance(got, list) else None

    def probes(self) -> dict[str, Any] | None:
        return self._object(layout.PROBES)

    def evaluations(self, damaged: list[str] | None = None) -> dict[str, dict[str, Any]]:
        """Every evaluation kept in the run, by name, oldest first; an earlier version's one evaluation is named
        after its file (eval.json), which no new name can be. A damaged file raises RunDirError, or, given a
        `damaged` list, is left out and its error added to the list."""
        paths = [self.file(layout.LEGACY_EVAL)] + sorted(self.file(layout.EVALS).glob("*.json"))
        found: list[tuple[float, str, dict[str, Any]]] = []
        for path in paths:
            if not path.is_file():
                continue
            try:
                got = self._object(str(path.relative_to(self.path)))
            except RunDirError as exc:
                if damaged is None:
                    raise
                damaged.append(str(exc))
                continue
            if got is not None:
                legacy = path.name == layout.LEGACY_EVAL
                when = path.stat().st_mtime if legacy else float(got.get("created") or path.stat().st_mtime)
                found.append((when, layout.LEGACY_EVAL if legacy else path.stem, got))
        return {name: ev for _, name, ev in sorted(found, key=lambda x: x[:2])}

    def progress(self) -> dict[str, Any] | None:
        return self._object(layout.PROGRESS)

    def events(self) -> list[dict[str, Any]]:
        return self._lines(layout.EVENTS).rows

    def last_checkpoint(self, passed_over: list[tuple[Path, str]] | None = None) -> Path | None:
        """The newest whole checkpoint (runs/checkpoint.py checks it): a process killed while saving leaves one
        unfinished, a disk can damage one later, and a resume must never load half of one. Newer ones that are
        not whole are added to `passed_over` with what is wrong with them."""
        if not self.checkpoints.is_dir():
            return None
        steps = sorted((d for d in self.checkpoints.glob("checkpoint-*") if d.name.rsplit("-", 1)[-1].isdigit()),
                       key=checkpoint_step, reverse=True)
        for d in steps:
            bad = checkpoint_problem(d)
            if bad is None:
                return d
            if passed_over is not None:
                passed_over.append((d, bad))
        return None

    # --- writing ---------------------------------------------------------------------------------

    def write_json(self, name: str, data: Any) -> Path:
        return atomic.write_json(self.file(name), data)

    def write_config(self, cfg: TunelabConfig) -> None:
        from ..config import dump_config

        atomic.write_text(self.file(layout.CONFIG), dump_config(cfg))

    def write_resolved(self, resolved: dict[str, Any]) -> None:
        self.write_json(layout.RESOLVED, resolved)

    def write_labels(self, labels: list[str]) -> None:
        self.write_json(layout.LABELS, labels)

    def write_predictions(self, rows: list[dict[str, Any]]) -> None:
        self.write_json(layout.PREDICTIONS, rows)

    def write_base_predictions(self, answers: list[str]) -> None:
        self.write_json(layout.BASE_PREDICTIONS, answers)

    def write_probes(self, result: dict[str, Any]) -> Path:
        return self.write_json(layout.PROBES, result)

    def write_data_report(self, report: dict[str, Any], skipped: list[Any],
                          curation: dict[str, Any] | None = None) -> Path | None:
        """data_report.json, curation.json (data.curate), and the rows skipped with data.on_error: skip in
        skipped_rows.jsonl (its path)."""
        if curation is not None:
            self.write_json(layout.CURATION, curation)
        self.write_json(layout.DATA_REPORT, report)
        if not skipped:
            return None
        lines = "".join(json.dumps(p.to_dict()) + "\n" for p in skipped)
        return atomic.write_text(self.file(layout.SKIPPED_ROWS), lines)

    def write_evaluation(self, result: dict[str, Any], name: str | None = None) -> Path:
        """Keep an evaluation beside the others, named after its data (result["data"]) unless a name is given:
        evaluating the same data again replaces its earlier result, other data gets a file of its own."""
        folder = self.file(layout.EVALS)
        folder.mkdir(exist_ok=True)
        taken: dict[str, Any] = {}
        for path in folder.glob("*.json"):  # a damaged file keeps its name, and costs nothing else
            try:
                taken[path.stem] = json.loads(path.read_text()).get("data")
            except (OSError, ValueError, AttributeError):
                taken[path.stem] = None
        name = name or evaluation_name(str(result.get("data") or "data"), taken)
        return atomic.write_json(folder / f"{name}.json", result | {"created": time.time()})

    def write_report(self, html: str, facts_json: str) -> tuple[Path, Path]:
        """report.json, then report.html: a page (what people open) is never there without its facts."""
        facts = atomic.write_text(self.file(layout.REPORT_JSON), facts_json)
        return atomic.write_text(self.report_html, html), facts

    def set_status(self, status: str, **extra: Any) -> Summary:
        """Update summary.json: the status and any headline numbers; an error is kept only while failed."""
        current = self.summary()
        current.update(extra, status=status, updated=now())
        if status != "failed":
            current.pop("error", None)
        self.write_json(layout.SUMMARY, current)
        return current

    def append_metrics(self, row: dict[str, Any]) -> None:
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(row) + "\n")

    def trim_metrics(self, upto_step: int) -> None:
        """Drop metric lines past a checkpoint so a resumed run logs each step once."""
        if not self.metrics_path.exists():
            return
        kept = [r for r in self.metrics().rows if r.get("step", 0) <= upto_step]
        atomic.write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))


def checkpoint_step(path: str | Path) -> int:
    """The step a trainer checkpoint was saved at (transformers names them checkpoint-<step>)."""
    return int(Path(path).name.rsplit("-", 1)[-1])


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and x == x and abs(x) != float("inf")


def evaluation_name(data: str, taken: dict[str, Any]) -> str:
    """A file name for an evaluation on `data`: its stem, made safe; the name it had before if this data was
    evaluated already; a numbered one when another data file of the same stem holds the name."""
    for name, other in taken.items():
        if other == data:
            return name
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(data).stem).strip("-") or "data"
    name, n = stem, 2
    while name in taken:
        name, n = f"{stem}-{n}", n + 1
    return name


def resumable(output_dir: str, name: str) -> str:
    """The run to resume for a config name: the newest unfinished one among name, name-2, name-3..."""
    base = Path(output_dir)
    candidates = [RunDir(base / name)] + [RunDir(p) for p in base.glob(f"{name}-*")]
    unfinished = [r for r in candidates if r.file(layout.SUMMARY).is_file() and r.status() != "completed"]
    if not unfinished:
        return name
    return max(unfinished, key=lambda r: r.file(layout.SUMMARY).stat().st_mtime).path.name


def resume_config(cfg: TunelabConfig, overrides: list[str]) -> TunelabConfig:
    """The config to resume with: the unfinished run's own saved config, with any overrides given now."""
    from ..config import load_config

    run = RunDir(Path(cfg.output_dir) / resumable(cfg.output_dir, str(cfg.name)))
    saved = run.file(layout.CONFIG)
    return load_config(saved, overrides, rules=False) if saved.is_file() else cfg


def open_run(cfg: TunelabConfig, resume: bool) -> RunDir:
    """Create a new run directory, or reopen an unfinished one to resume. A completed run is never written
    over: a new run of the same name goes to name-2, name-3..."""
    path = Path(cfg.output_dir) / str(cfg.name)
    run = RunDir(path)
    if resume:
        if not run.file(layout.SUMMARY).exists() and not run.file(layout.CONFIG).is_file():
            raise RunDirError(f"{path}: nothing to resume (no such run); start it without --resume")
        if run.status() == "completed":
            raise RunDirError(f"{path} already completed: there is nothing to resume")
        # a run killed before its first summary.json has only its config: it starts again from there
        fresh = {} if run.file(layout.SUMMARY).exists() else {"name": cfg.name, "started": now()}
        atomic.remove_leftovers(path)  # what the killed process was writing when it died
        run.set_status("running", **fresh)
        return run
    if path.exists() and any(path.iterdir()):
        status = run.status() if run.file(layout.SUMMARY).exists() else "unknown"
        if status != "completed":
            raise RunDirError(
                f"{path} holds an unfinished run (status {status!r}): continue it with --resume, "
                f"or start a new one with name=<other-name>")
        n = 2
        while (path.parent / f"{path.name}-{n}").exists():
            n += 1
        run = RunDir(path.parent / f"{path.name}-{n}")
        cfg.name = run.path.name
    run.path.mkdir(parents=True, exist_ok=True)
    run.write_config(cfg)
    run.set_status("running", name=cfg.name, started=now())
    return run
