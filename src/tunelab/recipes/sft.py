"""Supervised fine-tuning (LoRA, DoRA or full) of a causal LM or a classification head.

Reads top to bottom: data -> run directory -> model -> trainer -> adapter -> scores -> summary.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from ..config import ConfigError, TunelabConfig
from ..data.load import Loaded, load_records
from ..data.records import DataError, Problem, RowError
from ..data.report import DataReport, Example, encode_loaded
from ..data.split import overlap, split_validation
from ..data.templates import Encoded, encode_record, label_display
from ..eval.classify import predict_generate, predict_head
from ..models.load import load_tokenizer, merge_adapters, resolve
from ..training import auto, hardware
from ..training.callbacks import GracefulInterrupt, MetricsLogger, RichProgress, TokenCounter
from ..training.rundir import RunDir, open_run
from ..training.setup import training_arguments, wrap_model
from ..training.trainer import TunelabTrainer


@dataclass
class RunResult:
    run_dir: Path
    status: str  # completed | interrupted
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class Task:
    """What the rows mean for this run: labels and how a record becomes tokens."""

    labels: list[str] = field(default_factory=list)
    display: list[str] = field(default_factory=list)
    head: bool = False

    def label_index(self) -> dict[str, int]:
        return {lab: i for i, lab in enumerate(self.labels)}


def _check(rep: DataReport, cfg: TunelabConfig, what: str) -> None:
    if rep.errors and cfg.data.on_error == "fail":
        raise DataError(rep.errors, hint=f"{len(rep.errors)} bad row(s) in the {what} data: fix them, or set "
                        "data.on_error=skip to train without them (they are listed in the run directory)")


def _task(cfg: TunelabConfig, loaded: Loaded) -> Task:
    if cfg.task != "classification":
        if loaded.records and all(r.kind == "classification" for r in loaded.records):
            raise DataError([Problem(cfg.data.train, f"rows are text + label, but task is {cfg.task!r}: "
                                     "set task: classification")])
        return Task()
    labels = cfg.classification.labels or sorted({r.label for r in loaded.records if r.kind == "classification"})
    if not labels:
        raise DataError([Problem(cfg.data.train, "task is classification but no row has a label; map your "
                                 "columns with data.columns (e.g. {text: text, label: category})")])
    return Task(list(labels), label_display(labels, cfg.classification.humanize_labels),
                head=cfg.classification.mode == "head")


def _encoder(cfg: TunelabConfig, task: Task, tokenizer: Any) -> Any:
    index, shown = task.label_index(), dict(zip(task.labels, task.display, strict=True))
    eos = tokenizer.eos_token or ""

    def encode(rec: Any) -> Any:
        if rec.kind == "classification" and rec.label not in index:
            where = "classification.labels" if cfg.classification.labels else f"the labels of {cfg.data.train}"
            raise RowError(f"label {rec.label!r} is not among {where}", field="label")
        if rec.kind == "classification" and task.head:
            ids = tokenizer(rec.text + eos, add_special_tokens=False)["input_ids"]
            return Encoded(list(ids), index[rec.label])
        return encode_record(rec, tokenizer, train_on=cfg.data.train_on, system_prompt=cfg.data.system_prompt,
                             label_text=shown.get(rec.label) if rec.kind == "classification" else None)

    return encode


def _load(cfg: TunelabConfig, path: str) -> Loaded:
    prompt = None if cfg.task == "classification" else cfg.data.system_prompt
    return load_records(path, cfg.data.format, cfg.data.columns, prompt)


def _prepare(cfg: TunelabConfig, path: str, loaded: Loaded, encode: Any, tokenizer: Any,
             task: Task) -> tuple[list[Example], DataReport]:
    def build() -> tuple[list[Example], DataReport]:
        return encode_loaded(loaded, path, encode, max_length=cfg.model.max_length, too_long=cfg.data.too_long)

    if not cfg.data.cache:
        return build()
    from ..data.cache import cached

    d = cfg.data
    settings = {"format": d.format, "columns": d.columns, "system_prompt": d.system_prompt, "train_on": d.train_on,
                "too_long": d.too_long, "max_length": cfg.model.max_length, "task": cfg.task, "labels": task.labels,
                "display": task.display, "head": task.head}
    result, _ = cached(path, tokenizer, settings, build)
    return result


def _rows(examples: list[Example]) -> list[dict[str, Any]]:
    return [{"input_ids": e.input_ids, "labels": e.labels} for e in examples]


def _predict(model: Any, tokenizer: Any, task: Task, texts: list[str], cfg: TunelabConfig, bf16: bool,
             step: Any = None) -> list[str]:
    if task.head:
        return predict_head(model, tokenizer, texts, task.labels, cfg.eval.batch_size, bf16, step)
    return predict_generate(model, tokenizer, texts, task.labels, task.display, cfg.data.system_prompt,
                            cfg.eval.batch_size, bf16, step)


def _accuracy(model: Any, tokenizer: Any, task: Task, val: list[Example], cfg: TunelabConfig, bf16: bool,
              console: Console, what: str) -> tuple[float, list[str]]:
    rows = val[: cfg.eval.limit] if cfg.eval.limit else val
    gold = [e.record.label for e in rows]
    from rich.progress import Progress

    t0 = time.perf_counter()
    with Progress(console=console, transient=True) as bar:
        job = bar.add_task(f"scoring {what} on {len(rows)} validation rows", total=len(rows))
        preds = _predict(model, tokenizer, task, [e.record.text for e in rows], cfg, bf16,
                         lambda n: bar.advance(job, n))
    acc = sum(g == p for g, p in zip(gold, preds, strict=True)) / max(len(gold), 1)
    console.print(f"{what} accuracy: [bold]{acc:.1%}[/] on {len(rows)} rows ({time.perf_counter() - t0:.0f} s)")
    return acc, preds


GENERATION_METRICS = ("token_f1", "rouge_l", "exact_match", "numeric_accuracy")
GENERATION_ROWS = 64  # generated answers are slow on a CPU: score a sample unless eval.limit says otherwise


def _scored(val: list[Example], cfg: TunelabConfig, task: Task) -> list[Example]:
    limit = cfg.eval.limit or (None if task.labels else GENERATION_ROWS)
    return val[:limit] if limit else val


def _task_metric(tokenizer: Any, task: Task, val: list[Example], cfg: TunelabConfig, bf16: bool) -> Any:
    """The task metric at every evaluation (no progress bar: the training bar is live): validation accuracy
    for classification, generated-answer scores for generation."""
    rows = _scored(val, cfg, task)

    def accuracy(model: Any) -> dict[str, float]:
        preds = _predict(model, tokenizer, task, [e.record.text for e in rows], cfg, bf16)
        return {"accuracy": sum(e.record.label == p for e, p in zip(rows, preds, strict=True)) / len(rows)}

    def generated(model: Any) -> dict[str, float]:
        from ..eval.evaluate import prompt_and_reference
        from ..eval.metrics import generation_metrics
        from ..eval.scoring import generate_answers

        prompts, refs = zip(*(prompt_and_reference(e.record) for e in rows), strict=True)
        preds = generate_answers(model, tokenizer, list(prompts), cfg.eval.max_new_tokens, cfg.eval.batch_size)
        scores = generation_metrics(list(refs), preds)
        return {k: scores[k] for k in GENERATION_METRICS if k in scores}

    return accuracy if task.labels else generated


def _generation_rows(val: list[Example]) -> bool:
    return bool(val) and all(e.record.kind in ("chat", "completion") for e in val)


def run(cfg: TunelabConfig, *, resume: bool = False, console: Console | None = None,
        callbacks: list[Any] | None = None) -> RunResult:
    console = console or Console(stderr=True)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if not cfg.data.train:
        raise DataError([Problem("config", "data.train is empty: set it to your training file")])
    base = resolve(cfg.model.base)
    tokenizer = load_tokenizer(str(base.run / "tokenizer") if base.run else base.path)
    bf16 = hardware.use_bf16(cfg.model.precision)

    # Data: every problem is found before anything is written.
    loaded = _load(cfg, cfg.data.train)
    task = _task(cfg, loaded)
    encode = _encoder(cfg, task, tokenizer)
    train_ex, rep = _prepare(cfg, cfg.data.train, loaded, encode, tokenizer, task)
    _check(rep, cfg, "training")
    skipped = list(rep.errors)
    if cfg.data.validation:
        val_ex, val_rep = _prepare(cfg, cfg.data.validation, _load(cfg, cfg.data.validation), encode, tokenizer, task)
        _check(val_rep, cfg, "validation")
        skipped += val_rep.errors
    else:
        train_ex, val_ex = split_validation(train_ex, cfg.data.val_fraction, cfg.train.seed)  # type: ignore[arg-type]
    if cfg.data.limit and cfg.data.limit < len(train_ex):
        keep = set(random.Random(cfg.train.seed).sample(range(len(train_ex)), cfg.data.limit))
        train_ex = [e for i, e in enumerate(train_ex) if i in keep]
    if not train_ex:
        raise DataError([Problem(cfg.data.train, "no usable training rows")])
    n_overlap = overlap([e.record for e in train_ex], [e.record for e in val_ex])

    if cfg.train.monitor == "accuracy" and not (task.labels and val_ex):
        raise ConfigError("train.monitor=accuracy needs task: classification and validation data")
    if cfg.train.monitor in GENERATION_METRICS and not (not task.labels and _generation_rows(val_ex)):
        raise ConfigError(f"train.monitor={cfg.train.monitor} scores generated answers: it needs a chat or "
                          "completion task with prompt/answer validation rows (data.validation or data.val_fraction)")
    if cfg.eval.probes.enabled:  # a bad probe file is found now, not after an hour of training
        from ..probes.run import probe_sets

        probe_sets(cfg.eval.probes, generative=not task.head)
    run = open_run(cfg, resume)
    try:
        result = _train(run, cfg, resume=resume, console=console, callbacks=callbacks, base=base,
                        tokenizer=tokenizer, task=task, bf16=bf16, rep=rep, train_ex=train_ex, val_ex=val_ex,
                        skipped=skipped, n_overlap=n_overlap)
    except BaseException as exc:  # whatever happens after the run directory exists, it says so
        run.status("failed", error=f"{type(exc).__name__}: {exc}")
        raise
    from ..eval.report import report_completed

    report_completed(result, console)
    return result


def _train(run: RunDir, cfg: TunelabConfig, *, resume: bool, console: Console, callbacks: list[Any] | None,
           base: Any, tokenizer: Any, task: Task, bf16: bool, rep: DataReport, train_ex: list[Example],
           val_ex: list[Example], skipped: list[Problem], n_overlap: int) -> RunResult:
    report = rep.to_dict() | {"train_rows": len(train_ex), "validation_rows": len(val_ex),
                              "train_validation_overlap": n_overlap}
    run.write_data_report(report, skipped, console)
    if n_overlap:
        console.print(f"[yellow]{n_overlap} validation row(s) also appear in the training data[/]")

    # Model
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, set_seed

    set_seed(cfg.train.seed)
    if task.head:
        model = AutoModelForSequenceClassification.from_pretrained(base.path, num_labels=len(task.labels),
                                                                   dtype=torch.float32)
        model.config.pad_token_id = tokenizer.pad_token_id
        model.config.id2label = dict(enumerate(task.labels))
        model.config.label2id = task.label_index()
    else:
        model = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32)  # autocast does the rest
    model = merge_adapters(model, base.adapters)  # continuing from a tunelab run: start from what it trained
    model.to(hardware.device())
    n_params = sum(p.numel() for p in model.parameters())

    scored = len(val_ex[: cfg.eval.limit] if cfg.eval.limit else val_ex) if task.labels else 0
    summary: dict[str, Any] = {"task": cfg.task, "base_model": cfg.model.base, "train_rows": len(train_ex),
                               "validation_rows": len(val_ex), "eval_rows": scored,
                               "precision": "bf16" if bf16 else "fp32"}
    if task.labels:
        summary["labels"] = task.labels
    base_preds: list[str] = []
    # A head starts untrained: its base score is what a fresh head does, measured like the rest.
    if task.labels and val_ex and cfg.eval.compare_base and not resume:
        summary["base_accuracy"], base_preds = _accuracy(model, tokenizer, task, val_ex, cfg, bf16, console,
                                                         "base model")

    model = wrap_model(model, cfg, "SEQ_CLS" if task.head else "CAUSAL_LM")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    hp = auto.resolve(epochs=cfg.train.epochs, learning_rate=cfg.train.learning_rate,
                      batch_size=cfg.train.batch_size, grad_accum=cfg.train.grad_accum,
                      max_steps=cfg.train.max_steps, warmup_ratio=cfg.train.warmup_ratio, method=cfg.peft.method,
                      n_params=n_params, head=task.head, lengths=[len(e.input_ids) for e in train_ex])
    run.write_json("resolved.json", hp.to_dict() | {"trainable_params": trainable, "total_params": n_params,
                                                     "bf16": bf16})
    console.print(f"[bold]Run[/] {run.path}  rows {len(train_ex)} train / {len(val_ex)} validation  "
                  f"epochs {hp.epochs}  lr {hp.learning_rate:g}  batch {hp.batch_size}x{cfg.train.grad_accum}  "
                  f"steps {hp.total_steps}  trainable {trainable / 1e6:.2f}M of {n_params / 1e6:.0f}M  "
                  f"{'bf16' if bf16 else 'fp32'}")

    # Train
    from transformers import EarlyStoppingCallback

    from ..training import frozen
    from ..training.collate import PadCollator
    from ..training.packing import PackCollator, use_varlen_attention

    packed = cfg.train.packing and not task.head
    if packed:
        use_varlen_attention(model)
    kept = frozen.to_bf16(model) if bf16 and cfg.train.frozen_bf16 and cfg.peft.method == "lora" else {}
    args = training_arguments(cfg, hp, run.checkpoints, has_val=bool(val_ex), packed=packed)
    counter = TokenCounter()
    interrupt = GracefulInterrupt(console)
    cbs: list[Any] = [MetricsLogger(run.metrics, counter), RichProgress(counter, console), interrupt]
    if cfg.train.early_stopping.patience and val_ex:
        cbs.append(EarlyStoppingCallback(cfg.train.early_stopping.patience, cfg.train.early_stopping.min_delta))
    scorable = bool(task.labels and val_ex) or _generation_rows(val_ex)
    during = scorable and (cfg.eval.during_training or cfg.train.monitor != "loss")
    trainer = TunelabTrainer(
        model=model, args=args, train_dataset=_rows(train_ex), eval_dataset=_rows(val_ex) if val_ex else None,
        data_collator=PackCollator() if packed else PadCollator(tokenizer.pad_token_id),
        callbacks=cbs + list(callbacks or []),
        bf16=bf16, token_level=not task.head, label_only_logits=cfg.train.label_only_logits,
        loss_chunk=cfg.train.loss_chunk_tokens, max_batch_tokens=cfg.train.max_batch_tokens, counter=counter,
        task_metric=_task_metric(tokenizer, task, val_ex, cfg, bf16) if during else None,
    )
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # progress and metrics.jsonl replace its raw dict prints
    checkpoint = run.last_checkpoint() if resume else None
    if resume and checkpoint is None:
        console.print("[yellow]No checkpoint in this run yet: starting it from the beginning[/]")
    run.trim_metrics(int(checkpoint.name.split("-")[-1]) if checkpoint else 0)
    t0 = time.perf_counter()
    try:
        out = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        train_seconds = time.perf_counter() - t0
    finally:
        frozen.restore_fp32(trainer.model, kept)
    summary.update(steps=trainer.state.global_step, train_loss=out.training_loss, train_seconds=round(train_seconds, 1),
                   tokens_seen=counter.tokens, tokens_per_s=round(counter.tokens / max(train_seconds, 1e-9), 1))
    if interrupt.requested:
        run.status("interrupted", **summary)
        console.print(f"[yellow]Stopped at step {trainer.state.global_step}; continue with --resume[/]")
        return RunResult(run.path, "interrupted", run.read_json("summary.json"))

    # Save: the adapter in standard PEFT format (or the full model), the tokenizer, the labels.
    final = run.path / ("model" if cfg.peft.method == "full" else "adapter")
    trainer.model.save_pretrained(str(final))
    tokenizer.save_pretrained(str(run.path / "tokenizer"))
    if task.head:
        (run.path / "labels.json").write_text(json.dumps(task.labels))
    if val_ex:  # the best checkpoint's evaluation is the final model's (load_best_model_at_end)
        best_ckpt = trainer.state.best_model_checkpoint
        best_step = int(best_ckpt.rsplit("-", 1)[-1]) if best_ckpt else None
        evals = [e for e in trainer.state.log_history if "eval_loss" in e]
        best_eval = next((e for e in evals if e.get("step") == best_step), evals[-1] if evals else None)
        summary["eval_loss"] = best_eval["eval_loss"] if best_eval else trainer.evaluate()["eval_loss"]
    if trainer.state.best_model_checkpoint:
        summary["best_checkpoint"] = trainer.state.best_model_checkpoint
    if task.labels and val_ex:
        trainer.model.eval()
        acc, preds = _accuracy(trainer.model, tokenizer, task, val_ex, cfg, bf16, console, "tuned model")
        summary["tuned_accuracy"] = acc
        rows = val_ex[: cfg.eval.limit] if cfg.eval.limit else val_ex
        run.write_json("predictions.json", [
            {"where": e.record.where, "text": e.record.text, "label": e.record.label, "predicted": p}
            | ({"base_predicted": base_preds[i]} if base_preds else {})
            for i, (e, p) in enumerate(zip(rows, preds, strict=True))])
    elif _generation_rows(val_ex):
        summary |= _score_generation(run, cfg, trainer.model, tokenizer, base, _scored(val_ex, cfg, task), console)
    if cfg.eval.probes.enabled:
        _probes(run, cfg, trainer.model, tokenizer, task, base, bf16, console)
    run.status("completed", **summary)
    return RunResult(run.path, "completed", run.read_json("summary.json"))


def _score_generation(run: RunDir, cfg: TunelabConfig, model: Any, tokenizer: Any, base: Any, rows: list[Example],
                      console: Console) -> dict[str, Any]:
    """Generated answers on validation rows, tuned and base, into eval.json (what `tunelab eval` writes)."""
    from ..eval.evaluate import evaluate_records
    from ..models.load import LoadedModel, Resolved

    model.eval()
    lm = LoadedModel(model, tokenizer, Resolved("run", base.path, [*base.adapters, run.path / "adapter"], run.path))
    t0 = time.perf_counter()
    console.print(f"Scoring generated answers on {len(rows)} validation rows")
    res = evaluate_records(lm, [e.record for e in rows], data_name="the validation split",
                           compare_base=cfg.eval.compare_base and hasattr(model, "disable_adapter"),
                           max_new_tokens=cfg.eval.max_new_tokens, max_length=cfg.model.max_length,
                           batch_size=cfg.eval.batch_size, console=console)
    comp = res.get("comparison")
    if comp:
        console.print(f"{comp['metric']}: base {comp['base']:.3f} -> tuned [bold]{comp['tuned']:.3f}[/] "
                      f"({time.perf_counter() - t0:.0f} s)")
    return {"eval_rows": len(rows)} | {f"tuned_{k}": res["model"][k] for k in GENERATION_METRICS if k in res["model"]}


def _probes(run: RunDir, cfg: TunelabConfig, model: Any, tokenizer: Any, task: Task, base: Any, bf16: bool,
            console: Console) -> None:
    """Forgetting and bias probes, base vs tuned, into probes.json."""
    from ..probes.run import Subject, run_probes, summary_line, write_probes

    def classify(m: Any, texts: list[str]) -> list[str]:
        return _predict(m, tokenizer, task, texts, cfg, bf16)

    base_model = None
    if not hasattr(model, "disable_adapter") and not task.head:  # full fine-tuning: the base sits beside it
        from transformers import AutoModelForCausalLM

        base_model = merge_adapters(AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32),
                                    base.adapters).to(hardware.device())
    subject = Subject(model, tokenizer, classify=classify if task.labels else None, generative=not task.head,
                      system_prompt=None if task.labels else cfg.data.system_prompt, base_model=base_model)
    try:
        result = run_probes(subject, cfg.eval.probes, batch_size=cfg.eval.batch_size, console=console)
    except Exception as exc:  # the trained model is saved: a failing probe must not turn the run into a failure
        console.print(f"[yellow]Probes failed ({type(exc).__name__}: {exc}); the run is complete without them. "
                      f"Retry with `tunelab probe {run.path}`[/]")
        return
    write_probes(run.path, result)
    console.print(summary_line(result) + f" ({result['seconds']:.0f} s)", highlight=False)
