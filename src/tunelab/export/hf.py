"""`--format hf` (adapters merged into the base) and `--format adapter` (the PEFT adapter alone), and the
README.md model card every format gets."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from ..models.integrity import SHA_KEY, check_adapter
from ..runs import RunDir
from ..runs import layout as files
from .source import ExportError, Log, Source

TORCH_DTYPES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}


def torch_dtype(name: str) -> Any:
    import torch

    return getattr(torch, TORCH_DTYPES[name])


# --- the merged model ------------------------------------------------------------------------------

def load_merged(src: Source, log: Log | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) with every adapter folded in, in float32 on the CPU: merging in f32 and casting
    once at the end keeps the merged weights as close to base + adapter as the output dtype allows."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from ..models.load import load_tokenizer, merge_adapters

    log = log or (lambda _msg: None)
    res = src.resolved
    log(f"loading {res.path}" + (f" + {len(res.adapters)} adapter(s)" if res.adapters else ""))
    tok = load_tokenizer(src.tokenizer_path())
    if src.labels:
        model = AutoModelForSequenceClassification.from_pretrained(
            res.path, num_labels=len(src.labels), dtype=torch.float32)
        model.config.pad_token_id = tok.pad_token_id
    else:
        model = AutoModelForCausalLM.from_pretrained(res.path, dtype=torch.float32)
    if res.adapters:
        log("merging the adapter into the base weights")
        model = merge_adapters(model, res.adapters)
    if src.labels:
        model.config.id2label = dict(enumerate(src.labels))
        model.config.label2id = {lab: i for i, lab in enumerate(src.labels)}
    model.eval()
    return model, tok


def _generation_config(model: Any, tok: Any) -> None:
    """Make sure a plain `generate()` stops where tunelab's does: at the tokenizer's end-of-turn token."""
    gen = getattr(model, "generation_config", None)
    if gen is None:
        return
    eos = gen.eos_token_id
    eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
    if tok.eos_token_id is not None and tok.eos_token_id not in eos_ids:
        eos_ids.insert(0, tok.eos_token_id)
    gen.eos_token_id = eos_ids[0] if len(eos_ids) == 1 else eos_ids
    if gen.pad_token_id is None:
        gen.pad_token_id = tok.pad_token_id
    if gen.bos_token_id is None and tok.bos_token_id is not None:
        gen.bos_token_id = tok.bos_token_id


def export_hf(src: Source, out: Path, *, dtype: str = "f32", log: Log | None = None) -> Path:
    log = log or (lambda _msg: None)
    model, tok = load_merged(src, log)
    model = model.to(torch_dtype(dtype))
    _generation_config(model, tok)
    log(f"writing safetensors ({dtype}) to {out}")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    cls = "AutoModelForSequenceClassification" if src.labels else "AutoModelForCausalLM"
    usage = (f"```python\nfrom transformers import AutoTokenizer, {cls}\n\n"
             f"model = {cls}.from_pretrained(\"{out.name.removesuffix('.partial')}\")\n"
             f"tokenizer = AutoTokenizer.from_pretrained(\"{out.name.removesuffix('.partial')}\")\n```")
    write_card(out, src, "hf", f"merged model, safetensors, {dtype}", usage)
    return out


# --- the adapter alone ----------------------------------------------------------------------------

def export_adapter(src: Source, out: Path, *, dtype: str | None = None, log: Log | None = None) -> Path:
    log = log or (lambda _msg: None)
    res = src.resolved
    if src.run is None:
        raise ExportError(f"{src.ref} is not a tunelab run directory, so it has no adapter: export the whole "
                          f"model with --format hf or --format gguf")
    if src.full_finetune:
        raise ExportError(f"{src.run} is a full fine-tune (peft.method=full): it has no adapter, every weight "
                          f"changed. Use --format hf (or --format gguf) to export the model")
    if res.adapter is None or not (res.adapter / "adapter_config.json").is_file():
        raise ExportError(f"{src.run}: no adapter/adapter_config.json in this run; use --format hf")
    if len(res.adapters) > 1:
        earlier = ", ".join(str(a.parent) for a in res.adapters[:-1])
        raise ExportError(f"{src.run} continued from another run ({earlier}): its adapter only applies on top "
                          f"of that run's merged weights, not on the base model. Use --format hf or gguf, "
                          f"which merge every adapter in order")
    check_adapter(res.adapter)  # a damaged adapter is refused, not copied on
    log(f"copying the adapter from {res.adapter}")
    cfg = json.loads((res.adapter / "adapter_config.json").read_text())
    weights = res.adapter / "adapter_model.safetensors"
    if not weights.is_file():
        raise ExportError(f"{res.adapter}: adapter_model.safetensors is missing; the run's adapter is incomplete")
    (out / "adapter_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    if dtype is None:
        shutil.copy2(weights, out / "adapter_model.safetensors")
    else:
        from safetensors.torch import load_file, save_file

        tensors = {k: v.to(torch_dtype(dtype)).contiguous() for k, v in load_file(str(weights)).items()}
        save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    from ..models.load import load_tokenizer

    load_tokenizer(src.tokenizer_path()).save_pretrained(out)
    if src.labels:
        (out / files.LABELS).write_text(json.dumps(src.labels, indent=2) + "\n")
    base_path = cfg.get("base_model_name_or_path") or res.path
    name = out.name.removesuffix(".partial")
    usage = ("```python\nfrom peft import PeftModel\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
             f"base = AutoModelForCausalLM.from_pretrained(\"{base_path}\")\n"
             f"model = PeftModel.from_pretrained(base, \"{name}\")\n"
             f"tokenizer = AutoTokenizer.from_pretrained(\"{name}\")\n```\n\n"
             f"The adapter was trained on the weights at `{base_path}` (the run's base, `{src.base}`). "
             "Apply it to exactly those weights: a differently quantized or converted copy of the same model "
             "gives different results.")
    write_card(out, src, "adapter", f"PEFT adapter ({cfg.get('peft_type', 'LORA')}, r={cfg.get('r')})", usage)
    return out


# --- the model card --------------------------------------------------------------------------------

_SKIP_SUMMARY = {"name", "started", "updated", "status", "task", "base_model", "labels", "best_checkpoint",
                 "precision", SHA_KEY}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _scalars(d: dict[str, Any]) -> list[tuple[str, Any]]:
    return [(k, v) for k, v in d.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)]


def _table(rows: list[tuple[str, Any]], head: tuple[str, str] = ("", "")) -> str:
    lines = [f"| {head[0]} | {head[1]} |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in rows]
    return "\n".join(lines)


def _data_section(rep: dict[str, Any]) -> str:
    keys = ["source", "rows", "valid_rows", "train_rows", "validation_rows", "duplicates", "truncated",
            "dropped_too_long", "max_length", "prompt_tokens", "completion_tokens", "train_validation_overlap"]
    rows = [(k, rep[k]) for k in keys if k in rep and rep[k] is not None]
    parts = [_table(rows, ("", "value"))]
    if rep.get("formats"):
        parts.append("Formats: " + ", ".join(f"`{p}`: {f}" for p, f in rep["formats"].items()))
    labels = rep.get("labels") or {}
    if labels:
        top = sorted(labels.items(), key=lambda kv: -kv[1])
        shown = ", ".join(f"{k} ({v})" for k, v in top[:20])
        parts.append(f"{len(labels)} labels: {shown}" + (", ..." if len(top) > 20 else ""))
    for what in ("errors", "warnings"):
        if rep.get(what):
            parts.append(f"{len(rep[what])} {what} (see {files.DATA_REPORT} in the run directory)")
    return "\n\n".join(parts)


def _eval_section(ev: dict[str, Any] | None, summary: dict[str, Any]) -> str:
    parts = []
    if ev:
        tuned = dict(_scalars(ev.get("model") or {}))
        base = dict(_scalars(ev.get("base") or {}))
        where = f" on `{ev['data']}`" if ev.get("data") else ""
        rows_note = f" ({ev['rows']} rows)" if ev.get("rows") else ""
        parts.append(f"`tunelab eval`{where}{rows_note}:")
        if base:
            lines = ["| metric | fine-tuned | base |", "|---|---|---|"]
            lines += [f"| {k} | {_fmt(v)} | {_fmt(base.get(k, ''))} |" for k, v in tuned.items()]
            parts.append("\n".join(lines))
        else:
            parts.append(_table(list(tuned.items()), ("metric", "fine-tuned")))
        cmp = ev.get("comparison") or {}
        if cmp.get("metric"):
            ci = cmp.get("ci95")
            ci_text = f", 95% CI [{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else ""
            parts.append(f"{cmp['metric']}: {_fmt(cmp.get('tuned'))} vs base {_fmt(cmp.get('base'))} "
                         f"(difference {_fmt(cmp.get('diff'))}{ci_text}).")
    rows = [(k, v) for k, v in _scalars(summary) if k not in _SKIP_SUMMARY]
    if rows:
        parts.append("From training:\n\n" + _table(rows, ("", "value")))
    return "\n\n".join(parts) if parts else "No evaluation was recorded for this run."


def model_card(src: Source, fmt: str, what: str, usage: str) -> str:
    from ..version import __version__

    lib = {"hf": "transformers", "adapter": "peft", "gguf": "gguf"}[fmt]
    tags = ["tunelab", src.task] + (["lora"] if src.resolved.adapters and fmt == "adapter" else [])
    front = ["---", f"library_name: {lib}", "tags:"] + [f"- {t}" for t in tags]
    base = src.base
    if base.count("/") == 1 and not base.startswith((".", "/", "~")):  # a hub id: the hub links it
        front.append(f"base_model: {base}")
    front.append("---")
    lines = [*front, "", f"# {src.name}", ""]
    if src.run is not None:
        method = "full fine-tune" if src.full_finetune else "LoRA fine-tune"
        lines.append(f"A {method} of `{base}` for **{src.task}**, trained with tunelab {__version__}.")
    else:
        lines.append(f"`{src.ref}`, exported with tunelab {__version__}.")
    lines += ["", f"This export: **{fmt}** — {what}. Written {time.strftime('%Y-%m-%d %H:%M')}.", ""]
    caveat = (src.summary or {}).get("domain", {}).get("caveat")
    if caveat:  # medical or legal data: said before anything else about the model
        lines += [f"> **Limits.** {caveat}", ""]
    if src.labels:
        lines += [f"Classification head over {len(src.labels)} labels: " + ", ".join(src.labels), ""]
    prompt = system_prompt(src)
    if prompt:
        lines += ["System prompt used in training (send it as the system message):", "", "```text", prompt,
                  "```", ""]
    lines += ["## Use", "", usage, ""]
    if src.run is not None:
        lines += ["## Evaluation", "", _eval_section(src.eval, src.summary), ""]
        if src.data_report:
            lines += ["## Training data", "", _data_section(src.data_report), ""]
        cfg = RunDir(src.run).config_path
        lines += ["## Training config", "", f"The run's `{cfg.name}`:", "", "```yaml",
                  cfg.read_text().rstrip(), "```", ""]
    return "\n".join(lines)


def system_prompt(src: Source) -> str | None:
    """The system prompt the run trained with (what `tunelab generate` sends by default)."""
    from ..data.templates import trained_system_prompt

    if src.labels:  # a classification head reads the text alone
        return src.config.data.system_prompt if src.config is not None else None
    return trained_system_prompt(src.config)


def write_card(out: Path, src: Source, fmt: str, what: str, usage: str) -> None:
    (out / "README.md").write_text(model_card(src, fmt, what, usage))
