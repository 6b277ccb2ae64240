"""What is exported: a model reference resolved, with the run's own records when it is a run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import TunelabConfig
from ..models.load import ModelError, ModelRef, resolve, tokenizer_path
from ..runs import RunDir

Log = Callable[[str], None]


class ExportError(ModelError):
    """An export that can't be done as asked; the message says what to do instead."""


@dataclass
class Source:
    """What is being exported: the resolved reference plus the run's records when it is a run."""

    ref: str
    resolved: ModelRef
    config: TunelabConfig | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    data_report: dict[str, Any] | None = None
    eval: dict[str, Any] | None = None  # the evaluation the run's report is about
    labels: list[str] | None = None  # classification-head runs

    @property
    def run(self) -> Path | None:
        return self.resolved.run

    @property
    def name(self) -> str:
        if self.run is not None:
            return str((self.config.name if self.config else None) or self.run.name)
        if self.resolved.kind in ("alias", "gguf"):  # resolved.path is tunelab's converted cache directory
            return Path(self.ref).stem if self.resolved.kind == "gguf" else self.ref
        return Path(self.ref.rstrip("/")).name or self.ref

    @property
    def task(self) -> str:
        return self.config.task if self.config is not None else "chat"

    @property
    def base(self) -> str:
        """The base model as the run names it (an alias, a path or a hub id)."""
        if self.run is None or self.config is None:
            return self.ref
        return self.config.model.base or self.ref

    @property
    def full_finetune(self) -> bool:
        return self.run is not None and RunDir(self.run).has_full_model()

    def tokenizer_path(self) -> str:
        return tokenizer_path(self.resolved)


def _main_evaluation(run: RunDir) -> dict[str, Any] | None:
    """The evaluation the run's report is about (report.source.headline_evaluation), so card and report agree."""
    from ..report import load_run

    return load_run(run.path).eval


def source(ref: str) -> Source:
    """Resolve `ref` and read the run's records; raises ModelError for unfinished runs and non-models."""
    res = resolve(ref)
    if res.run is None:
        return Source(ref, res)
    run = RunDir(res.run)
    return Source(ref, res, config=run.config(), summary=run.summary(), data_report=run.data_report(),
                  eval=_main_evaluation(run), labels=run.labels())
