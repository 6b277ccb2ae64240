"""A reward model from preference pairs: the base with a one-output head, trained through TRL's
RewardTrainer so the chosen answer scores above the rejected one. The metric is pairwise accuracy on
held-out pairs. The run saves like a classification-head run (labels.json ["reward"]), so
`tunelab.load(run)` gives the scoring model, and `rl.rewards` can name the run."""

from __future__ import annotations

import json
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


def _train(run: RunDir, cfg: TunelabConfig, resume: bool, console: Console, callbacks: list[Any] | None, base: Any,
           tokenizer: Any, bf16: bool, train: list[Any], val: list[Any], skipped: list[Any],
           report: dict[str, Any]) -> RunResult:
    from datasets import Dataset
    from transformers import set_seed
    from trl import RewardConfig, RewardTrainer

    run.write_data_report(report, skipped, console)
    set_seed(cfg.train.seed)
    model = trl_run.starting_model(cfg, base, reward_head=True, pad_token_id=tokenizer.pad_token_id)
    n_params = sum(p.numel() for p in model.parameters())
    model = wrap_model(model, cfg, "SEQ_CLS")  # LoRA on the body; the new head is trained whole
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    lr = cfg.train.learning_rate if cfg.train.learning_rate != "auto" else (
        1e-5 if cfg.peft.method == "full" else 1e-4)
    epochs = cfg.train.epochs if cfg.train.epochs != "auto" else (3 if len(train) < 300 else 1)
    hp = auto.resolve(epochs=epochs, learning_rate=lr, batch_size=cfg.train.batch_size,
                      grad_accum=cfg.train.grad_accum, max_steps=cfg.train.max_steps,
                      warmup_ratio=cfg.train.warmup_ratio, method=cfg.peft.method, n_params=n_params, head=True,
                      lengths=trl_run.pair_lengths(train, tokenizer))
    run.write_json("resolved.json", hp.to_dict() | {"trainable_params": trainable, "total_params": n_params,
                                                     "bf16": bf16, "method": "reward"})
    console.print(f"[bold]Run[/] {run.path}  reward model  pairs {len(train)} train / {len(val)} validation  "
                  f"epochs {hp.epochs}  lr {hp.learning_rate:g}  batch {hp.batch_size}x{cfg.train.grad_accum}  "
                  f"steps {hp.total_steps}  trainable {trainable / 1e6:.2f}M  {'bf16' if bf16 else 'fp32'}")
    kwargs = training_kwargs(cfg, hp, run.checkpoints, has_val=bool(val), packed=False)
    kwargs.pop("train_sampling_strategy", None)
    args = RewardConfig(**kwargs, bf16=bf16, gradient_checkpointing=False, max_length=cfg.model.max_length,
                        include_num_input_tokens_seen="non_padding")
    cbs, interrupt = trl_run.callbacks(run, console, callbacks)

    def dataset(pairs: list[Any]) -> Any:
        return Dataset.from_list([trl_run.conversational(p) for p in pairs])

    trainer = trl_run.quiet(RewardTrainer(model=model, args=args, train_dataset=dataset(train),
                                          eval_dataset=dataset(val) if val else None, processing_class=tokenizer,
                                          callbacks=cbs))
    summary: dict[str, Any] = {"method": "reward", "task": "reward", "base_model": cfg.model.base,
                               "train_pairs": len(train), "validation_pairs": len(val),
                               "precision": "bf16" if bf16 else "fp32"}
    dropped = len(train) - len(trainer.train_dataset)  # TRL drops pairs longer than max_length
    if dropped:
        summary["pairs_dropped_too_long"] = dropped
        console.print(f"[yellow]{dropped} training pair(s) are longer than model.max_length="
                      f"{cfg.model.max_length} tokens and were left out; raise model.max_length to keep them[/]")
    if val and cfg.eval.compare_base and not resume:  # an untrained head: what chance ranking gives
        summary["base_pairwise_accuracy"] = trl_run.eval_metrics(trainer.evaluate()).get("eval_accuracy")
    out, seconds = trl_run.train(trainer, run, resume, console)
    summary |= {"steps": trainer.state.global_step, "train_loss": out.training_loss,
                "train_seconds": round(seconds, 1), "tokens_seen": int(trainer.state.num_input_tokens_seen or 0)}
    if interrupt.requested:
        run.status("interrupted", **summary)
        console.print(f"[yellow]Stopped at step {trainer.state.global_step}; continue with --resume[/]")
        return RunResult(run.path, "interrupted", run.read_json("summary.json"))
    trl_run.save(run, cfg, trainer.model, tokenizer)
    (run.path / "labels.json").write_text(json.dumps(["reward"]))  # one score: loads as a 1-output head
    if val:
        metrics = trl_run.final_eval(trainer)
        summary |= metrics
        if "eval_accuracy" in metrics:
            summary["pairwise_accuracy"] = metrics["eval_accuracy"]
            base_acc = summary.get("base_pairwise_accuracy")
            console.print("Held-out pairwise accuracy: "
                          + (f"untrained {base_acc:.1%} -> " if base_acc is not None else "")
                          + f"[bold]{metrics['eval_accuracy']:.1%}[/]")
    run.status("completed", **summary)
    return RunResult(run.path, "completed", run.read_json("summary.json"))
