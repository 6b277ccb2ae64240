"""Whether a file is whole: its SHA-256, and a safetensors file's structure against its own header. Used for
checkpoints (runs) and for adapters (models), which sit in different layers: so it lives at the bottom."""

from __future__ import annotations

import hashlib
import json
import math
import struct
import zipfile
from pathlib import Path

DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4,
               "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def safetensors_problem(path: Path) -> str | None:
    """What is wrong with a safetensors file's structure (its header against its length), or None. Reads the header
    only."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"it has {size} bytes, too few for even its header's length: cut short"
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            return f"its header says it is {n:,} bytes long and the file has {size:,}: cut short, or garbled"
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return "its header is not valid JSON: garbled"
    if not isinstance(header, dict):
        return "its header is not a JSON object: garbled"
    end = 0
    for name, t in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, stop = (int(x) for x in t["data_offsets"])
            shape, dtype = [int(d) for d in t["shape"]], t["dtype"]
        except (KeyError, TypeError, ValueError):
            return f"its header's entry for {name!r} is garbled"
        if dtype in DTYPE_BYTES and stop - begin != math.prod(shape) * DTYPE_BYTES[dtype]:
            return f"its header's entry for {name!r} doesn't match its shape: garbled"
        end = max(end, stop)
    whole = 8 + n + end
    if whole > size:
        return f"it has {size:,} bytes where its header describes {whole:,}: cut short"
    if whole < size:
        return f"it has {size - whole:,} bytes more than its header describes: garbled"
    return None


def torch_zip_problem(path: Path) -> str | None:
    """What is wrong with a torch zip file (torch.save's format), or None: every member read against its CRC-32."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError):
        return "it is not a whole torch file: cut short or garbled"
    return f"{bad} in it fails its CRC check: garbled" if bad else None
