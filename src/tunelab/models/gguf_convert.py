"""One-time conversion of a GGUF file to a plain safetensors + tokenizer directory.

transformers loads GGUF dequantized but keeps the model flagged as quantized, so Trainer refuses to
train it and save_pretrained refuses to save it. We rebuild the model from its config without the
quantization flag, copy the weights, and save once; reloads then take well under a second.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

from filelock import FileLock

from ..errors import writing
from ..filecheck import safetensors_problem
from ..home import home
from .integrity import check_gguf, check_weights, gguf_load_error
from .registry import PackagedGguf

COMPLETE = "tunelab-converted.json"  # written last: a directory without it is not a usable cache


def _fingerprint(gguf: Path) -> str:
    st = gguf.stat()
    return hashlib.sha256(f"{gguf.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]


def cache_dir_for(gguf: Path) -> Path:
    return home() / "models" / f"{gguf.stem}-{_fingerprint(gguf)}"


def is_complete(d: Path) -> bool:
    return (d / COMPLETE).is_file()


def _cache_damaged(out: Path) -> bool:
    """A converted copy whose weights were cut short or garbled since (a disk that filled, a copy interrupted)."""
    return any(safetensors_problem(f) for f in out.glob("*.safetensors"))


def convert_gguf(gguf: Path, out: Path | None = None, *, quiet: bool = False,
                 packaged: PackagedGguf | None = None) -> Path:
    """Convert (once) and return the HF directory; safe against interruption and concurrent runs. A GGUF cut short
    or garbled is refused before anything is written (DamagedFileError), and so is a converted copy damaged since
    (it is converted again). `packaged`: the package that ships the file, whose recorded hash it must match."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out = out or cache_dir_for(gguf)
    if is_complete(out) and not _cache_damaged(out):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if is_complete(out) and not _cache_damaged(out):
            return out
        check_gguf(gguf, packaged)
        if not quiet:
            # stderr: a one-off note must not spoil the JSON a command prints on stdout
            print(f"Converting {gguf.name} to safetensors once (about 20 s); cached in {out}", file=sys.stderr)
        t0 = time.time()
        tmp = out.with_name(out.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        src_dir, name = str(gguf.parent), gguf.name
        try:
            tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=name)
            loaded = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=name, dtype=torch.float32)
            config = AutoConfig.from_pretrained(src_dir, gguf_file=name)
        except Exception as exc:  # cut short or garbled (said so), or a GGUF transformers can't read
            raise gguf_load_error(gguf, exc) from None
        weights = loaded.state_dict()
        check_weights(weights, gguf)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(weights)
        model.generation_config = loaded.generation_config
        try:
            with writing("the converted model", out.parent, "free space there, or set TUNELAB_HOME to a disk with "
                         "room (the converted model takes about 4 bytes a parameter)"):
                model.save_pretrained(tmp)
                tokenizer.save_pretrained(tmp)
                (tmp / COMPLETE).write_text(json.dumps({"source": str(gguf), "seconds": round(time.time() - t0, 1)}))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # its space back at once, not at the next conversion
            raise
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    return out
