"""One-time conversion of a GGUF file to a plain safetensors + tokenizer directory.

transformers loads GGUF dequantized but keeps the model flagged as quantized, so Trainer refuses to
train it and save_pretrained refuses to save it. We rebuild the model from its config without the
quantization flag, copy the weights, and save once; reloads then take well under a second.

transformers rebuilds the tokenizer from the GGUF's vocabulary and merges, but for some llama.cpp
pre-tokenizer names (`tokenizer.ggml.pre`), SmolLM2's `smollm` among them, it falls back to plain
byte-level splitting. That differs from the original tokenizer (and from llama.cpp) on whitespace
before digits and on non-ASCII numerals, so the saved tokenizer.json gets the original pre-tokenizer.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from filelock import FileLock

from ..errors import writing
from ..filecheck import safetensors_problem
from ..home import home
from .integrity import check_gguf, check_weights, gguf_load_error
from .registry import PackagedGguf

COMPLETE = "tunelab-converted.json"  # written last: a directory without it is not a usable cache
TOKENIZER_FIXED = "tokenizer_pre"  # the key in COMPLETE: the pre-tokenizer was set from the GGUF's `pre` name

# llama.cpp names that share one regex set in llama-vocab.cpp: each digit alone (\p{N}), then gpt2's regex;
# the original tokenizers spell that Sequence[Digits(individual_digits=True), ByteLevel].
DIGITS_THEN_GPT2 = frozenset({"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"})


def gguf_pre_name(gguf: Path) -> str | None:
    """`tokenizer.ggml.pre` of a GGUF, read from its metadata alone (milliseconds: no tensor, no vocabulary)."""
    from transformers.integrations.gguf.reader import read_gguf_metadata

    metadata, _ = read_gguf_metadata(str(gguf))
    pre = metadata.get("tokenizer.ggml.pre")
    return pre if isinstance(pre, str) else None


def original_pre_tokenizer(pre: str | None) -> Any | None:
    """The HF pre-tokenizer llama.cpp's `pre` name stands for, where transformers' GGUF loader doesn't build it
    (None: the loader's own is right, or the name is not one tunelab knows)."""
    from tokenizers import pre_tokenizers

    if pre in DIGITS_THEN_GPT2:
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    return None


def fix_pre_tokenizer(tokenizer: Any, pre: str | None) -> bool:
    """Give a tokenizer loaded from a GGUF the pre-tokenizer its `pre` name means; True if it changed."""
    wanted = original_pre_tokenizer(pre)
    backend = tokenizer.backend_tokenizer
    if wanted is None or _pre_json(backend.pre_tokenizer) == _pre_json(wanted):
        return False
    backend.pre_tokenizer = wanted
    return True


def _pre_json(pre: Any) -> str:
    from tokenizers import Tokenizer, models

    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre
    return json.dumps(json.loads(t.to_str()).get("pre_tokenizer"), sort_keys=True)


def _repair_tokenizer(out: Path, gguf: Path) -> None:
    """A cache converted before the pre-tokenizer was set: fix its tokenizer.json in place (no reconversion)."""
    from tokenizers import Tokenizer

    marker = json.loads((out / COMPLETE).read_text())
    try:
        pre = gguf_pre_name(gguf)
    except Exception:  # noqa: BLE001 - unreadable metadata: leave the cache as it is, the model still loads
        return
    wanted = original_pre_tokenizer(pre)
    file = out / "tokenizer.json"
    if wanted is not None and file.is_file():
        tk = Tokenizer.from_file(str(file))
        if _pre_json(tk.pre_tokenizer) != _pre_json(wanted):
            tk.pre_tokenizer = wanted
            tmp = file.with_name(file.name + ".tmp")
            tk.save(str(tmp))
            os.replace(tmp, file)
    marker[TOKENIZER_FIXED] = pre
    tmp = out / (COMPLETE + ".tmp")
    tmp.write_text(json.dumps(marker))
    os.replace(tmp, out / COMPLETE)


def _tokenizer_fixed(out: Path) -> bool:
    try:
        return TOKENIZER_FIXED in json.loads((out / COMPLETE).read_text())
    except (OSError, ValueError):
        return False


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
    if is_complete(out) and _tokenizer_fixed(out) and not _cache_damaged(out):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if is_complete(out) and not _cache_damaged(out):
            if not _tokenizer_fixed(out):
                _repair_tokenizer(out, gguf)
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
            pre = gguf_pre_name(gguf)
        except Exception as exc:  # cut short or garbled (said so), or a GGUF transformers can't read
            raise gguf_load_error(gguf, exc) from None
        fix_pre_tokenizer(tokenizer, pre)
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
                (tmp / COMPLETE).write_text(json.dumps({"source": str(gguf), "seconds": round(time.time() - t0, 1),
                                                      TOKENIZER_FIXED: pre}))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # its space back at once, not at the next conversion
            raise
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    return out
