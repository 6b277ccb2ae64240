"""A run stopped by a full disk: what it was writing, the checkpoint it left half-written removed, how to go on.

A checkpoint the disk cut short is never resumed from (runs/checkpoint.py tells it from a whole one), but it takes
space the run's own records (summary.json) need to say what happened; so it goes, and the newest whole checkpoint
stays for `--resume`."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..errors import DiskFullError, is_disk_full, size_text
from .checkpoint import problem
from .directory import RunDir, checkpoint_step


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _written_file(exc: BaseException) -> Path | None:
    """The file an OSError in `exc`'s chain names."""
    e: BaseException | None = exc
    while e is not None:
        if isinstance(e, OSError) and e.filename:
            return Path(e.filename)
        e = e.__cause__ or e.__context__
    return None


def stopped_by_full_disk(run: RunDir, exc: BaseException, phase: str | None = None) -> DiskFullError | None:
    """The error to raise for a run that `exc` stopped, when it is a full disk (None otherwise): it names what was
    being written, where, the checkpoint a resume continues from, and the command. The checkpoint being written
    when the disk filled (newer than every whole one) is removed."""
    # the cheap question first (checking checkpoints reads them whole): most failures are not a full disk
    if not is_disk_full(exc, run.checkpoints if run.checkpoints.is_dir() else None):
        return None
    whole, cut = None, []
    if run.checkpoints.is_dir():
        saved = sorted((d for d in run.checkpoints.glob("checkpoint-*") if d.name.rsplit("-", 1)[-1].isdigit()),
                       key=checkpoint_step, reverse=True)
        for d in saved:
            if problem(d) is None:
                whole = d
                break
            cut.append(d)
    if not is_disk_full(exc, run.checkpoints if cut else None):  # a short write counts only beside a cut one
        return None
    if cut:
        what, where = cut[0].name, run.checkpoints
    elif isinstance(exc, DiskFullError):
        what, where = exc.what, Path(exc.where)
    elif (f := _written_file(exc)) is not None:
        what, where = f.name, f.parent
    elif phase == "saving":
        what, where = "the trained model", run.path
    else:
        what, where = "the run's files", run.path
    for d in cut:  # unfinished: nothing resumes from them, and their space is needed now
        shutil.rmtree(d, ignore_errors=True)
    if whole is not None:
        kept = (f"the last whole checkpoint, {whole.name}, is kept (each takes about {size_text(_size(whole))}; "
                f"train.keep_checkpoints sets how many stay)")
    else:
        kept = "no checkpoint was whole yet, so a resume starts the run from the beginning"
    todo = f"{kept}. Free space there and continue with `tunelab train {run.config_path} --resume`"
    return DiskFullError(what, where, todo)
