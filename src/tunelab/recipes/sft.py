"""Supervised fine-tuning (LoRA, DoRA or full) of a causal LM or a classification head.

Reads top to bottom: rows -> (run directory opened by the life cycle) -> model -> base score -> trainer ->
adapter -> tuned score. The life cycle (lifecycle.py) does the rest: start, probes, status, report.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ..config import ConfigError, TunelabConfig
from ..config.schema import GENERATION_MONITORS
from ..data.domains import detect_texts, record_text
from ..data.load import Loaded, load_records
from ..data.records import DataError, Problem, RowError
from ..data.report import DataReport, Example, encode_loaded
from ..data.split import overlap, sample_limit, split_validation
from ..data.templates import Encoded, encode_record, label_display
from ..eval.classify import scored_generate, scored_head
from ..eval.unsure import Unsure, calibrate
from ..models.load import LoadedModel, starting_model
from ..runs import checkpoint_step
from ..training import auto
from ..training.setup import training_arguments, wrap_model
from ..training.trainer import TunelabTrainer
from .lifecycle import Prepared, Session, Start


@dataclass
class TaskLabels:
    """What the rows mean for this run: labels and how a record becomes tokens."""

    labels: list[str] = field(default_factory=list)
    display: list[str] = field(default_factory=list)
    head: bool = False

    def label_index(self) -> dict[str, int]:
        return {lab: i for i, lab in enumerate(self.labels)}


@dataclass
class Rows:
    task: TaskLabels
    train: list[Example]
    val: list[Example]
    overlap: int


# --- inputs ----------------------------------------------------------------------------------------

def _check(rep: DataReport, cfg: TunelabConfig, what: str) -> None:
    if rep.errors and cfg.data.on_error == "fail":
        raise DataError(rep.errors, hint=f"{len(rep.errors)} bad row(s) in the {what} data: fix them, or set "
                        "data.on_error=skip to train without them (they are listed in the run directory)")


def _task(cfg: TunelabConfig, loaded: Loaded) -> TaskLabels:
    if cfg.task != "classification":
        if loaded.records and all(r.kind == "classification" for r in loaded.records):
            raise DataError([Problem(cfg.data.train, f"rows are text + label, but task is {cfg.task!r}: "
                                     "set task: classification")])
        return TaskLabels()
    labels = cfg.classification.labels or sorted({r.label for r in loaded.records if r.kind == "classification"})
    if not labels:
        raise DataError([Problem(cfg.data.train, "task is classification but no row has a label; map your "
                                 "columns with data.columns (e.g. {text: text, label: category})")])
    unsure = cfg.classification.unsure_label
    if unsure is not None and unsure not in labels:
        shown = f"{list(labels)[:10]}{'...' if len(labels) > 10 else ''}"
        raise ConfigError(f"classification.unsure_label={unsure!r} is not among the labels of {cfg.data.train} "
                          f"{shown}: name one of them, or give it some training rows")
    return TaskLabels(list(labels), label_display(labels, cfg.classification.humanize_labels),
                      head=cfg.classification.mode == "head")


def _encoder(cfg: TunelabConfig, task: TaskLabels, tokenizer: Any) -> Any:
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


def _curate(cfg: TunelabConfig, loaded: Loaded, val: Loaded | None) -> tuple[Loaded, Loaded | None, dict[str, Any]]:
    """data.curate: the rows the run keeps, and what curation found (the run keeps it in curation.json).
    Without the section only leaks between the training and validation files are looked for, as warnings."""
    from dataclasses import replace

    from ..config.curate import CurateConfig
    from ..data.curate.rows import Row
    from ..data.curate.run import curate, read

    c = cfg.data.curate or CurateConfig(duplicates=False, leaks="warn", personal_data="off", labels="off",
                                        quality={"empty": False, "max_chars": None, "boilerplate": False})
    if cfg.data.curate is None and val is None:
        return loaded, val, {}
    train = [Row(r.where, {}, r) for r in loaded.records]
    val_rows = [Row(r.where, {}, r, "validation") for r in val.records] if val else []
    result = curate(train, c, val_rows, read(c.evaluation)[0] if c.evaluation else [], cfg.train.seed)
    if cfg.data.curate is None:
        return loaded, val, {"leaks": [f.to_dict() for f in result.findings]} if result.findings else {}
    kept = replace(loaded, records=[r.record for r in result.train if r.record is not None])
    kept_val = replace(val, records=[r.record for r in result.validation if r.record is not None]) if val else None
    return kept, kept_val, result.to_dict() | {"texts": result.texts}


def _encode(cfg: TunelabConfig, path: str, loaded: Loaded, encode: Any, tokenizer: Any,
            task: TaskLabels) -> tuple[list[Example], DataReport]:
    def build() -> tuple[list[Example], DataReport]:
        return encode_loaded(loaded, path, encode, max_length=cfg.model.max_length, too_long=cfg.data.too_long)

    if not cfg.data.cache:
        return build()
    from ..data.cache import cached

    d = cfg.data
    settings = {"format": d.format, "columns": d.columns, "system_prompt": d.system_prompt, "train_on": d.train_on,
                "too_long": d.too_long, "max_length": cfg.model.max_length, "task": cfg.task, "labels": task.labels,
                "display": task.display, "head": task.head}
    if d.curate is not None:  # curated rows differ from the file's: a cache entry of their own
        settings["curate"] = d.curate.model_dump() | {"seed": cfg.train.seed, "validation": d.validation}
    result, _ = cached(path, tokenizer, settings, build)
    return result


def _generation_rows(val: list[Example]) -> bool:
    return bool(val) and all(e.record.kind in ("chat", "completion") for e in val)


def prepare(start: Start) -> Prepared:
    """Training and validation rows, tokenised and checked: every problem is found before anything is written."""
    cfg, tokenizer = start.cfg, start.tokenizer
    loaded, val_loaded, curation = _curate(cfg, _load(cfg, cfg.data.train),
                                           _load(cfg, cfg.data.validation) if cfg.data.validation else None)
    task = _task(cfg, loaded)
    encode = _encoder(cfg, task, tokenizer)
    train_ex, rep = _encode(cfg, cfg.data.train, loaded, encode, tokenizer, task)
    _check(rep, cfg, "training")
    skipped = list(rep.errors)
    if cfg.data.validation and val_loaded is not None:
        val_ex, val_rep = _encode(cfg, cfg.data.validation, val_loaded, encode, tokenizer, task)
        _check(val_rep, cfg, "validation")
        skipped += val_rep.errors
    else:
        pieces = (lambda e: e.record.where) if cfg.data.too_long == "split" else None  # a document on one side
        train_ex, val_ex = split_validation(train_ex, cfg.data.val_fraction, cfg.train.seed, pieces)
    train_ex = sample_limit(train_ex, cfg.data.limit, cfg.train.seed)
    if not train_ex:
        raise DataError([Problem(cfg.data.train, "no usable training rows")])
    n_overlap = overlap([e.record for e in train_ex], [e.record for e in val_ex])
    # the config rules checked monitor against the task; whether the rows allow it is known only now
    if cfg.train.monitor == "accuracy" and not val_ex:
        raise ConfigError("train.monitor=accuracy needs validation rows: the validation split is empty")
    if cfg.train.monitor in GENERATION_MONITORS and not _generation_rows(val_ex):
        raise ConfigError(f"train.monitor={cfg.train.monitor} scores generated answers: it needs a chat or "
                          "completion task with prompt/answer validation rows (data.validation or data.val_fraction)")
    report = rep.to_dict() | {"train_rows": len(train_ex), "validation_rows": len(val_ex),
                              "train_validation_overlap": n_overlap}
    if "leaks" in curation:  # no data.curate: near copies are warned about, not removed
        report["train_validation_leaks"] = len(curation["leaks"])
    return Prepared(Rows(task, train_ex, val_ex, n_overlap), report, skipped,
                    curation=curation if "findings" in curation else None)


# --- scoring ---------------------------------------------------------------------------------------

def _predict(model: Any, tokenizer: Any, task: TaskLabels, texts: list[str], cfg: TunelabConfig, bf16: bool,
             step: Any = None) -> tuple[list[str], list[float]]:
    """The best label of each text and its probability."""
    if task.head:
        return scored_head(model, tokenizer, texts, task.labels, cfg.eval.batch_size, bf16, step)
    return scored_generate(model, tokenizer, texts, task.labels, task.display, cfg.data.system_prompt,
                           cfg.eval.batch_size, bf16, step)


def _scored(val: list[Example], cfg: TunelabConfig, task: TaskLabels) -> list[Example]:
    limit = auto.scored_rows(cfg, classification=bool(task.labels))
    return val[:limit] if limit else val


def _share_right(rows: list[Example], preds: list[str]) -> float:
    return sum(e.record.label == p for e, p in zip(rows, preds, strict=True)) / max(len(rows), 1)


def _accuracy(session: Session, model: Any, task: TaskLabels, rows: list[Example], what: str
              ) -> tuple[float, list[str], list[float]]:
    """(accuracy, answers, their probabilities): the model's best labels, before any unsure rule."""
    t0 = time.perf_counter()
    with session.scoring(what, len(rows)) as advance:
        preds, probs = _predict(model, session.tokenizer, task, [e.record.text for e in rows], session.cfg,
                                session.bf16, advance)
    acc = _share_right(rows, preds)
    session.console.print(f"{what} accuracy: [bold]{acc:.1%}[/] on {len(rows)} rows "
                          f"({time.perf_counter() - t0:.0f} s)")
    session.event(f"{what} accuracy {acc:.1%} on {len(rows)} validation rows", kind="metrics", accuracy=acc)
    return acc, preds, probs


def _unsure(session: Session, rows: list[Example], preds: list[str], probs: list[float]) -> Unsure | None:
    """classification.unsure_label's rule for this run: the set threshold, or (auto) the one calibrated on the
    scored validation rows, kept in the summary for `tunelab eval` and the run's other answers."""
    c = session.cfg.classification
    if c.unsure_label is None:
        return None
    gold = [str(e.record.label) for e in rows]
    auto = c.unsure_below == "auto"
    threshold = calibrate(gold, preds, probs, c.unsure_label, c.unsure_budget) if auto else float(c.unsure_below)
    rule = Unsure(c.unsure_label, threshold)
    final = rule.apply(preds, probs)
    turned = rule.turned(preds, probs)
    kept = {"label": rule.label, "threshold": threshold, "calibrated": auto, "rows_turned": turned,
            "rows": len(rows), "raw_accuracy": _share_right(rows, preds), "accuracy": _share_right(rows, final)}
    session.summary["unsure"] = kept | ({"budget": c.unsure_budget} if auto else {})
    how = f"calibrated on {len(rows)} validation rows, budget {c.unsure_budget:.0%}" if auto else "set"
    session.console.print(f"Answering [bold]{rule.label}[/] when the best label's probability is below "
                          f"[bold]{threshold:.3g}[/] ({how}): {turned} of {len(rows)} answers turned; accuracy "
                          f"{kept['raw_accuracy']:.1%} -> [bold]{kept['accuracy']:.1%}[/]", highlight=False)
    session.event(f"unsure label {rule.label} below probability {threshold:.3g} ({how})", kind="metrics",
                  unsure_threshold=threshold)
    return rule


def _task_metric(tokenizer: Any, task: TaskLabels, val: list[Example], cfg: TunelabConfig, bf16: bool) -> Any:
    """The task metric at every evaluation (no progress bar: the training bar is live): validation accuracy
    for classification, generated-answer scores for generation."""
    rows = _scored(val, cfg, task)

    def accuracy(model: Any) -> dict[str, float]:
        # the best labels as they are: an unsure threshold is calibrated only once training has ended
        preds = _predict(model, tokenizer, task, [e.record.text for e in rows], cfg, bf16)[0]
        return {"accuracy": _share_right(rows, preds)}

    def generated(model: Any) -> dict[str, float]:
        from ..eval.evaluate import prompt_and_reference
        from ..eval.metrics import generation_metrics
        from ..eval.scoring import generate_answers

        prompts, refs = zip(*(prompt_and_reference(e.record) for e in rows), strict=True)
        preds = generate_answers(model, tokenizer, list(prompts), cfg.eval.max_new_tokens, cfg.eval.batch_size)
        scores = generation_metrics(list(refs), preds)
        return {k: scores[k] for k in GENERATION_MONITORS if k in scores}

    return accuracy if task.labels else generated


def _score_generation(session: Session, model: Any, rows: list[Example]) -> dict[str, Any]:
    """Generated answers on validation rows, tuned and base, kept as the run's "validation" evaluation (what
    `tunelab eval` writes for other data)."""
    from ..eval.evaluate import evaluate_records

    cfg = session.cfg
    model.eval()
    lm = LoadedModel(model, session.tokenizer, session.model_ref())
    t0 = time.perf_counter()
    session.phase("scoring tuned model")
    session.console.print(f"Scoring generated answers on {len(rows)} validation rows")
    res = evaluate_records(lm, [e.record for e in rows], data_name="the validation split",
                           compare_base=cfg.eval.compare_base and hasattr(model, "disable_adapter"),
                           max_new_tokens=cfg.eval.max_new_tokens, max_length=cfg.model.max_length,
                           batch_size=cfg.eval.batch_size, console=session.console)
    session.run.write_evaluation(res, name="validation")
    comp = res.get("comparison")
    if comp:
        session.console.print(f"{comp['metric']}: base {comp['base']:.3f} -> tuned [bold]{comp['tuned']:.3f}[/] "
                              f"({time.perf_counter() - t0:.0f} s)")
    return {"eval_rows": len(rows)} | {f"tuned_{k}": res["model"][k] for k in GENERATION_MONITORS if k in res["model"]}


# --- training --------------------------------------------------------------------------------------

def train(session: Session, prepared: Prepared) -> Any:
    from transformers import EarlyStoppingCallback, set_seed
    from transformers.trainer_callback import PrinterCallback

    from ..training import frozen
    from ..training.collate import PadCollator
    from ..training.compiled import compile_for_training
    from ..training.packing import PackCollator, use_varlen_attention

    cfg, tokenizer, bf16 = session.cfg, session.tokenizer, session.bf16
    rows: Rows = prepared.data
    task, train_ex, val_ex = rows.task, rows.train, rows.val
    if rows.overlap:
        session.console.print(f"[yellow]{rows.overlap} validation row(s) also appear in the training data[/]")

    set_seed(cfg.train.seed)
    model = starting_model(session.start.base, labels=task.labels if task.head else None, **auto.loading(cfg),
                           pad_token_id=tokenizer.pad_token_id)
    n_params = sum(p.numel() for p in model.parameters())
    scored = _scored(val_ex, cfg, task) if task.labels else []
    session.summary.update(task=cfg.task, base_model=cfg.model.base, train_rows=len(train_ex),
                           validation_rows=len(val_ex), eval_rows=len(scored), precision=session.precision)
    if task.labels:
        session.summary["labels"] = task.labels
    domain = detect_texts([record_text(e.record) for e in train_ex[:2000]], cfg.task)
    if domain and domain.caveat:  # the report and an exported model's card say it
        session.summary["domain"] = {"name": domain.name, "caveat": domain.caveat}
    base_preds: list[str] = []
    # A head starts untrained: its base score is what a fresh head does, measured like the rest.
    if scored and cfg.eval.compare_base and not session.resume and session.main:
        session.summary["base_accuracy"], base_preds, _ = _accuracy(session, model, task, scored, "base model")

    model = wrap_model(model, cfg, "SEQ_CLS" if task.head else "CAUSAL_LM")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    hp = session.hyperparams(n_params=n_params, lengths=[len(e.input_ids) for e in train_ex], head=task.head)
    session.announce(hp, n_params=n_params, trainable=trainable,
                     what=f"rows {len(train_ex)} train / {len(val_ex)} validation")

    packed = cfg.train.packing and not task.head
    if packed:
        use_varlen_attention(model)
    kept = frozen.to_bf16(model) if bf16 and cfg.train.frozen_bf16 and cfg.peft.method == "lora" else {}
    uncompile = None
    if hp.compile:
        session.console.print("Compiling the model's layers for training (torch.compile: the first steps wait for "
                              "it, about 40 s the first time on this machine)")
        uncompile = compile_for_training(model)
    early = ([EarlyStoppingCallback(cfg.train.early_stopping.patience, cfg.train.early_stopping.min_delta)]
             if cfg.train.early_stopping.patience and val_ex else [])
    scorable = bool(task.labels and val_ex) or _generation_rows(val_ex)
    during = scorable and (cfg.eval.during_training or cfg.train.monitor != "loss")
    trainer = TunelabTrainer(
        model=model, args=training_arguments(cfg, hp, session.run.checkpoints, has_val=bool(val_ex), packed=packed),
        train_dataset=_as_rows(train_ex), eval_dataset=_as_rows(val_ex) if val_ex else None,
        data_collator=PackCollator() if packed else PadCollator(tokenizer.pad_token_id),
        callbacks=session.callbacks(*early), bf16=bf16, token_level=not task.head,
        label_only_logits=cfg.train.label_only_logits, loss_chunk=cfg.train.loss_chunk_tokens,
        max_batch_tokens=auto.max_batch_tokens(cfg, bool(hp.compile)),
        task_metric=_task_metric(tokenizer, task, val_ex, cfg, bf16) if during else None,
    )
    trainer.remove_callback(PrinterCallback)  # progress and metrics.jsonl replace its raw dict prints
    try:
        session.fit(trainer)
    finally:
        if uncompile:
            uncompile()
        frozen.restore_fp32(trainer.model, kept)

    session.save(trainer.model, labels=task.labels if task.head else None)
    summary = session.summary
    if val_ex:  # the best checkpoint's evaluation is the final model's (load_best_model_at_end)
        best_ckpt = trainer.state.best_model_checkpoint
        best_step = checkpoint_step(best_ckpt) if best_ckpt else None
        evals = [e for e in trainer.state.log_history if "eval_loss" in e]
        best_eval = next((e for e in evals if e.get("step") == best_step), evals[-1] if evals else None)
        summary["eval_loss"] = best_eval["eval_loss"] if best_eval else trainer.evaluate()["eval_loss"]
    if trainer.state.best_model_checkpoint:
        summary["best_checkpoint"] = trainer.state.best_model_checkpoint
    model = trainer.model
    if not session.main:  # scoring the trained model is main's
        return model
    if scored:
        model.eval()
        summary["tuned_accuracy"], raw, probs = _accuracy(session, model, task, scored, "tuned model")
        rule = _unsure(session, scored, raw, probs)
        preds = rule.apply(raw, probs) if rule else raw
        if rule:  # the run's answers are the thresholded ones (the base's stay as they were)
            summary["tuned_accuracy"] = _share_right(scored, preds)
        session.run.write_predictions([
            {"where": e.record.where, "text": e.record.text, "label": e.record.label, "predicted": p,
             "probability": probs[i]}
            | ({"raw_predicted": raw[i]} if rule else {}) | ({"base_predicted": base_preds[i]} if base_preds else {})
            for i, (e, p) in enumerate(zip(scored, preds, strict=True))])
    elif _generation_rows(val_ex):
        summary |= _score_generation(session, model, _scored(val_ex, cfg, task))
    return model


def _as_rows(examples: list[Example]) -> list[dict[str, Any]]:
    return [{"input_ids": e.input_ids, "labels": e.labels} for e in examples]
