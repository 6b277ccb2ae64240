"""Online RL through TRL: GRPO, RLOO and online DPO. Each prompt is answered num_generations times by the model
being trained, the answers are scored by rl.rewards, and each answer is pushed up or down by how it scored against
the others from the same prompt (GRPO: group mean and std; RLOO: the mean of the others; online DPO: two answers,
the better-scored one trained as preferred with DPO's loss, preference.beta). The KL reference is the starting
model: with LoRA/DoRA the same weights with the adapter switched off. With rl.grader (OpenAI's grader
object) the grader is the reward, reading each row's other fields as its item, and held-out prompts are scored by
the grader's mean reward instead of the numeric one.

Reads top to bottom: rewards and prompts -> (run directory) -> model -> base score -> trainer -> adapter -> score.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import distributed, graders, rewards
from ..config import ConfigError, TunelabConfig
from ..data.records import DataError, Problem
from ..data.split import sample_limit, split_validation
from ..data.templates import for_template, render_chat
from ..models.load import starting_model
from ..runs import RunDir
from ..training import auto
from ..training.setup import peft_config, wrap_model
from ..training.trl_common import messages, quiet, trl_kwargs
from .lifecycle import Prepared, Session, Start


@dataclass
class Prompts:
    train: list[Any]
    val: list[Any]
    reward_funcs: list[Any]


def check(cfg: TunelabConfig) -> None:
    """A typo in rl.rewards, or a grader tunelab can't run (its source compiled with the config), fails before
    any loading."""
    if cfg.rl.grader is not None:
        graders.check(cfg.rl.grader, "rl.grader")
    else:
        rewards.check(cfg.rl.rewards)


def prepare(start: Start) -> Prepared:
    """Prompts and reward functions; user modules and reward models load here, before the run opens."""
    cfg = start.cfg
    train, val, skipped, report = _prompts(cfg, start.tokenizer)
    funcs = ([graders.reward_function(cfg.rl.grader, python_timeout=cfg.rl.grader_timeout)]
             if cfg.rl.grader is not None else rewards.build(cfg.rl.rewards, start.tokenizer))
    return Prepared(Prompts(train, val, funcs), report, skipped)


def _prompts(cfg: TunelabConfig, tokenizer: Any) -> tuple[list[Any], list[Any], list[Problem], dict[str, Any]]:
    """Training and validation prompts; every problem is found before anything is written."""
    from ..data.preference import load_prompts

    room = cfg.model.max_length - cfg.rl.max_completion_tokens  # prompt tokens that leave room for the answer
    answer_needed = cfg.rl.grader is None and rewards.needs_answer(cfg.rl.rewards)  # a grader reads the item

    def one(path: str) -> tuple[list[Any], list[Problem]]:
        rows, problems = load_prompts(path, cfg.data.format, cfg.data.columns, cfg.data.system_prompt,
                                      cfg.rl.answer_field)
        errors = [p for p in problems if p.severity == "error"]
        kept = []
        for r in rows:
            missing = graders.missing_item_fields(cfg.rl.grader, r.item) if cfg.rl.grader is not None else []
            if missing:
                errors.append(Problem(r.where, f"no {', '.join(missing)}: rl.grader's templates read "
                                      f"{'them' if len(missing) > 1 else 'it'} from the row's fields",
                                      field=missing[0].removeprefix("item.")))
            elif answer_needed and r.answer is None:
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
    train = sample_limit(train, cfg.data.limit, cfg.train.seed)
    if not train:
        raise DataError([Problem(cfg.data.train, "no usable training prompts")])
    report = {"train_prompts": len(train), "validation_prompts": len(val), "skipped": len(skipped),
              "too_long": sum(p.severity == "warning" for p in skipped)}
    return train, val, skipped, report


def _prompt_tokens(tokenizer: Any, prompt: list[dict[str, Any]]) -> int:
    return len(render_chat(tokenizer, messages(prompt), tokenize=True, add_generation_prompt=True,
                           return_dict=True)["input_ids"])


def _dataset(rows: list[Any], with_items: bool, tokenizer: Any) -> Any:
    """TRL's conversational prompt format, written as the chat template takes it (TRL renders it); `answer` (and a
    grader's `item`) reach the reward functions as keyword arguments."""
    from datasets import Dataset

    return Dataset.from_list([{"prompt": for_template(tokenizer, messages(r.prompt)), "answer": r.answer}
                              | ({"item": graders.item_column(r.item)} if with_items else {}) for r in rows])


def _trainer_class(cfg: TunelabConfig) -> tuple[Any, Any]:
    if cfg.method == "online_dpo":
        return _online_dpo()
    if cfg.method == "rloo":
        from trl import RLOOConfig, RLOOTrainer

        return RLOOTrainer, RLOOConfig
    from trl import GRPOConfig, GRPOTrainer

    return GRPOTrainer, GRPOConfig


def _online_dpo() -> tuple[Any, Any]:
    """TRL's online DPO trainer (in trl.experimental), its two headline metrics logged under GRPO's names so that
    progress, the summary and the report read one set: objective/scores -> reward, objective/kl -> kl."""
    import torch

    try:
        from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer
    except ImportError as exc:  # experimental in TRL: moved or gone in another version
        raise ConfigError(f"method: online_dpo needs trl.experimental.online_dpo, which this TRL lacks ({exc}); "
                          "install the TRL version tunelab pins, or use method: grpo") from None

    class Trainer(OnlineDPOTrainer):  # type: ignore[misc]
        def _forward(self, model: Any, prompt_ids: Any, prompt_mask: Any, completion_ids: Any, completion_mask: Any,
                     *args: Any, **kwargs: Any) -> Any:
            # the policy's forward pass (the one with gradients; the reference's runs without) sees every prompt
            # and sampled answer of the step once: count their tokens as GRPO's trainer counts its own, summed
            # over processes, so that tokens/s and the progress read them
            if torch.is_grad_enabled() and self.model.training:
                seen = (prompt_mask.sum() + completion_mask.sum()).reshape(1)
                self.state.num_input_tokens_seen += int(self.accelerator.gather(seen).sum().item())
            return super()._forward(model, prompt_ids, prompt_mask, completion_ids, completion_mask, *args, **kwargs)

        def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
            for theirs, ours in (("objective/scores", "reward"), ("objective/kl", "kl")):
                if theirs in logs:
                    logs[ours] = logs.pop(theirs)
            super().log(logs, *args, **kwargs)

    return Trainer, OnlineDPOConfig


def _method_args(cfg: TunelabConfig) -> dict[str, Any]:
    """The trainer config's own settings: online DPO samples two answers and weighs its loss by preference.beta."""
    rl = cfg.rl
    if cfg.method == "online_dpo":
        return dict(max_new_tokens=rl.max_completion_tokens, max_length=cfg.model.max_length,
                    temperature=rl.temperature, beta=[cfg.preference.beta], reward_weights=rl.reward_weights)
    return dict(num_generations=rl.num_generations, max_completion_length=rl.max_completion_tokens,
                temperature=rl.temperature, beta=rl.kl_beta, reward_weights=rl.reward_weights, log_completions=False)


def _score(model: Any, tokenizer: Any, rows: list[Any], cfg: TunelabConfig,
           judge: Judge) -> tuple[list[float], list[str]]:
    """Each greedy answer to a held-out prompt, and its score by `judge`."""
    from ..eval.scoring import generate_answers

    was_training = model.training
    model.eval()
    answers = generate_answers(model, tokenizer, [messages(r.prompt) for r in rows],
                               cfg.rl.max_completion_tokens, cfg.eval.batch_size)
    if was_training:
        model.train()
    return judge(answers, rows), answers


Judge = Callable[[list[str], list[Any]], list[float]]


def _judge(cfg: TunelabConfig, data: Prompts, tokenizer: Any) -> tuple[Judge, str]:
    """How held-out answers are scored, and its name: a grader's reward; `numeric` where the rows have reference
    answers; else, when no reward needs one (a reward model, say), the training rewards, weighted as in training."""
    if cfg.rl.grader is not None:
        grader = data.reward_funcs[0]
        return (lambda answers, rows: [r.reward for r in grader.grade(answers, [r.item for r in rows])],
                "grader_mean_reward")
    if not rewards.needs_answer(cfg.rl.rewards) and all(r.answer is None for r in data.val):
        weights = cfg.rl.reward_weights or [1.0] * len(data.reward_funcs)

        def judged(answers: list[str], rows: list[Any]) -> list[float]:
            prompts = [for_template(tokenizer, messages(r.prompt)) for r in rows]
            completions = [[{"role": "assistant", "content": a}] for a in answers]
            total = [0.0] * len(answers)
            for w, f in zip(weights, data.reward_funcs, strict=True):
                got = f(prompts=prompts, completions=completions, answer=[r.answer for r in rows])
                total = [t + w * float(x or 0.0) for t, x in zip(total, got, strict=True)]
            return total

        return judged, "mean_reward"
    return lambda answers, rows: rewards.numeric([], answers, answer=[r.answer for r in rows]), "numeric_accuracy"


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


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
    got = run.base_predictions()
    return got if got is not None and len(got) == n else None


def _last_user(prompt: list[dict[str, Any]]) -> str:
    return next((m["content"] for m in reversed(prompt) if m["role"] == "user"), "")


def _reward_summary(run: RunDir) -> dict[str, Any]:
    """First and last logged mean reward (total and per function) from metrics.jsonl."""
    logged = [r for r in run.metrics().rows if r.get("reward") is not None]
    if not logged:
        return {}
    out: dict[str, Any] = {"reward_first": logged[0]["reward"], "reward_last": logged[-1]["reward"]}
    for key in logged[-1]:
        if key.startswith("rewards/") and key.endswith("/mean"):
            out[f"reward_last_{key.split('/')[1]}"] = logged[-1][key]
    if logged[-1].get("kl") is not None:
        out["kl_last"] = logged[-1]["kl"]
    return out


def train(session: Session, prepared: Prepared) -> Any:
    from transformers import set_seed

    cfg, tokenizer, console, run = session.cfg, session.tokenizer, session.console, session.run
    data: Prompts = prepared.data
    set_seed(cfg.train.seed)
    model = starting_model(session.start.base, **auto.loading(cfg))
    n_params = sum(p.numel() for p in model.parameters())
    grader = data.reward_funcs[0] if cfg.rl.grader is not None else None
    judge, eval_metric = _judge(cfg, data, tokenizer)
    on_scale = eval_metric != "numeric_accuracy"  # a mean reward on the rewards' own scale, not a share right
    # a grader (it reads the row's item) or rewards that need no reference score every held-out prompt;
    # numeric needs a reference answer
    scorable = data.val if on_scale else [r for r in data.val if r.answer is not None]
    scored = scorable[: auto.scored_rows(cfg, classification=False)]
    metric = (f"grader {grader.grader.name!r} mean reward" if grader is not None
              else "mean reward" if on_scale else "numeric reward")
    summary = session.summary
    summary.update(method=cfg.method, task="chat", base_model=cfg.model.base, train_prompts=len(data.train),
                   validation_prompts=len(data.val), eval_rows=len(scored),
                   rewards=[grader.__name__] if grader is not None else list(cfg.rl.rewards),
                   precision=session.precision)
    if on_scale:
        summary["eval_metric"] = eval_metric
    if grader is not None:  # base_reward / tuned_reward are the grader's mean reward, not a share answered right
        summary.update(grader=grader.grader.name, grader_type=grader.grader.type,
                       pass_threshold=graders.pass_threshold(grader.grader))
    if scored and not session.resume and session.main:
        t0 = time.perf_counter()
        session.phase("scoring base model")
        base_scores, base_answers = _score(model, tokenizer, scored, cfg, judge)
        summary["base_reward"] = _mean(base_scores)
        run.write_base_predictions(base_answers)  # kept for the paired comparison, also on --resume
        console.print(f"base model {metric}: [bold]{_shown(summary['base_reward'], on_scale)}[/] on {len(scored)} "
                      f"validation prompts ({time.perf_counter() - t0:.0f} s)")
        if grader is not None and grader.failed:  # seen before training, not only in metrics.jsonl
            console.print(f"[yellow]The grader failed on {grader.failed} of {grader.graded} base answers (scored 0); "
                          f"the first: {grader.first_error}[/]")

    # LoRA/DoRA: TRL wraps the model itself, so its KL reference is this model with the adapter switched off.
    # Full: the policy is every weight, so the reference is a frozen copy of where it started.
    # Online DPO: TRL copies the reference itself when there is no adapter.
    lora = cfg.peft.method != "full"
    ref = (None if lora or cfg.rl.kl_beta == 0 or cfg.method == "online_dpo"
           else copy.deepcopy(model).eval().requires_grad_(False))
    if not lora:
        model = wrap_model(model, cfg, "CAUSAL_LM")
    G = auto.generations(cfg)
    hp = session.hyperparams(n_params=n_params, lengths=[0] * len(data.train))
    prompts_per_step = hp.batch_size
    # each process samples answers to its prompts; GRPO and RLOO count their batch in answers, online DPO in prompts
    per_process = prompts_per_step // distributed.world_size() * (1 if cfg.method == "online_dpo" else G)
    kwargs = trl_kwargs(cfg, hp, run.checkpoints, has_val=False)
    # the prompts carry no input_ids for the trainer to count (a warning every step): GRPO and RLOO count the
    # tokens they sample and score themselves, online DPO's policy pass counts them (_online_dpo)
    kwargs["include_num_input_tokens_seen"] = "no"
    kwargs.update(per_device_train_batch_size=per_process, per_device_eval_batch_size=per_process,
                  max_steps=hp.total_steps)  # counted in prompts, not in sampled answers: steps are exact
    trainer_cls, config_cls = _trainer_class(cfg)
    args = config_cls(**kwargs, bf16=session.bf16, **_method_args(cfg))
    trainer = quiet(trainer_cls(model=model, reward_funcs=data.reward_funcs, args=args,
                                train_dataset=_dataset(data.train, grader is not None, tokenizer),
                                processing_class=tokenizer,
                                callbacks=session.callbacks(),
                                peft_config=peft_config(cfg, "CAUSAL_LM") if lora else None))
    if ref is not None:
        _use_reference(trainer, ref)
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    session.announce(hp, n_params=n_params, trainable=trainable, method=cfg.method,
                     prompts_per_step=prompts_per_step * cfg.train.grad_accum, num_generations=G,
                     completions_per_step=prompts_per_step * G * cfg.train.grad_accum,
                     what=f"{cfg.method}  prompts {len(data.train)} train / {len(data.val)} validation  "
                          + (f"grader {grader.grader.name} ({grader.grader.type})" if grader is not None
                             else f"rewards {', '.join(cfg.rl.rewards)}"),
                     batch=f"{prompts_per_step}x{cfg.train.grad_accum} prompts x {G} answers")
    try:
        session.fit(trainer)
    finally:
        summary |= _reward_summary(run)  # also for an interrupted run
        if grader is not None:  # answers the grader failed on scored 0: how many, so that it is seen
            summary.update(grader_graded=grader.graded, grader_failed=grader.failed)
    session.save(trainer.model)
    if scored and session.main:
        t0 = time.perf_counter()
        session.phase("scoring tuned model")
        merged = lora and hasattr(trainer.model, "merge_adapter")
        if merged:  # saved already: fold the adapter in for scoring, unmerged LoRA generates far slower on a CPU
            trainer.model.merge_adapter()
        tuned_scores, answers = _score(trainer.model, tokenizer, scored, cfg, judge)
        if merged:
            trainer.model.unmerge_adapter()
        summary["tuned_reward"] = _mean(tuned_scores)
        base_answers = _base_answers(run, len(scored))
        base_scores = judge(base_answers, scored) if base_answers else None
        if base_scores and eval_metric == "mean_reward":  # no threshold says right: which answer scored higher
            summary["win_rate"] = _mean([1.0 if t > b else 0.5 if t == b else 0.0
                                         for t, b in zip(tuned_scores, base_scores, strict=True)])
        # each answer marked right or wrong now, so the report needs no scoring code of its own; a grader's
        # answer is right at its pass threshold, and its reward is kept beside; a reward's mean has no right
        passed = graders.pass_threshold(grader.grader) if grader is not None else 1.0
        marked = eval_metric != "mean_reward"

        def row(i: int, r: Any, a: str) -> dict[str, Any]:
            out = {"where": r.where, "prompt": _last_user(r.prompt), "answer": r.answer, "predicted": a}
            out |= {"correct": tuned_scores[i] >= passed} if marked else {}
            out |= {"reward": tuned_scores[i]} if on_scale else {}
            if base_answers and base_scores:
                out |= {"base_predicted": base_answers[i]} | ({"base_correct": base_scores[i] >= passed}
                                                              if marked else {})
                out |= {"base_reward": base_scores[i]} if on_scale else {}
            return out

        run.write_predictions([row(i, r, a) for i, (r, a) in enumerate(zip(scored, answers, strict=True))])
        console.print(f"{metric}: base {_shown(summary.get('base_reward', float('nan')), on_scale)} -> tuned "
                      f"[bold]{_shown(summary['tuned_reward'], on_scale)}[/] on {len(scored)} validation prompts "
                      f"({time.perf_counter() - t0:.0f} s)")
    return trainer.model


def _shown(value: float, on_scale: bool) -> str:
    """numeric's mean is a share answered right; a grader's or the rewards' is a reward on its own scale."""
    return f"{value:.3f}" if on_scale else f"{value:.1%}"
