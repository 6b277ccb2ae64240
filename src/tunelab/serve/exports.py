"""A fine-tuned model made downloadable: `tunelab export` run by the server in a process of its own (a merged
model, or a GGUF file with its Ollama Modelfile), and any folder streamed as a zip, a piece at a time, so
that a model of gigabytes never sits in memory."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastapi.responses import StreamingResponse

from ..jobs.worker import die_with_parent

FORMATS = {"hf": "a merged transformers model", "gguf": "a GGUF file for llama.cpp and Ollama, with a Modelfile"}
CHUNK = 1 << 20


class ExportBusy(RuntimeError):
    pass


class _Sink(io.RawIOBase):
    """Where zipfile writes; what it wrote is taken away after each piece."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self.parts.append(bytes(b))
        return len(b)

    def take(self) -> bytes:
        out, self.parts = b"".join(self.parts), []
        return out


def zip_stream(folder: Path, name: str) -> Iterator[bytes]:
    """The folder's files as a zip under `name/` (stored: model weights do not compress), in pieces."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
        for f in sorted(folder.rglob("*")):
            if not f.is_file():
                continue
            info = zipfile.ZipInfo.from_file(f, f"{name}/{f.relative_to(folder)}")
            with f.open("rb") as src, z.open(info, "w", force_zip64=True) as dest:
                while chunk := src.read(CHUNK):
                    dest.write(chunk)
                    yield sink.take()
    yield sink.take()


def zip_response(folder: Path, name: str) -> StreamingResponse:
    """The folder as a download named `name`.zip, streamed."""
    return StreamingResponse(zip_stream(folder, name), media_type="application/zip",
                             headers={"content-disposition": f'attachment; filename="{name}.zip"'})


class Exports:
    """One export per (job, format), run in the background; done when its folder exists (`tunelab export`
    builds it as OUT.partial and renames it at the end), failed when its process said so."""

    def __init__(self, root: Path, env: dict[str, str] | None = None) -> None:
        self.root = root
        self.env = os.environ | (env or {})
        self.procs: dict[tuple[str, str], subprocess.Popen[bytes]] = {}
        self.lock = threading.RLock()  # start() checks and starts under it: one process per export

    def folder(self, job_id: str, fmt: str) -> Path:
        return self.root / job_id / fmt

    def status(self, job_id: str, fmt: str) -> dict[str, Any]:
        out = self.folder(job_id, fmt)
        log = out.with_suffix(".log")
        with self.lock:
            proc = self.procs.get((job_id, fmt))
            running = proc is not None and proc.poll() is None
        state = {"object": "fine_tuning.job.export", "fine_tuning_job_id": job_id, "format": fmt,
                 "description": FORMATS[fmt]}
        if running:
            return state | {"status": "running"}
        if out.is_dir():
            files = [{"name": str(f.relative_to(out)), "bytes": f.stat().st_size}
                     for f in sorted(out.rglob("*")) if f.is_file()]
            return state | {"status": "ready", "files": files, "bytes": sum(f["bytes"] for f in files)}
        if log.is_file() and proc is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-5:]
            return state | {"status": "failed", "error": "\n".join(tail)}
        return state | {"status": "none"}

    def busy(self) -> bool:
        with self.lock:
            return any(p.poll() is None for p in self.procs.values())

    def start(self, job_id: str, fmt: str, run_dir: str) -> dict[str, Any]:
        """Start the export, unless it is running or done; one export at a time on a server (each loads a whole
        model): ExportBusy while another runs."""
        with self.lock:
            current = self.status(job_id, fmt)
            if current["status"] in ("running", "ready"):
                return current
            if self.busy():
                raise ExportBusy("another export is running on this server; ask again when it is done")
            out = self.folder(job_id, fmt)
            out.parent.mkdir(parents=True, exist_ok=True)
            with out.with_suffix(".log").open("wb") as log:
                self.procs[(job_id, fmt)] = subprocess.Popen(
                    [sys.executable, "-m", "tunelab.cli.main", "export", run_dir, "--format", fmt, "--out", str(out),
                     "--force"], stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=out.parent,
                    preexec_fn=die_with_parent)
            return self.status(job_id, fmt)

    def remove(self, job_id: str) -> None:
        """A deleted model's exports go with it (a running one is stopped first)."""
        with self.lock:
            for (jid, _), proc in list(self.procs.items()):
                if jid == job_id and proc.poll() is None:
                    proc.kill()
                    proc.wait()
        shutil.rmtree(self.root / job_id, ignore_errors=True)

    def stop(self) -> None:
        with self.lock:
            for proc in self.procs.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
