"""A trainer checkpoint, checked before a run resumes from it: never half of one.

The trainer writes a checkpoint's files one after the other (weights, optimizer, scheduler, RNG state, and
trainer_state.json last) into checkpoint-<step>/; a process killed on the way leaves some of them, possibly one
cut short, and a disk can damage any of them later. Once the trainer is done, a manifest (layout.CHECKPOINT_
MANIFEST, written atomically) records every file's size and SHA-256: a checkpoint that has one is intact when
every file matches it. A checkpoint without one (an earlier tunelab's, or a process killed between the trainer's
last file and the manifest) is checked by structure: the files a resume needs are there, JSON parses, a
safetensors file is as long as its header says, and torch's zip files pass their CRC checks.
"""

from __future__ import annotations

import json
from pathlib import Path

from .. import atomic
from ..filecheck import safetensors_problem, sha256, torch_zip_problem
from . import layout

TRAINER_STATE = "trainer_state.json"  # transformers' names; the trainer writes them, tunelab only reads them
# Without these a resume would quietly start a fresh optimizer, schedule or RNG (transformers skips a missing one)
NEEDED = (TRAINER_STATE, "optimizer.pt", "scheduler.pt", "rng_state.pth")
WEIGHTS = ("adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json", "adapter_model.bin",
           "pytorch_model.bin")
SET_ASIDE = "damaged-"  # a damaged checkpoint is kept beside the others as damaged-checkpoint-<step>


def write_manifest(checkpoint: Path) -> Path:
    """Record the size and SHA-256 of every file the trainer wrote into `checkpoint`: the mark that it is whole."""
    files = {str(p.relative_to(checkpoint)): {"bytes": p.stat().st_size, "sha256": sha256(p)}
             for p in sorted(checkpoint.rglob("*"))
             if p.is_file() and p.name != layout.CHECKPOINT_MANIFEST and not p.name.endswith(".tmp")}
    return atomic.write_json(checkpoint / layout.CHECKPOINT_MANIFEST, {"files": files})


def _by_manifest(checkpoint: Path, manifest: Path) -> str | None:
    try:
        files = json.loads(manifest.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        files = None
    if not isinstance(files, dict) or not all(isinstance(w, dict) and isinstance(w.get("bytes"), int)
                                              for w in files.values()):
        return f"{manifest.name} is garbled"
    for name, want in files.items():
        path = checkpoint / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != want.get("bytes"):
            return f"{name} has {size:,} bytes, {want['bytes']:,} were written: cut short or overwritten"
        if sha256(path) != want.get("sha256"):
            return f"{name} is garbled: its content is not what was written (SHA-256 differs)"
    return None


def _by_structure(checkpoint: Path) -> str | None:
    for name in NEEDED:
        if not (checkpoint / name).is_file():
            return f"{name} is missing" + (": the save did not finish" if name == TRAINER_STATE else "")
    if not any((checkpoint / w).is_file() for w in WEIGHTS):
        return f"no model weights ({' or '.join(WEIGHTS[:2])})"
    for path in sorted(p for p in checkpoint.iterdir() if p.is_file()):
        bad = None
        if path.suffix == ".json":
            try:
                json.loads(path.read_text())
            except (OSError, ValueError):
                bad = "is cut short or garbled (not valid JSON)"
        elif path.suffix == ".safetensors":
            bad = safetensors_problem(path)
            bad = bad and f"is damaged: {bad}"
        elif path.suffix in (".pt", ".pth", ".bin"):
            bad = torch_zip_problem(path)
            bad = bad and f"is damaged: {bad}"
        if bad:
            return f"{path.name} {bad}"
    return None


def problem(checkpoint: Path) -> str | None:
    """None when `checkpoint` is whole; otherwise what is wrong, naming the file."""
    try:
        manifest = checkpoint / layout.CHECKPOINT_MANIFEST
        return _by_manifest(checkpoint, manifest) if manifest.is_file() else _by_structure(checkpoint)
    except OSError as exc:
        return f"it can't be read ({type(exc).__name__}: {exc})"


def set_aside(checkpoint: Path) -> Path:
    """Move a damaged checkpoint out of the trainer's way (it would save the same step into it again), keeping
    it for a look: checkpoints/damaged-checkpoint-<step>[-n]."""
    target, n = checkpoint.with_name(SET_ASIDE + checkpoint.name), 2
    while target.exists():
        target, n = checkpoint.with_name(f"{SET_ASIDE}{checkpoint.name}-{n}"), n + 1
    checkpoint.rename(target)
    return target
