"""`tunelab eval`: task metrics of a run or model on any data file, optionally against the base model."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from ..config import default
from ..data.load import load_records
from ..data.records import DataError, Problem, Record
from ..data.templates import (
    DEFAULT_CLASSIFY_PROMPT,
    IGNORE,
    encode_record,
    label_display,
    trained_system_prompt,
    truncate,
)
from ..models.load import LoadedModel, ModelError, load
from ..runs import RunDir
from ..training.collate import PadCollator
from ..training.trainer import causal_lm_loss
from .classify import BATCH_SIZE, scored_generate, scored_head
from .metrics import bootstrap_diff, classification_metrics, generation_metrics, per_example_generation
from .scoring import generate_answers
from .unsure import Unsure, for_run

N_EXAMPLES = 12
MAX_NEW_TOKENS: int = default("eval.max_new_tokens")


@dataclass
class EvalTask:
    """How rows are scored: classification (labels), generation (answers against references), or text (loss)."""

    kind: str  # classification | generation | text
    records: list[Record]
    labels: list[str] = field(default_factory=list)
    system_prompt: str | None = None
    display: list[str] = field(default_factory=list)  # labels as the model answers them (generate mode)
    unsure: Unsure | None = None  # the run's classification.unsure_label rule, applied to its answers


def _task(lm: LoadedModel, records: list[Record]) -> EvalTask:
    kinds = {r.kind for r in records}
    if kinds == {"classification"}:
        run = RunDir(lm.resolved.run) if lm.resolved.run is not None else None
        labels = lm.labels or (run.summary().get("labels") if run else None) or sorted({r.label for r in records})
        unknown = sorted({r.label for r in records} - set(labels))
        if unknown:
            raise DataError([Problem(records[0].where, f"labels {unknown} are not among the model's labels "
                                     f"{labels[:10]}{'...' if len(labels) > 10 else ''}")])
        cfg = lm.run_config()
        humanize = cfg.classification.humanize_labels if cfg is not None else True
        prompt = trained_system_prompt(cfg) or DEFAULT_CLASSIFY_PROMPT
        unsure = for_run(cfg, run.summary() if run else {})
        if unsure is not None and unsure.label not in labels:
            unsure = None
        return EvalTask("classification", records, list(labels), prompt, label_display(list(labels), humanize),
                        unsure)
    if kinds <= {"chat", "completion"}:
        return EvalTask("generation", records)
    return EvalTask("text", records)


def prompt_and_reference(rec: Record) -> tuple[Any, str]:
    if rec.kind == "completion":
        return rec.prompt, rec.completion
    last = max(i for i, m in enumerate(rec.messages) if m["role"] == "assistant")
    return rec.messages[:last], rec.messages[last]["content"]


@torch.no_grad()
def reference_loss(lm: LoadedModel, task: EvalTask, max_length: int, batch_size: int) -> float:
    """Mean token loss of the reference answers (labels for classification)."""
    tok, model = lm.tokenizer, lm.model
    if task.kind == "classification" and lm.labels:  # a head: cross-entropy over the label set
        index = {lab: i for i, lab in enumerate(lm.labels)}
        total = 0.0
        for i in range(0, len(task.records), batch_size):
            chunk = task.records[i : i + batch_size]
            enc = tok([r.text + (tok.eos_token or "") for r in chunk], return_tensors="pt", padding=True,
                      add_special_tokens=False)
            logits = model(**enc).logits.float()
            gold = torch.tensor([index[r.label] for r in chunk])
            total += float(torch.nn.functional.cross_entropy(logits, gold, reduction="sum"))
        return total / max(len(task.records), 1)
    rows = []
    for r in task.records:
        label = task.display[task.labels.index(r.label)] if task.kind == "classification" else None
        enc = truncate(encode_record(r, tok, system_prompt=task.system_prompt, label_text=label), max_length)
        rows.append({"input_ids": enc.input_ids, "labels": enc.labels})
    collate = PadCollator(tok.pad_token_id)
    loss_sum, count = 0.0, 0
    for i in range(0, len(rows), batch_size):
        batch = collate(rows[i : i + batch_size])
        n = int((batch["labels"][:, 1:] != IGNORE).sum())
        loss_sum += float(causal_lm_loss(model, batch, n, label_only=True)) * n
        count += n
    return loss_sum / max(count, 1)


def score(lm: LoadedModel, task: EvalTask, *, max_new_tokens: int, max_length: int, batch_size: int
          ) -> tuple[dict[str, Any], list[str], list[float]]:
    """(metrics, predictions, per-example task score) for one model."""
    loss = reference_loss(lm, task, max_length, batch_size)
    metrics: dict[str, Any] = {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}
    if task.kind == "classification":
        texts, gold = [r.text for r in task.records], [r.label for r in task.records]
        if lm.labels:
            preds, probs = scored_head(lm.model, lm.tokenizer, texts, lm.labels, batch_size)
        else:
            preds, probs = scored_generate(lm.model, lm.tokenizer, texts, task.labels, task.display,
                                           task.system_prompt, batch_size)
        if task.unsure is not None:  # the run answers with its unsure rule; the figures without it are kept too
            raw = classification_metrics(gold, preds, task.labels)
            metrics["unsure"] = {"label": task.unsure.label, "threshold": task.unsure.threshold,
                                 "rows_turned": task.unsure.turned(preds, probs),
                                 "raw": {k: raw[k] for k in ("accuracy", "macro_f1", "confusion")}}
            preds = task.unsure.apply(preds, probs)
        metrics |= classification_metrics(gold, preds, task.labels)
        return metrics, preds, [float(g == p) for g, p in zip(gold, preds, strict=True)]
    if task.kind == "generation":
        prompts, refs = zip(*(prompt_and_reference(r) for r in task.records), strict=True)
        preds = generate_answers(lm.model, lm.tokenizer, list(prompts), max_new_tokens, batch_size)
        metrics |= generation_metrics(list(refs), preds)
        key = "numeric_correct" if "numeric_accuracy" in metrics else "token_f1"
        return metrics, preds, [per_example_generation(r, p)[key] for r, p in zip(refs, preds, strict=True)]
    return metrics, [], []


def evaluate(ref: str, data: str, *, fmt: str = "auto", columns: dict[str, str] | None = None,
             compare_base: bool = False, limit: int | None = None, max_new_tokens: int = MAX_NEW_TOKENS,
             max_length: int | None = None, batch_size: int = BATCH_SIZE,
             console: Console | None = None) -> dict[str, Any]:
    console = console or Console(stderr=True)
    lm = load(ref)
    # rows without a system message get the run's, as in training and in `tunelab serve`
    loaded = load_records(data, fmt, columns, trained_system_prompt(lm.run_config()))
    for p in loaded.errors[:50]:
        console.print(f"[yellow]{p.where}[/]: skipped: {p.message}", highlight=False)
    records = loaded.records[:limit] if limit else loaded.records
    if not records:
        raise DataError(loaded.errors or [Problem(str(data), "no usable rows to evaluate")])
    if compare_base and (lm.resolved.run is None or lm.resolved.adapter is None):
        raise ModelError("--compare-base needs a tunelab run directory trained with an adapter: "
                         "it compares the run with its own base model")
    overlap = _training_overlap(lm, records, console)
    console.print(f"Scoring {len(records)} rows with {ref}")
    result = evaluate_records(lm, records, data_name=str(data), skipped=loaded.errors, compare_base=compare_base,
                              max_new_tokens=max_new_tokens, max_length=max_length, batch_size=batch_size,
                              console=console)
    if overlap is not None:
        result["training_overlap"] = overlap
    if lm.resolved.run is not None:  # kept beside the run's other evaluations, named after the data
        kept = RunDir(lm.resolved.run).write_evaluation(result)
        console.print(f"Kept in {kept}; `tunelab report {lm.resolved.run}` shows it beside the run's other "
                      "evaluations", highlight=False)
    return result


def _training_overlap(lm: LoadedModel, records: list[Record], console: Console) -> int | None:
    """How many evaluation rows copy (exactly or nearly) a row the run trained on, with a warning: scores on
    them say little about new questions. None when the model is not a run or its training file is gone."""
    from ..data.curate.leaks import leaks
    from ..data.curate.rows import Row

    cfg = lm.run_config() if lm.resolved.run is not None else None
    if cfg is None or not cfg.data.train or not Path(cfg.data.train).exists():
        return None
    train = load_records(cfg.data.train, cfg.data.format, cfg.data.columns, trained_system_prompt(cfg)).records
    found = leaks([Row(r.where, {}, r) for r in train], [Row(r.where, {}, r, "validation") for r in records],
                  (cfg.data.curate.similarity if cfg.data.curate else 0.8), "flag")
    if found:
        console.print(f"[yellow]warning: {len(found)} of the {len(records)} evaluation rows copy rows the run "
                      f"trained on (exactly or nearly), e.g. {found[0].where}: {found[0].reason}. Scores on them "
                      "are optimistic; `tunelab data curate TRAIN --eval DATA --out DIR` removes such rows from "
                      "the training data.[/]", highlight=False)
    return len(found)


def evaluate_records(lm: LoadedModel, records: list[Record], *, data_name: str, skipped: Sequence[Problem] = (),
                     compare_base: bool = False, max_new_tokens: int = MAX_NEW_TOKENS, max_length: int | None = None,
                     batch_size: int = BATCH_SIZE, console: Console | None = None) -> dict[str, Any]:
    """Score records with the model (and its base, through the adapter switched off). Rows are cut at
    max_length tokens: by default the run's own model.max_length."""
    console = console or Console(stderr=True)
    if max_length is None:
        cfg = lm.run_config()
        max_length = cfg.model.max_length if cfg is not None else default("model.max_length")
    task = _task(lm, records)
    metrics, preds, per_ex = score(lm, task, max_new_tokens=max_new_tokens, max_length=max_length,
                                   batch_size=batch_size)
    result: dict[str, Any] = {"task": task.kind, "data": data_name, "rows": len(records),
                              "skipped_rows": [p.to_dict() for p in skipped], "model": metrics}
    if "confusion" in metrics:
        result["confusion"] = metrics.pop("confusion")
    if "unsure" in metrics:
        result["unsure"] = u = metrics.pop("unsure")
        console.print(f"Answering {u['label']} when the best label's probability is below {u['threshold']:.3g} "
                      f"(the run's classification.unsure_below): {u['rows_turned']} of {len(records)} answers "
                      f"turned; accuracy {u['raw']['accuracy']:.1%} without it", highlight=False)
    elif task.kind == "classification" and task.unsure is None and _unsure_uncalibrated(lm):
        console.print("[yellow]warning: the run sets classification.unsure_label, but it has no calibrated "
                      "threshold (did it score validation rows?): answers are the best labels as they are[/]")
    base_preds: list[str] = []
    if compare_base:
        with lm.model.disable_adapter():
            base_lm = LoadedModel(lm.model, lm.tokenizer, lm.resolved, lm.labels)
            console.print("Scoring the base model on the same rows")
            # the threshold was calibrated for the tuned model: the base answers its best labels
            base_metrics, base_preds, base_per_ex = score(base_lm, replace(task, unsure=None),
                                                          max_new_tokens=max_new_tokens, max_length=max_length,
                                                          batch_size=batch_size)
        base_metrics.pop("confusion", None)
        result["base"] = base_metrics
        if per_ex:
            result["comparison"] = _comparison(task, metrics, per_ex, base_per_ex)
    examples = []
    for i, rec in enumerate(records[: min(N_EXAMPLES, len(preds))]):
        inp, reference = (rec.text, rec.label) if task.kind == "classification" else prompt_and_reference(rec)
        if not isinstance(inp, str):
            inp = inp[-1]["content"] if inp else ""
        examples.append({"input": inp, "reference": reference, "tuned": preds[i]}
                        | ({"base": base_preds[i]} if base_preds else {}))
    result["examples"] = examples
    return result


def _unsure_uncalibrated(lm: LoadedModel) -> bool:
    cfg = lm.run_config()
    return cfg is not None and cfg.task == "classification" and cfg.classification.unsure_label is not None


def _comparison(task: EvalTask, metrics: dict[str, Any], per_ex: list[float],
                base_per_ex: list[float]) -> dict[str, Any]:
    diff, lo, hi = bootstrap_diff(per_ex, base_per_ex)
    name = "accuracy" if task.kind == "classification" else (
        "numeric_accuracy" if "numeric_accuracy" in metrics else "token_f1")
    pairs = list(zip(per_ex, base_per_ex, strict=True))
    return {"metric": name, "tuned": sum(per_ex) / len(per_ex), "base": sum(base_per_ex) / len(base_per_ex),
            "diff": diff, "ci95": [lo, hi], "wins": sum(t > b for t, b in pairs),
            "losses": sum(t < b for t, b in pairs), "ties": sum(t == b for t, b in pairs)}
