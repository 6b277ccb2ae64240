"""Files written whole or not at all: a killed process never leaves half a JSON file behind."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import writing


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write to a temporary file beside `path`, then rename it over `path` (atomic on POSIX)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # per process: concurrent writers don't collide
    with writing(path.name, path.parent):  # a full disk: DiskFullError naming the file, the old version kept
        try:
            tmp.write_bytes(data)
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
    return path


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def remove_leftovers(root: str | Path) -> int:
    """Delete the temporary files that killed processes left under `root` (a live writer's are kept)."""
    removed = 0
    for tmp in Path(root).rglob(".*.tmp"):
        pid = tmp.name.rsplit(".", 2)[-2]
        if pid.isdigit() and _alive(int(pid)):
            continue
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
