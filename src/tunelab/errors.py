"""The base class of every error a user can fix: bad config, data, model reference or run directory.

The CLI catches this one class and prints its message (which says where and what to do) instead of a
traceback."""

from __future__ import annotations

import contextlib
import errno
import shutil
from collections.abc import Iterator
from pathlib import Path


class TunelabError(Exception):
    """A problem in what the user gave tunelab; the message names the place and the fix."""


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
# How libraries that don't raise OSError say it: safetensors (Rust io::Error), SQLite, the OS's own words
NO_SPACE_WORDS = ("No space left on device", "Disk quota exceeded", "StorageFull", "os error 28",
                  "database or disk is full")
NEARLY_FULL = 1 << 20  # bytes: a write that failed with less than this left free was a full disk


class DiskFullError(TunelabError, OSError):
    """The disk (or the user's quota) filled up while tunelab wrote `what` into `where`. An OSError too, so code
    that already handles a failed write goes on handling it."""

    def __init__(self, what: str, where: str | Path, todo: str = "free space on that disk and try again") -> None:
        self.what, self.where, self.todo = what, str(where), todo
        super().__init__(f"disk full while writing {what} to {where} ({free_text(where)} free): {todo}")
        self.errno = errno.ENOSPC

    def __reduce__(self) -> tuple[type, tuple[str, str, str]]:  # pickled (to another process) as it was made
        return type(self), (self.what, self.where, self.todo)


def free_bytes(where: str | Path) -> int | None:
    """Free bytes on the filesystem that holds `where` (its nearest existing parent); None if it can't be told."""
    p = Path(where)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def size_text(n: float) -> str:
    """Bytes as people read them: 512 B, 16.4 KB, 1.2 GB."""
    units, i = ("B", "KB", "MB", "GB", "TB"), 0
    while n >= 1000 and i < len(units) - 1:
        n, i = n / 1000, i + 1
    return f"{n:.0f} B" if i == 0 else f"{n:.1f} {units[i]}"


def free_text(where: str | Path) -> str:
    free = free_bytes(where)
    return "unknown" if free is None else size_text(free)


def is_disk_full(exc: BaseException, where: str | Path | None = None) -> bool:
    """Whether `exc` (or an error it came from) is a full disk or an exhausted quota. Given `where` (what was being
    written), a failed write with the disk nearly full there counts too: torch.save and numpy report a short write
    without the OS's error number."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, DiskFullError) or (isinstance(e, OSError) and e.errno in NO_SPACE):
            return True
        if any(w in str(e) for w in NO_SPACE_WORDS):
            return True
        e = e.__cause__ or e.__context__
    if isinstance(exc, OSError) and exc.errno is not None:
        return False  # the OS said what went wrong, and it was something else
    if where is not None and isinstance(exc, OSError | RuntimeError):
        free = free_bytes(where)
        return free is not None and free < NEARLY_FULL
    return False


@contextlib.contextmanager
def writing(what: str, where: str | Path, todo: str = "free space on that disk and try again") -> Iterator[None]:
    """Turn a full disk while writing `what` into `where` into a DiskFullError that says so, and what to do."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as exc:  # safetensors' errors are neither OSError nor RuntimeError
        if is_disk_full(exc, where):
            raise DiskFullError(what, where, todo) from exc
        raise
