"""Tokenised rows cached across runs: re-running on the same file with the same tokenizer and encoding
settings skips tokenisation. The key covers the file's bytes, the tokenizer and every setting that changes
the tokens, so a stale entry is never used."""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import atomic
from ..home import home

CACHE_VERSION = 2  # bump when the cached objects change shape


def _source_digest(path: Path, h: Any) -> None:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    parts = [backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items())),
             str(getattr(tokenizer, "chat_template", None)), str(tokenizer.eos_token), str(tokenizer.bos_token),
             str(getattr(tokenizer, "add_bos_token", None))]
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


def cached(path: str | Path, tokenizer: Any, settings: dict[str, Any], build: Callable[[], Any]) -> tuple[Any, bool]:
    """build()'s result for this file + tokenizer + settings, from the cache when it is there.
    Returns (result, hit)."""
    from ..version import __version__

    src = Path(path)
    if not src.exists():
        return build(), False
    h = hashlib.sha256(str(src.resolve()).encode())  # rows carry their file:line, so the path is part of the key
    _source_digest(src, h)
    h.update(tokenizer_fingerprint(tokenizer).encode())
    h.update(repr(sorted(settings.items())).encode())
    h.update(f"{__version__}-{CACHE_VERSION}".encode())
    entry = home() / "tokenized" / f"{h.hexdigest()[:32]}.pkl"
    try:
        with entry.open("rb") as f:
            return pickle.load(f), True
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError):
        pass
    result = build()
    entry.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_bytes(entry, pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))  # never read half
    return result, False
