"""Preference tuning on chosen/rejected pairs through TRL: DPO (preference.loss_type picks IPO, hinge and
TRL's other variants), KTO (each pair as one desirable and one undesirable answer), ORPO, CPO and SimPO
(no reference model). LoRA, DoRA or full fine-tuning as for SFT; the reference is the starting model
(with LoRA, the same weights with the adapter switched off)."""

from __future__ import annotations

import copy
import math
from typing import Any

from rich.console import Console

from ..config import TunelabConfig
from ..training import auto, trl_run
from ..training.rundir import RunDir
from ..training.setup import training_kwargs, wrap_model
from .sft import RunResult


def run(cfg: TunelabConfig, *, resume: bool = False, console: Console | None = None,
        callbacks: list[Any] | None = None) -> RunResult:
    return trl_run.run_on_pairs(cfg, resume, console, callbacks, _train)


def _dataset(cfg: TunelabConfig, pairs: list[Any]) -> Any:
    from datasets import Dataset

    rows = [trl_run.conversational(p) for p in pairs]
    if cfg.method == "kto":  # unpaired: the chosen answer is desirable, the rejected one is not
        rows = [{"prompt": r["prompt"], "completion": r[side], "label": side == "chosen"}
                for r in rows for side in ("chosen", "rejected")]
    return Dataset.from_list(rows)


def _trainer_class(cfg: TunelabConfig) -> tuple[Any, Any, dict[str, Any]]:
    p = cfg.preference
    if cfg.method == "dpo":
        from trl import DPOConfig, DPOTrainer

        return DPOTrainer, DPOConfig, dict(beta=p.beta, loss_type=[p.loss_type], label_smoothing=p.label_smoothing,
                                           max_length=cfg.model.max_length, truncation_mode="keep_end")
    if cfg.method == "kto":
        from trl import KTOConfig, KTOTrainer

        return KTOTrainer, KTOConfig, dict(beta=p.beta, max_length=cfg.model.max_length)
    if cfg.method == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        return ORPOTrainer, ORPOConfig, dict(beta=p.beta, max_length=cfg.model.max_length,
                                             max_completion_length=cfg.model.max_length - p.max_prompt_tokens)
    from trl.experimental.cpo import CPOConfig, CPOTrainer  # cpo, simpo

    extra = dict(loss_type="simpo", simpo_gamma=p.simpo_gamma, cpo_alpha=0.0) if cfg.method == "simpo" else {}
    return CPOTrainer, CPOConfig, dict(beta=p.beta, max_length=cfg.model.max_length,
                                       max_completion_length=cfg.model.max_length - p.max_prompt_tokens) | extra


def _train(run: RunDir, cfg: TunelabConfig, resume: bool, console: Console, callbacks: list[Any] | None, base: Any,
           tokenizer: Any, bf16: bool, train: list[Any], val: list[Any], skipped: list[Any],
           report: dict[str, Any]) -> RunResult:
    from transformers import set_seed

    run.write_data_report(report, skipped, console)
    set_seed(cfg.train.seed)
    model = trl_run.starting_model(cfg, base)
    n_params = sum(p.numel() for p in model.parameters())
    # full fine-tuning needs the starting weights beside the policy; LoRA switches its adapter off instead
    needs_ref = cfg.method in ("dpo", "kto") and cfg.peft.method == "full"
    ref = copy.deepcopy(model).eval().requires_grad_(False) if needs_ref else None
    model = wrap_model(model, cfg, "CAUSAL_LM")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    epochs = cfg.train.epochs if cfg.train.epochs != "auto" else (3 if len(train) < 300 else 1)
    lr = cfg.train.learning_rate if cfg.train.learning_rate != "auto" else (
        5e-6 if cfg.peft.method == "full" else 5e-5)  # preference steps want a gentler rate than SFT
    hp = auto.resolve(epochs=epochs, learning_rate=lr, batch_size=cfg.train.batch_size,
                      grad_accum=cfg.train.grad_accum, max_steps=cfg.train.max_steps,
                      warmup_ratio=cfg.train.warmup_ratio, method=cfg.peft.method, n_params=n_params, head=False,
                      lengths=trl_run.pair_lengths(train, tokenizer))
    run.write_json("resolved.json", hp.to_dict() | {"trainable_params": trainable, "total_params": n_params,
                                                     "bf16": bf16, "method": cfg.method})
    console.print(f"[bold]Run[/] {run.path}  {cfg.method}  pairs {len(train)} train / {len(val)} validation  "
                  f"epochs {hp.epochs}  lr {hp.learning_rate:g}  batch {hp.batch_size}x{cfg.train.grad_accum}  "
                  f"steps {hp.total_steps}  trainable {trainable / 1e6:.2f}M  {'bf16' if bf16 else 'fp32'}")
    trainer_cls, config_cls, method_args = _trainer_class(cfg)
    kwargs = training_kwargs(cfg, hp, run.checkpoints, has_val=bool(val), packed=False)
    kwargs.pop("train_sampling_strategy", None)
    args = config_cls(**kwargs, **method_args, bf16=bf16, gradient_checkpointing=False,
                      include_num_input_tokens_seen="non_padding")
    cbs, interrupt = trl_run.callbacks(run, console, callbacks)
    extra = {"ref_model": ref} if cfg.method in ("dpo", "kto") else {}
    trainer = trl_run.quiet(trainer_cls(model=model, args=args, train_dataset=_dataset(cfg, train),
                                        eval_dataset=_dataset(cfg, val) if val else None,
                                        processing_class=tokenizer, callbacks=cbs, **extra))
    base_acc = None
    if val and cfg.method in ("orpo", "cpo", "simpo") and cfg.eval.compare_base and not resume:
        # no reference model: the starting model already ranks pairs by its own likelihood; that is the baseline
        base_acc = trl_run.eval_metrics(trainer.evaluate()).get("eval_rewards_accuracies")
    out, seconds = trl_run.train(trainer, run, resume, console)
    summary: dict[str, Any] = {"method": cfg.method, "task": "chat", "base_model": cfg.model.base,
                               "train_pairs": len(train), "validation_pairs": len(val),
                               "precision": "bf16" if bf16 else "fp32", "steps": trainer.state.global_step,
                               "train_loss": out.training_loss, "train_seconds": round(seconds, 1),
                               "tokens_seen": int(trainer.state.num_input_tokens_seen or 0)}
    if base_acc is not None and not math.isnan(base_acc):
        summary["base_preference_accuracy"] = base_acc
    if interrupt.requested:
        run.status("interrupted", **summary)
        console.print(f"[yellow]Stopped at step {trainer.state.global_step}; continue with --resume[/]")
        return RunResult(run.path, "interrupted", run.read_json("summary.json"))
    trl_run.save(run, cfg, trainer.model, tokenizer)
    if val:
        metrics = trl_run.final_eval(trainer)
        summary |= metrics
        acc = metrics.get("eval_rewards_accuracies")
        if acc is not None and not math.isnan(acc):
            # held-out pairs whose implicit reward ranks the chosen answer above the rejected one
            summary["preference_accuracy"] = acc
            before = summary.get("base_preference_accuracy")
            console.print("Held-out preference accuracy: " + (f"before {before:.1%} -> " if before is not None else "")
                          + f"[bold]{acc:.1%}[/] "
                          f"(margin {metrics.get('eval_rewards_margins', float('nan')):.3f})")
    run.status("completed", **summary)
    return RunResult(run.path, "completed", run.read_json("summary.json"))
