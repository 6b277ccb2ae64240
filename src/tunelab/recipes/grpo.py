"""Online RL through TRL: GRPO and RLOO. Each prompt is answered num_generations times by the model being
trained, the answers are scored by rl.rewards, and each answer is pushed up or down by how it scored against
the others from the same prompt (GRPO: group mean and std; RLOO: the mean of the others). The KL reference is
the starting model: with LoRA/DoRA the same weights with the adapter switched off.

Reads top to bottom: rewards -> prompts -> run directory -> model -> base score -> trainer -> adapter -> score.
"""

from __future__ import annotations

import copy
import random
import time
from typing import Any

from rich.console import Console

from ..config import TunelabConfig
from ..data.records import DataError, Problem
from ..data.split import split_validation
from ..training import auto, rewards, trl_run
from ..training.rundir import RunDir, open_run
from ..training.setup import peft_config, training_kwargs, wrap_model
from .sft import GENERATION_ROWS, RunResult

COMPLETIONS_PER_STEP = 8  # train.batch_size auto: about this many sampled answers per micro-step


def run(cfg: TunelabConfig, *, resume: bool = False, console: Console | None = None,
        callbacks: list[Any] | None = None) -> RunResult:
    console = console or Console(stderr=True)
    trl_run.threads(cfg)
    rewards.check(cfg.rl.rewards, cfg.rl.reward_weights)  # a typo in rl.rewards fails before any loading
    trl_run.check_probes(cfg)
    base, tokenizer, bf16 = trl_run.start(cfg)
    train, val, skipped, report = _prompts(cfg, tokenizer)
    reward_funcs = rewards.build(cfg.rl.rewards, tokenizer)  # user modules and reward models load here, not later
    run_dir = open_run(cfg, resume)
    try:
        result = _train(run_dir, cfg, resume, console, callbacks, base, tokenizer, bf16, train, val, skipped,
                        report, reward_funcs)
    except BaseException as exc:  # whatever happens after the run directory exists, it says so
        run_dir.status("failed", error=f"{type(exc).__name__}: {exc}")
        raise
    trl_run.finish(result, cfg, console)
    return result


def _prompts(cfg: TunelabConfig, tokenizer: Any) -> tuple[list[Any], list[Any], list[Problem], dict[str, Any]]:
    """Training and validation prompts; every problem is found before anything is written."""
    from ..data.preference import load_prompts

    room = cfg.model.max_length - cfg.rl.max_completion_tokens  # prompt tokens that leave room for the answer
    if room <= 0:
        raise DataError([Problem("config", f"rl.max_completion_tokens={cfg.rl.max_completion_tokens} leaves no room "
                                 f"for a prompt within model.max_length={cfg.model.max_length}")])
    answer_needed = rewards.needs_answer(cfg.rl.rewards)

    def one(path: str) -> tuple[list[Any], list[Problem]]:
        rows, problems = load_prompts(path, cfg.data.format, cfg.data.columns, cfg.data.system_prompt,
                                      cfg.rl.answer_field)
        errors = [p for p in problems if p.severity == "error"]
        kept = []
        for r in rows:
            if answer_needed and r.answer is None:
                errors.append(Problem(r.where, f"no {cfg.rl.answer_field!r} field: rl.rewards "
                                      f"{[s for s in cfg.rl.rewards if s in rewards.ANSWER_REWARDS]} score against "
                                      "it (set rl.answer_field to the column holding the reference answer)",
                                      field=cfg.rl.answer_field))
            elif _prompt_tokens(tokenizer, r.prompt) > room:
                # a chat prompt can't be cut without breaking its template: it is left out, and said so
                errors.append(Problem(r.where, f"prompt is over {room} tokens (model.max_length - "
                                      "rl.max_completion_tokens)", severity="warning"))
            else:
                kept.append(r)
        hard = [p for p in errors if p.severity == "error"]
        if hard and cfg.data.on_error == "fail":
            raise DataError(hard, hint=f"{len(hard)} bad row(s) in {path}: fix them, or set data.on_error=skip to "
                            "train without them (they are listed in the run directory)")
        return kept, errors

    train, skipped = one(cfg.data.train)
    if cfg.data.validation:
        val, val_skipped = one(cfg.data.validation)
        skipped += val_skipped
    else:
        train, val = split_validation(train, cfg.data.val_fraction, cfg.train.seed)  # type: ignore[arg-type]
    if cfg.data.limit and cfg.data.limit < len(train):
        keep = set(random.Random(cfg.train.seed).sample(range(len(train)), cfg.data.limit))
        train = [r for i, r in enumerate(train) if i in keep]
    if not train:
        raise DataError([Problem(cfg.data.train, "no usable training prompts")])
    report = {"train_prompts": len(train), "validation_prompts": len(val), "skipped": len(skipped),
              "too_long": sum(p.severity == "warning" for p in skipped)}
    return train, val, skipped, report


def _prompt_tokens(tokenizer: Any, prompt: list[dict[str, Any]]) -> int:
    return len(tokenizer.apply_chat_template(trl_run.messages(prompt), tokenize=True, add_generation_prompt=True,
                                             return_dict=True)["input_ids"])


def _dataset(rows: list[Any]) -> Any:
    """TRL's conversational prompt format; `answer` reaches the reward functions as a keyword argument."""
    from datasets import Dataset

    return Dataset.from_list([{"prompt": trl_run.messages(r.prompt), "answer": r.answer} for r in rows])


def _learning_rate(cfg: TunelabConfig, n_params: int) -> float:
    if cfg.train.learning_rate != "auto":
        return float(cfg.train.learning_rate)
    # RL updates follow the model's own samples, which drift with it: LoRA at a tenth of SFT's rate, full
    # fine-tuning at TRL's GRPO default
    if cfg.peft.method == "full":
        return 1e-6
    return auto.auto_learning_rate(cfg.peft.method, n_params, head=False) / 10


def _trainer_class(cfg: TunelabConfig) -> tuple[Any, Any]:
    if cfg.method == "rloo":
        from trl import RLOOConfig, RLOOTrainer

        return RLOOTrainer, RLOOConfig
    from trl import GRPOConfig, GRPOTrainer

    return GRPOTrainer, GRPOConfig


def _score(model: Any, tokenizer: Any, rows: list[Any], cfg: TunelabConfig) -> tuple[float, list[str]]:
    """Mean `numeric` reward of greedy answers (accuracy on '#### N' style answers)."""
    from ..eval.scoring import generate_answers

    was_training = model.training
    model.eval()
    answers = generate_answers(model, tokenizer, [trl_run.messages(r.prompt) for r in rows],
                               cfg.rl.max_completion_tokens, cfg.eval.batch_size)
    if was_training:
        model.train()
    scores = rewards.numeric([], answers, answer=[r.answer for r in rows])
    return sum(scores) / max(len(scores), 1), answers


def _use_reference(trainer: Any, ref: Any) -> None:
    """Full fine-tuning: TRL loads its reference from the base's path, which misses adapters of earlier runs
    merged into the starting weights; the frozen copy of those weights replaces it, prepared as TRL prepares
    its own (log-probabilities through the fused LM head, no dropout)."""
    from trl.trainer.utils import add_fused_lm_head, disable_dropout_in_model

    if trainer.args.disable_dropout:
        disable_dropout_in_model(ref)
    add_fused_lm_head(ref, temperature=trainer.temperature,
                      cast_lm_head_to_fp32=getattr(trainer.args, "cast_lm_head_to_fp32", False))
    trainer.ref_model = trainer.accelerator.prepare_model(ref.to(trainer.accelerator.device), evaluation_mode=True)


def _base_answers(run: RunDir, n: int) -> list[str] | None:
    path = run.path / "base_predictions.json"
    got = run.read_json(path.name) if path.is_file() else None
    return got if isinstance(got, list) and len(got) == n else None


def _last_user(prompt: list[dict[str, Any]]) -> str:
    return next((m["content"] for m in reversed(prompt) if m["role"] == "user"), "")


def _reward_summary(run: RunDir) -> dict[str, Any]:
    """First and last logged mean reward (total and per function) from metrics.jsonl."""
    import json

    logged = [json.loads(ln) for ln in run.metrics.read_text().splitlines() if ln.strip()] \
        if run.metrics.exists() else []
    logged = [r for r in logged if r.get("reward") is not None]
    if not logged:
        return {}
    out: dict[str, Any] = {"reward_first": logged[0]["reward"], "reward_last": logged[-1]["reward"]}
    for key in logged[-1]:
        if key.startswith("rewards/") and key.endswith("/mean"):
            out[f"reward_last_{key.split('/')[1]}"] = logged[-1][key]
    if logged[-1].get("kl") is not None:
        out["kl_last"] = logged[-1]["kl"]
    return out


def _train(run: RunDir, cfg: TunelabConfig, resume: bool, console: Console, callbacks: list[Any] | None, base: Any,
           tokenizer: Any, bf16: bool, train: list[Any], val: list[Any], skipped: list[Problem],
           report: dict[str, Any], reward_funcs: list[Any]) -> RunResult:
    from transformers import set_seed

    run.write_data_report(report, skipped, console)
    set_seed(cfg.train.seed)
    model = trl_run.starting_model(cfg, base)
    n_params = sum(p.numel() for p in model.parameters())
    scored = [r for r in val if r.answer is not None][: cfg.eval.limit or GENERATION_ROWS]
    summary: dict[str, Any] = {"method": cfg.method, "task": "chat", "base_model": cfg.model.base,
                               "train_prompts": len(train), "validation_prompts": len(val), "eval_rows": len(scored),
                               "rewards": list(cfg.rl.rewards), "precision": "bf16" if bf16 else "fp32"}
    if scored and not resume:
        t0 = time.perf_counter()
        summary["base_reward"], base_answers = _score(model, tokenizer, scored, cfg)
        run.write_json("base_predictions.json", base_answers)  # kept for the paired comparison, also on --resume
        console.print(f"base model numeric reward: [bold]{summary['base_reward']:.1%}[/] on {len(scored)} "
                      f"validation prompts ({time.perf_counter() - t0:.0f} s)")

    # LoRA/DoRA: TRL wraps the model itself, so its KL reference is this model with the adapter switched off.
    # Full: the policy is every weight, so the reference is a frozen copy of where it started.
    lora = cfg.peft.method != "full"
    ref = None if lora or cfg.rl.kl_beta == 0 else copy.deepcopy(model).eval().requires_grad_(False)
    if not lora:
        model = wrap_model(model, cfg, "CAUSAL_LM")
    G = cfg.rl.num_generations
    prompts_per_step = (int(cfg.train.batch_size) if cfg.train.batch_size != "auto"
                        else max(1, COMPLETIONS_PER_STEP // G))
    epochs = 1 if cfg.train.epochs == "auto" else int(cfg.train.epochs)
    hp = auto.resolve(epochs=epochs, learning_rate=_learning_rate(cfg, n_params), batch_size=prompts_per_step,
                      grad_accum=cfg.train.grad_accum, max_steps=cfg.train.max_steps,
                      warmup_ratio=cfg.train.warmup_ratio, method=cfg.peft.method, n_params=n_params, head=False,
                      lengths=[0] * len(train))
    kwargs = training_kwargs(cfg, hp, run.checkpoints, has_val=False, packed=False)
    kwargs.pop("train_sampling_strategy", None)  # TRL samples prompts its own way (each num_generations times)
    kwargs.update(per_device_train_batch_size=prompts_per_step * G, per_device_eval_batch_size=prompts_per_step * G,
                  max_steps=hp.total_steps)  # counted in prompts, not in sampled answers: steps are exact
    trainer_cls, config_cls = _trainer_class(cfg)
    args = config_cls(**kwargs, bf16=bf16, gradient_checkpointing=False, num_generations=G,
                      max_completion_length=cfg.rl.max_completion_tokens, temperature=cfg.rl.temperature,
                      beta=cfg.rl.kl_beta, reward_weights=cfg.rl.reward_weights, log_completions=False)
    cbs, interrupt = trl_run.callbacks(run, console, callbacks)
    trainer = trl_run.quiet(trainer_cls(model=model, reward_funcs=reward_funcs, args=args,
                                        train_dataset=_dataset(train), processing_class=tokenizer, callbacks=cbs,
                                        peft_config=peft_config(cfg, "CAUSAL_LM") if lora else None))
    if ref is not None:
        _use_reference(trainer, ref)
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    run.write_json("resolved.json", hp.to_dict() | {
        "trainable_params": trainable, "total_params": n_params, "bf16": bf16, "method": cfg.method,
        "prompts_per_step": prompts_per_step * cfg.train.grad_accum, "num_generations": G,
        "completions_per_step": prompts_per_step * G * cfg.train.grad_accum})
    console.print(f"[bold]Run[/] {run.path}  {cfg.method}  prompts {len(train)} train / {len(val)} validation  "
                  f"lr {hp.learning_rate:g}  {prompts_per_step}x{cfg.train.grad_accum} prompts x {G} answers  "
                  f"steps {hp.total_steps}  rewards {', '.join(cfg.rl.rewards)}  trainable {trainable / 1e6:.2f}M  "
                  f"{'bf16' if bf16 else 'fp32'}")

    out, seconds = trl_run.train(trainer, run, resume, console)
    summary |= {"steps": trainer.state.global_step, "train_loss": out.training_loss,
                "train_seconds": round(seconds, 1), "tokens_seen": int(trainer.state.num_input_tokens_seen or 0)}
    summary |= _reward_summary(run)
    if interrupt.requested:
        run.status("interrupted", **summary)
        console.print(f"[yellow]Stopped at step {trainer.state.global_step}; continue with --resume[/]")
        return RunResult(run.path, "interrupted", run.read_json("summary.json"))
    trl_run.save(run, cfg, trainer.model, tokenizer)
    if scored:
        t0 = time.perf_counter()
        merged = lora and hasattr(trainer.model, "merge_adapter")
        if merged:  # saved already: fold the adapter in for scoring, unmerged LoRA generates far slower on a CPU
            trainer.model.merge_adapter()
        summary["tuned_reward"], answers = _score(trainer.model, tokenizer, scored, cfg)
        if merged:
            trainer.model.unmerge_adapter()
        base_answers = _base_answers(run, len(scored))
        run.write_json("predictions.json", [
            {"where": r.where, "prompt": _last_user(r.prompt), "answer": r.answer, "predicted": a}
            | ({"base_predicted": base_answers[i]} if base_answers else {})
            for i, (r, a) in enumerate(zip(scored, answers, strict=True))])
        console.print(f"numeric reward: base {summary.get('base_reward', float('nan')):.1%} -> tuned "
                      f"[bold]{summary['tuned_reward']:.1%}[/] on {len(scored)} validation prompts "
                      f"({time.perf_counter() - t0:.0f} s)")
    run.status("completed", **summary)
    return RunResult(run.path, "completed", run.read_json("summary.json"))
