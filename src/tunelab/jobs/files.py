"""Uploaded files: stored under the data directory by generated id (the client's filename is metadata only),
listed, read back and deleted per project, in OpenAI's file object shape."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import select

from ..errors import DiskFullError, is_disk_full
from .db import FileRow, JobsDB, now
from .errors import JobsError, disk_full, invalid, not_found
from .ids import file_id

PURPOSES = ("fine-tune",)  # what clients may upload; the service itself writes fine-tune-results
KNOWN_SUFFIXES = (".jsonl.gz", ".json.gz", ".csv.gz", ".jsonl", ".json", ".csv", ".parquet")
CHUNK = 1 << 20
log = logging.getLogger("tunelab.serve")


def clean_filename(filename: str) -> str:
    """The client's filename as kept (metadata only, never a path): its last path component, without control
    characters (NUL, newlines: they break databases, logs and headers), at most 255 characters."""
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if c.isprintable()).strip()
    return name[:255] if name not in ("", ".", "..") else "upload"


def stored_suffix(filename: str) -> str:
    """The data format the client's name says (readers detect formats by suffix); .jsonl otherwise, as OpenAI's
    files are. Only a known suffix is ever used: nothing of the name reaches the path."""
    low = filename.lower()
    return next((s for s in KNOWN_SUFFIXES if low.endswith(s)), ".jsonl")


def file_object(row: FileRow) -> dict[str, Any]:
    return {"id": row.id, "object": "file", "bytes": row.bytes, "created_at": row.created_at,
            "filename": row.filename, "purpose": row.purpose, "status": "processed", "expires_at": None,
            "status_details": None}


class FileStore:
    def __init__(self, db: JobsDB, root: Path, max_bytes: int) -> None:
        self.db, self.root, self.max_bytes = db, root, max_bytes
        root.mkdir(parents=True, exist_ok=True)

    def add(self, project: str, filename: str, purpose: str, stream: BinaryIO) -> FileRow:
        if purpose not in PURPOSES:
            raise invalid(f"purpose {purpose!r} is not supported here: upload training data with purpose "
                          f"'fine-tune'", param="purpose")
        fid = file_id()
        path = self.root / f"{fid}{stored_suffix(filename)}"
        size = 0
        try:
            with path.open("wb") as out:
                while chunk := stream.read(CHUNK):
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise JobsError(413, f"the file is over {self.max_bytes} bytes, this server's limit "
                                        "(tunelab serve --max-file-mb)", param="file", code="file_too_large")
                    out.write(chunk)
            if size == 0:
                raise invalid("the file is empty", param="file")
            return self.record(project, clean_filename(filename), purpose, path, fid)
        except BaseException as exc:  # no part of the file, and no row, stays behind
            path.unlink(missing_ok=True)
            if isinstance(exc, Exception) and not isinstance(exc, JobsError) and is_disk_full(exc, self.root):
                log.error("an upload was refused: %s", DiskFullError(f"an upload ({size} bytes so far)", self.root))
                raise disk_full() from None
            raise

    def record(self, project: str, filename: str, purpose: str, path: Path, fid: str | None = None) -> FileRow:
        """A file the service wrote itself (a job's results), under the job's project."""
        row = FileRow(id=fid or file_id(), project=project, filename=filename, purpose=purpose,
                      bytes=path.stat().st_size, created_at=now(), path=str(path))
        with self.db.session() as s:
            s.add(row)
        return row

    def get(self, project: str, fid: str, param: str = "file_id") -> FileRow:
        with self.db.sessions() as s:
            row = s.get(FileRow, fid)
        if row is None or row.project != project:
            raise not_found("file", fid, param)
        return row

    def list(self, project: str, *, purpose: str | None = None, limit: int = 10000, after: str | None = None,
             order: str = "desc") -> tuple[list[FileRow], bool]:
        if order not in ("asc", "desc"):
            raise invalid("order must be asc or desc", param="order")
        q = select(FileRow).where(FileRow.project == project)
        if purpose:
            q = q.where(FileRow.purpose == purpose)
        key = (FileRow.created_at, FileRow.id)
        q = q.order_by(*(k.asc() if order == "asc" else k.desc() for k in key))
        with self.db.sessions() as s:
            rows = list(s.scalars(q))
        if after:
            ids = [r.id for r in rows]
            rows = rows[ids.index(after) + 1:] if after in ids else []
        return rows[:limit], len(rows) > limit

    def delete(self, project: str, fid: str) -> None:
        row = self.get(project, fid)
        with self.db.session() as s:
            s.delete(s.get(FileRow, row.id))
        Path(row.path).unlink(missing_ok=True)

    def copy_to(self, row: FileRow, dest: Path) -> Path:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(row.path, dest)
        return dest
