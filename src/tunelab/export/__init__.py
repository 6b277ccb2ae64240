"""Export a run (or any model reference tunelab loads) for use outside tunelab.

Formats: `hf` (adapters merged into the base, a plain transformers directory), `adapter` (the PEFT
adapter alone) and `gguf` (one file for llama.cpp / Ollama, plus a Modelfile). Every format is written
to `OUT.partial` and renamed into place at the end, so an interrupted export never looks complete. Before the
rename, the parity check (parity.py) runs the export against the trained model, and MANIFEST records the files
and what the check found: an export that would answer differently from the run is never kept.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import DiskFullError, is_disk_full, size_text, writing
from .source import ExportError, Log, Source, source

FORMATS = ("hf", "adapter", "gguf")
DTYPES = ("f32", "f16", "bf16")
QUANTIZATIONS = ("q8_0",)
MANIFEST = "tunelab-export.json"  # beside the exported files, written last: what was exported and how it was checked


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


def _files(folder: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            digest = hashlib.sha256()
            with p.open("rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
            out[str(p.relative_to(folder))] = {"bytes": p.stat().st_size, "sha256": digest.hexdigest()}
    return out


def write_manifest(folder: Path, src: Source, fmt: str, precision: str, parity: dict[str, Any]) -> Path:
    from ..version import __version__

    manifest = {"format": fmt, "precision": precision, "source": src.ref, "run": str(src.run) if src.run else None,
                "base": src.base, "tunelab": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "files": _files(folder), "parity": parity}
    path = folder / MANIFEST
    path.write_text(json.dumps(manifest, indent=2) + "\n")  # plain write: staged_dir handles a full disk
    return path


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """An export's manifest, or None for an export written before there was one."""
    path = folder / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


def export(ref: str, fmt: str, out: str | Path, *, dtype: str | None = None, quantize: str | None = None,
           force: bool = False, parity: bool = True, log: Log | None = None) -> Path:
    """Export `ref` as `fmt` into the directory `out`; returns the directory (for gguf, the .gguf file).

    parity: run the export against the trained model before it is kept (parity.py); an export that
    differs raises ExportError and leaves nothing behind. Turning it off is not recommended."""
    check_options(fmt, dtype, quantize)
    log = log or (lambda _msg: None)
    out = Path(out)
    src = source(ref)
    protect = [p for p in (src.run, Path(src.resolved.path)) if p is not None and p.exists()]
    precision = {"hf": dtype or "f32", "adapter": dtype or "f32",
                 "gguf": (quantize or "").lower() or dtype or "f16"}[fmt]
    with staged_dir(out, force=force, protect=protect) as tmp:
        written: Path | None = None
        if fmt == "hf":
            from .hf import export_hf

            export_hf(src, tmp, dtype=dtype or "f32", log=log)
        elif fmt == "adapter":
            from .hf import export_adapter

            export_adapter(src, tmp, dtype=dtype, log=log)
        else:
            from .gguf import export_gguf

            written = export_gguf(src, tmp, dtype=dtype or "f16", quantize=quantize, log=log)
        if parity:
            from .parity import check

            report = check(src, fmt, tmp, written, precision, log)
        else:
            report = {"checked": False, "reason": "turned off (--no-parity-check)"}
        write_manifest(tmp, src, fmt, precision, report)
    result = out / written.name if written is not None else out
    return result.expanduser().resolve()
