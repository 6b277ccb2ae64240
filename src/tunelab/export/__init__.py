"""Export a run (or any model reference tunelab loads) for use outside tunelab.

Formats: `hf` (adapters merged into the base, a plain transformers directory), `adapter` (the PEFT
adapter alone) and `gguf` (one file for llama.cpp / Ollama, plus a Modelfile). Every format is written
to `OUT.partial` and renamed into place at the end, so an interrupted export never looks complete.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

from ..errors import DiskFullError, is_disk_full, size_text, writing
from .source import ExportError, Log, source

FORMATS = ("hf", "adapter", "gguf")
DTYPES = ("f32", "f16", "bf16")
QUANTIZATIONS = ("q8_0",)


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
    with writing("the export", out):
        tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException as exc:
        full = isinstance(exc, Exception) and is_disk_full(exc, tmp)  # before the partial files free their space
        written = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file()) if full else 0
        shutil.rmtree(tmp, ignore_errors=True)
        if full:
            raise DiskFullError("the export", out, f"nothing was kept ({size_text(written)} were written when the "
                                f"disk filled). Free space there and export again") from exc
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
