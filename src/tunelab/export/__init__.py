"""Export a run (or any model reference tunelab loads) for use outside tunelab.

Formats: `hf` (adapters merged into the base, a plain transformers directory), `adapter` (the PEFT
adapter alone) and `gguf` (one file for llama.cpp / Ollama, plus a Modelfile). Every format is written
to `OUT.partial` and renamed into place at the end, so an interrupted export never looks complete.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..models.load import ModelError, Resolved, resolve

FORMATS = ("hf", "adapter", "gguf")
DTYPES = ("f32", "f16", "bf16")
QUANTIZATIONS = ("q8_0",)

Log = Callable[[str], None]


class ExportError(ModelError):
    """An export that can't be done as asked; the message says what to do instead."""


@dataclass
class Source:
    """What is being exported: the resolved reference plus the run's records when it is a run."""

    ref: str
    resolved: Resolved
    config: dict[str, Any] = field(default_factory=dict)  # config.yaml
    summary: dict[str, Any] = field(default_factory=dict)
    data_report: dict[str, Any] | None = None
    eval: dict[str, Any] | None = None
    labels: list[str] | None = None  # classification-head runs

    @property
    def run(self) -> Path | None:
        return self.resolved.run

    @property
    def name(self) -> str:
        if self.run is not None:
            return str(self.config.get("name") or self.run.name)
        if self.resolved.kind in ("alias", "gguf"):  # resolved.path is tunelab's converted cache directory
            return Path(self.ref).stem if self.resolved.kind == "gguf" else self.ref
        return Path(self.ref.rstrip("/")).name or self.ref

    @property
    def task(self) -> str:
        return str(self.config.get("task") or "chat")

    @property
    def base(self) -> str:
        """The base model as the run names it (an alias, a path or a hub id)."""
        if self.run is None:
            return self.ref
        return str((self.config.get("model") or {}).get("base") or self.ref)

    @property
    def full_finetune(self) -> bool:
        return self.run is not None and (self.run / "model").is_dir()

    def tokenizer_path(self) -> str:
        if self.run is not None and (self.run / "tokenizer").is_dir():
            return str(self.run / "tokenizer")
        return self.resolved.path


def _json(p: Path) -> dict[str, Any] | None:
    return json.loads(p.read_text()) if p.is_file() else None


def source(ref: str) -> Source:
    """Resolve `ref` and read the run's records; raises ModelError for unfinished runs and non-models."""
    import yaml

    res = resolve(ref)
    if res.run is None:
        return Source(ref, res)
    run = res.run
    labels = _json(run / "labels.json")
    return Source(ref, res, config=yaml.safe_load((run / "config.yaml").read_text()) or {},
                  summary=_json(run / "summary.json") or {}, data_report=_json(run / "data_report.json"),
                  eval=_json(run / "eval.json"), labels=list(labels) if labels else None)


def check_options(fmt: str, dtype: str | None, quantize: str | None) -> None:
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}: choose one of {', '.join(FORMATS)} "
                          f"(hf: merged transformers model, adapter: the LoRA adapter alone, gguf: llama.cpp/Ollama)")
    if dtype is not None and dtype not in DTYPES:
        raise ExportError(f"unknown --dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    if quantize is not None:
        if fmt != "gguf":
            raise ExportError(f"--quantize applies to --format gguf only; for --format {fmt} use --dtype")
        if quantize.lower() not in QUANTIZATIONS:
            raise ExportError(f"unknown --quantize {quantize!r}: supported: {', '.join(QUANTIZATIONS)} "
                              f"(or leave it out and pick --dtype f16/bf16/f32)")


def _inside(p: Path, parent: Path) -> bool:
    return p == parent or parent in p.parents


@contextlib.contextmanager
def staged_dir(out: Path, *, force: bool, protect: list[Path] | None = None) -> Iterator[Path]:
    """Yield `OUT.partial` to write into; on success it replaces `out`, on failure it is removed."""
    out = out.expanduser().resolve()
    if out.exists() and not force and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} already exists and is not empty: choose another --out, "
                          f"or pass --force to replace it")
    for p in protect or []:  # --force must never delete what is being exported
        if _inside(p.resolve(), out):
            raise ExportError(f"--out {out} contains the model being exported ({p}): choose another --out")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        # The old output goes aside before the new one moves in: at every moment `out` is either the
        # old export or the complete new one.
        old = out.with_name(out.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        tmp.rename(out)
        if old.is_dir():
            shutil.rmtree(old)
        else:
            old.unlink()
    else:
        tmp.rename(out)


def export(ref: str, fmt: str, out: str | Path, *, dtype: str | None = None, quantize: str | None = None,
           force: bool = False, log: Log | None = None) -> Path:
    """Export `ref` as `fmt` into the directory `out`; returns the directory (for gguf, the .gguf file)."""
    check_options(fmt, dtype, quantize)
    log = log or (lambda _msg: None)
    out = Path(out)
    src = source(ref)
    protect = [p for p in (src.run, Path(src.resolved.path)) if p is not None and p.exists()]
    with staged_dir(out, force=force, protect=protect) as tmp:
        if fmt == "hf":
            from .hf import export_hf

            export_hf(src, tmp, dtype=dtype or "f32", log=log)
            result = out
        elif fmt == "adapter":
            from .hf import export_adapter

            export_adapter(src, tmp, dtype=dtype, log=log)
            result = out
        else:
            from .gguf import export_gguf

            written = export_gguf(src, tmp, dtype=dtype or "f16", quantize=quantize, log=log)
            result = out / written.name
    return result.expanduser().resolve()
