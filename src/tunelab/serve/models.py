"""What the server serves: the base model (any tunelab model reference, merged) and adapters on top of it.

An adapter is a tunelab run directory or a PEFT adapter directory. It must have been trained on the
server's base: a run is checked by following its chain of base models; a bare adapter directory carries
no reliable record of its base, so it is taken on trust.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config.data import DataConfig
from ..data.templates import render_chat
from ..models.integrity import check_adapter
from ..models.load import ModelError, ModelRef, load_tokenizer, merge_adapters, resolve, tokenizer_path
from ..models.registry import ALIASES
from ..runs import RunDir


@dataclass
class Base:
    model: Any
    tokenizer: Any
    name: str
    resolved: ModelRef
    system_prompt: str | None = None
    dtype: str = "fp32"


@dataclass
class AdapterSource:
    path: Path  # the PEFT adapter directory
    run: Path | None = None
    system_prompt: str | None = None
    train_data: Path | None = None
    data: DataConfig = field(default_factory=DataConfig)  # the run's data section

    def info(self) -> dict[str, Any]:
        caveat = (RunDir(self.run).summary().get("domain") or {}).get("caveat") if self.run else None
        return {"source": str(self.run or self.path), "system_prompt": self.system_prompt, "caveat": caveat}


def load_base(ref: str | None, *, name: str | None = None, dtype: str = "fp32") -> Base:
    import torch
    from transformers import AutoModelForCausalLM

    from ..device import device

    res = resolve(ref)
    run = RunDir(res.run) if res.run is not None else None
    if run is not None and run.labels():
        raise ModelError(f"{res.run}: a classification-head run answers with labels, not text; serve a "
                         f"generative model (train with task: generate) or use `tunelab eval` for this one")
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.float32}[dtype]
    tokenizer = load_tokenizer(tokenizer_path(res))
    model = AutoModelForCausalLM.from_pretrained(res.path, dtype=torch.float32)
    model = merge_adapters(model, res.adapters)  # a run served as the base: its adapters folded in
    model.to(device(), dtype=torch_dtype)
    if dtype == "int8":  # the base's linear layers int8; norms, embeddings and adapters stay fp32
        from ..models.weight_int8 import quantize_linears

        quantize_linears(model)
    model.eval()
    system = run.config().data.system_prompt if run is not None else None
    return Base(model, tokenizer, name or default_name(ref), res, system, dtype)


def default_name(ref: str | None) -> str:
    if ref is None or ref in ALIASES:
        return ref or next(iter(ALIASES))
    return Path(ref).expanduser().resolve().name


def adapter_source(ref: str, base: Base) -> AdapterSource:
    p = Path(ref).expanduser()
    run = RunDir(p)
    if p.is_dir() and run.is_run():
        res = resolve(str(p))  # checks the run completed
        if run.has_full_model():
            raise ModelError(f"{p}: a full fine-tune has no adapter; serve it as the base: "
                             f"tunelab serve --model {p}")
        if run.labels():
            raise ModelError(f"{p}: a classification-head run can't be served as a chat adapter")
        if Path(res.path).resolve() != Path(base.resolved.path).resolve() \
                or [a.resolve() for a in res.adapters[:-1]] != [a.resolve() for a in base.resolved.adapters]:
            raise ModelError(
                f"{p}: trained on a different base ({' + '.join([res.path, *map(str, res.adapters[:-1])])}) than "
                f"the server's ({' + '.join([base.resolved.path, *map(str, base.resolved.adapters)])}); start "
                f"the server with --model set to that base, or export the run merged")
        data = run.config().data
        check_adapter(run.adapter)  # cut short or garbled: refused before anything of it is loaded
        return AdapterSource(run.adapter, run=p, system_prompt=data.system_prompt,
                             train_data=_find(data.train, p) if data.train else None, data=data)
    if p.is_dir() and (p / "adapter_config.json").is_file():
        check_adapter(p)
        return AdapterSource(p)
    raise ModelError(f"{ref}: not an adapter: expected a tunelab run directory (a folder `tunelab train` wrote) "
                     f"or a PEFT adapter directory (adapter_config.json)")


def _find(train: str, run: Path) -> Path | None:
    """Training data paths are written as given, relative to where training ran: try the likely places."""
    for candidate in (Path(train), run.parent.parent / train, run / train):
        if candidate.exists():
            return candidate
    return None


def training_prompts(src: AdapterSource, tokenizer: Any, limit: int = 500, seed: int = 0) -> list[list[int]]:
    """The prompts an adapter was tuned on, tokenised as the server would tokenise a request."""
    from ..data.load import load_records

    if src.train_data is None:
        return []
    loaded = load_records(src.train_data, src.data.format, src.data.columns, src.system_prompt)
    records = loaded.records
    random.Random(seed).shuffle(records)
    out = []
    for rec in records[:limit]:
        if rec.kind == "chat":
            last = max((i for i, m in enumerate(rec.messages) if m["role"] == "assistant"), default=None)
            msgs = [{"role": m["role"], "content": m["content"]} for m in rec.messages[:last]]
            if not msgs or tokenizer.chat_template is None:
                continue
            out.append(list(render_chat(tokenizer, msgs, add_generation_prompt=True, tokenize=True,
                                        return_dict=True)["input_ids"]))
        elif rec.kind == "completion":
            out.append(tokenizer(rec.prompt, add_special_tokens=True)["input_ids"])
        else:
            out.append(tokenizer(rec.text, add_special_tokens=True)["input_ids"])
    return out
