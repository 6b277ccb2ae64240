"""Model references -> (model, tokenizer).

A reference is an alias (the embedded default), a local HF directory, a local .gguf file, a tunelab
run directory (base + adapter), or a hub id (which must fail fast and clearly when offline).
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from ..device import device
from ..runs import RunDir
from .gguf_convert import convert_gguf
from .integrity import ModelError, check_adapter
from .registry import ALIASES, DEFAULT_MODEL

if TYPE_CHECKING:
    from ..config import TunelabConfig


@dataclass
class ModelRef:
    """A model reference resolved to the files that make the model."""

    kind: str  # alias | dir | gguf | run | hub
    path: str  # HF directory or hub id of the base weights
    adapters: list[Path] = field(default_factory=list)  # run directories: adapters to apply in order
    run: Path | None = None

    @property
    def adapter(self) -> Path | None:
        """The run's own adapter (the last one); earlier ones come from the runs it started from."""
        return self.adapters[-1] if self.adapters else None


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
    """The model reference a run started from."""
    return RunDir(run).config().model.base or DEFAULT_MODEL


def resolve(ref: str | None) -> ModelRef:
    ref = ref or DEFAULT_MODEL
    if ref in ALIASES:
        return ModelRef("alias", str(convert_gguf(ALIASES[ref].path(), packaged=ALIASES[ref])))
    p = Path(ref).expanduser()
    if p.exists():
        if p.is_file() and p.suffix == ".gguf":
            return ModelRef("gguf", str(convert_gguf(p)))
        run = RunDir(p)
        if p.is_dir() and run.is_run():
            status = run.status()
            if status != "completed":
                raise ModelError(f"{p}: this run did not finish (status {status!r}); continue it with "
                                 f"`tunelab train {run.config_path} --resume`")
            if run.has_full_model():
                return ModelRef("run", str(run.full_model), run=p)
            base = resolve(run_base(p))
            return ModelRef("run", base.path, adapters=[*base.adapters, run.adapter], run=p)
        if p.is_dir() and (p / "config.json").is_file():
            return ModelRef("dir", str(p))
        raise ModelError(f"{p}: not a model: expected an HF model directory (config.json), a tunelab run "
                         f"directory (a folder `tunelab train` wrote) or a .gguf file")
    looks_like_hub = ref.count("/") == 1 and not ref.startswith((".", "/", "~"))
    if not looks_like_hub:
        raise ModelError(f"'{ref}': no such file, directory or alias; aliases: {', '.join(ALIASES)}")
    if os.environ.get("HF_HUB_OFFLINE") not in (None, "", "0") or not _hub_reachable():
        from huggingface_hub import snapshot_download

        try:  # a model downloaded earlier may be in the hub cache
            return ModelRef("hub", snapshot_download(ref, local_files_only=True))
        except Exception:
            raise ModelError(
                f"'{ref}' is not a local path, and as a Hugging Face Hub id it can't be fetched: the hub "
                f"can't be reached from here and it is not in the local hub cache. Use a local model "
                f"directory, a .gguf file, a run directory, or the alias '{DEFAULT_MODEL}'.") from None
    return ModelRef("hub", ref)


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    resolved: ModelRef
    labels: list[str] | None = None  # classification-head runs

    def run_config(self) -> TunelabConfig | None:
        """The config of the run this model comes from; None for a model that is not a tunelab run."""
        return RunDir(self.resolved.run).config() if self.resolved.run is not None else None


def tokenizer_path(ref: ModelRef) -> str:
    """A run's own saved tokenizer (with its chat template), else the base model's."""
    if ref.run is not None and RunDir(ref.run).has_tokenizer():
        return str(RunDir(ref.run).tokenizer)
    return ref.path


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
        check_adapter(adapter)  # a damaged one is refused whole, before peft reads any of it
        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    return model


def load(ref: str | None = None, *, dtype: Any = None) -> LoadedModel:
    """Load a model reference for inference: base weights, earlier runs merged, the run's adapter on top."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    res = resolve(ref)
    dtype = dtype or torch.float32
    labels = RunDir(res.run).labels() if res.run else None
    tok = load_tokenizer(tokenizer_path(res))
    if labels:
        model = AutoModelForSequenceClassification.from_pretrained(res.path, num_labels=len(labels), dtype=dtype)
        model.config.pad_token_id = tok.pad_token_id
    else:
        model = AutoModelForCausalLM.from_pretrained(res.path, dtype=dtype)
    model = merge_adapters(model, res.adapters[:-1])
    if res.adapter is not None:
        from peft import PeftModel

        check_adapter(res.adapter)
        model = PeftModel.from_pretrained(model, str(res.adapter))
    model.to(device())
    model.eval()
    return LoadedModel(model, tok, res, labels)


def quantization_config(quantize: str) -> Any:
    """model.quantize -> transformers' BitsAndBytesConfig (None for none). 4bit: NF4, double quantization (the
    block scales quantized too), bf16 compute: QLoRA's recipe."""
    if quantize == "none":
        return None
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        from ..config import ConfigError

        raise ConfigError(f"model.quantize={quantize} needs bitsandbytes, which is not installed: "
                          "pip install 'tunelab[gpu]'")
    import torch
    from transformers import BitsAndBytesConfig

    if quantize == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def apply_liger(path: str) -> str:
    """Patch transformers' modelling code for this model's family with Liger's kernels (RMSNorm, SwiGLU, rotary
    embeddings), before the model is built; the loss stays tunelab's (chunked, label positions only). Returns
    the family patched; a ModelError for a family Liger does not cover."""
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN
    from transformers import AutoConfig

    family = AutoConfig.from_pretrained(path).model_type
    patch = MODEL_TYPE_TO_APPLY_LIGER_FN.get(family)
    if patch is None:
        raise ModelError(f"train.liger: Liger has no kernels for this model's family ({family}); set train.liger "
                         f"to auto or false")
    patch(rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False)
    return family


def starting_model(base: ModelRef, *, labels: list[str] | None = None, pad_token_id: int | None = None,
                   quantize: str = "none", liger: bool = False) -> Any:
    """The weights a training run starts from, in fp32 on this machine's device: the base with the adapters of
    the runs it continues merged in; with labels, a sequence-classification head on top (new, untrained).
    quantize (model.quantize): the frozen base in 4 or 8 bits through bitsandbytes, placed on the device as it
    loads; liger: Liger's kernels patched in first (training/auto.py decides both)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if liger:
        apply_liger(base.path)
    quant = quantization_config(quantize)
    # a quantized model is placed while it loads (bitsandbytes quantizes on the way to the device)
    # on this process's own GPU when there are several (LOCAL_RANK: torchrun's number for it on this machine)
    where: Any = int(os.environ.get("LOCAL_RANK", "0")) if device() == "cuda" else device()
    kw: dict[str, Any] = {"quantization_config": quant, "device_map": {"": where}} if quant else {}
    if labels is not None:
        model = AutoModelForSequenceClassification.from_pretrained(base.path, num_labels=len(labels),
                                                                   dtype=torch.float32, **kw)
        model.config.pad_token_id = pad_token_id
        model.config.id2label = dict(enumerate(labels))
        model.config.label2id = {lab: i for i, lab in enumerate(labels)}
    else:
        model = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32, **kw)  # autocast does the rest
    model = merge_adapters(model, base.adapters)
    return model if quant else model.to(device())


def param_count(path: str) -> int:
    """Parameters of a model directory, from its safetensors headers (no weights read); a model with no
    safetensors (a hub id not on disk) counts as the default model's 135M."""
    import math

    from safetensors import safe_open

    files = sorted(Path(path).glob("*.safetensors")) if Path(path).is_dir() else []
    total = 0
    for f in files:
        with safe_open(str(f), "pt") as st:
            for key in st.keys():  # noqa: SIM118 (safe_open is not a mapping)
                total += math.prod(st.get_slice(key).get_shape())
    return total or 135_000_000
