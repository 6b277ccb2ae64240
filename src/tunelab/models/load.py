"""Model references -> (model, tokenizer).

A reference is an alias (the embedded default), a local HF directory, a local .gguf file, a tunelab
run directory (base + adapter), or a hub id (which must fail fast and clearly when offline).
"""

from __future__ import annotations

import json
import os
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .gguf_convert import convert_gguf
from .registry import ALIASES, DEFAULT_MODEL


class ModelError(ValueError):
    """A model reference that can't be loaded; the message says why and what to do."""


@dataclass
class Resolved:
    kind: str  # alias | dir | gguf | run | hub
    path: str  # HF directory or hub id of the base weights
    adapters: list[Path] = field(default_factory=list)  # run directories: adapters to apply in order
    run: Path | None = None

    @property
    def adapter(self) -> Path | None:
        """The run's own adapter (the last one); earlier ones come from the runs it started from."""
        return self.adapters[-1] if self.adapters else None


def is_run_dir(p: Path) -> bool:
    return (p / "config.yaml").is_file() and (p / "summary.json").is_file()


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub answers on 443 within `timeout` seconds in all. Socket timeouts don't cover name
    resolution (a resolver that never answers blocks for its own timeouts, tens of seconds), so the
    probe runs in a daemon thread that is abandoned when it takes too long."""
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    answer: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, 443), timeout=timeout):
                answer.append(True)
        except OSError:
            answer.append(False)

    thread = threading.Thread(target=probe, name="tunelab-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(answer and answer[0])


def run_base(run: Path) -> str:
    import yaml

    cfg = yaml.safe_load((run / "config.yaml").read_text()) or {}
    base = (cfg.get("model") or {}).get("base") or DEFAULT_MODEL
    return str(base)


def resolve(ref: str | None) -> Resolved:
    ref = ref or DEFAULT_MODEL
    if ref in ALIASES:
        return Resolved("alias", str(convert_gguf(ALIASES[ref].path())))
    p = Path(ref).expanduser()
    if p.exists():
        if p.is_file() and p.suffix == ".gguf":
            return Resolved("gguf", str(convert_gguf(p)))
        if p.is_dir() and is_run_dir(p):
            summary = json.loads((p / "summary.json").read_text())
            if summary.get("status") != "completed":
                raise ModelError(f"{p}: this run did not finish (status {summary.get('status')!r}); "
                                 f"continue it with `tunelab train {p / 'config.yaml'} --resume`")
            if (p / "model").is_dir():
                return Resolved("run", str(p / "model"), run=p)
            base = resolve(run_base(p))
            return Resolved("run", base.path, adapters=[*base.adapters, p / "adapter"], run=p)
        if p.is_dir() and (p / "config.json").is_file():
            return Resolved("dir", str(p))
        raise ModelError(f"{p}: not a model: expected an HF model directory (config.json), a tunelab run "
                         f"directory (config.yaml + summary.json) or a .gguf file")
    looks_like_hub = ref.count("/") == 1 and not ref.startswith((".", "/", "~"))
    if not looks_like_hub:
        raise ModelError(f"'{ref}': no such file, directory or alias; aliases: {', '.join(ALIASES)}")
    if os.environ.get("HF_HUB_OFFLINE") not in (None, "", "0") or not _hub_reachable():
        from huggingface_hub import snapshot_download

        try:  # a model downloaded earlier may be in the hub cache
            return Resolved("hub", snapshot_download(ref, local_files_only=True))
        except Exception:
            raise ModelError(
                f"'{ref}' is not a local path, and as a Hugging Face Hub id it can't be fetched: the hub "
                f"can't be reached from here and it is not in the local hub cache. Use a local model "
                f"directory, a .gguf file, a run directory, or the alias '{DEFAULT_MODEL}'.") from None
    return Resolved("hub", ref)


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    resolved: Resolved
    labels: list[str] | None = None  # classification-head runs


def load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def merge_adapters(model: Any, adapters: list[Path]) -> Any:
    """Fold adapters into the weights, in order (a run trained on top of another run)."""
    from peft import PeftModel

    for adapter in adapters:
        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    return model


def load(ref: str | None = None, *, dtype: Any = None) -> LoadedModel:
    """Load a model reference for inference: base weights, earlier runs merged, the run's adapter on top."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    res = resolve(ref)
    dtype = dtype or torch.float32
    labels, num_labels = None, None
    head_labels = res.run / "labels.json" if res.run else None
    if head_labels is not None and head_labels.is_file():
        labels = json.loads(head_labels.read_text())
        num_labels = len(labels)
    tok = load_tokenizer(str(res.run / "tokenizer") if res.run and (res.run / "tokenizer").is_dir() else res.path)
    if num_labels:
        model = AutoModelForSequenceClassification.from_pretrained(res.path, num_labels=num_labels, dtype=dtype)
        model.config.pad_token_id = tok.pad_token_id
    else:
        model = AutoModelForCausalLM.from_pretrained(res.path, dtype=dtype)
    model = merge_adapters(model, res.adapters[:-1])
    if res.adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(res.adapter))
    from ..training.hardware import device

    model.to(device())
    model.eval()
    return LoadedModel(model, tok, res, labels)
