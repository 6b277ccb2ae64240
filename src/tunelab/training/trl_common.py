"""What the TRL-based recipes (reward models, DPO and its relatives, GRPO/RLOO) share at the trainer level:
TrainingArguments for TRL's configs, token counts, quiet trainers, TRL's conversational rows, held-out metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import TunelabConfig
from ..data.templates import for_template
from ..runs import checkpoint_step
from .auto import Hyperparams
from .setup import training_kwargs


def trl_kwargs(cfg: TunelabConfig, hp: Hyperparams, checkpoints: Path, *, has_val: bool) -> dict[str, Any]:
    """TrainingArguments for a TRL config class; TRL samples pairs and prompts its own way."""
    kwargs = training_kwargs(cfg, hp, checkpoints, has_val=has_val, packed=False)
    if hp.order is None:
        kwargs.pop("train_sampling_strategy", None)
    return kwargs


def quiet(trainer: Any) -> Any:
    """Progress and metrics.jsonl replace the trainer's own printing (also for evaluations before training)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    return trainer


def messages(msgs: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [{"role": m["role"], "content": m["content"]} for m in msgs]


def conversational(pair: Any, tokenizer: Any) -> dict[str, Any]:
    """A pair in TRL's conversational preference format; TRL renders it with the chat template, so the prompt is
    written as that template takes it (a system prompt folded where it has no system role, as SFT writes it)."""
    return {"prompt": for_template(tokenizer, messages(pair.prompt)),
            "chosen": [{"role": "assistant", "content": pair.chosen}],
            "rejected": [{"role": "assistant", "content": pair.rejected}]}


def pair_lengths(pairs: list[Any]) -> list[int]:
    """Rough token count of prompt + the longer answer, for the automatic batch size."""
    out = []
    for p in pairs:
        chars = sum(len(m["content"]) for m in p.prompt) + max(len(p.chosen), len(p.rejected))
        out.append(2 * max(1, chars // 4))  # both sides of the pair go through the model
    return out


def final_eval(trainer: Any) -> dict[str, float]:
    """Held-out metrics of the trained model. When the trainer has just evaluated it at its last step (and kept
    that model, not an earlier best checkpoint), those are reused: on 2 CPU cores one pass over 183 preference
    pairs takes about 10 minutes, and a second pass gives the same numbers."""
    state = trainer.state
    last = next((h for h in reversed(state.log_history) if "eval_loss" in h), None)
    best = state.best_model_checkpoint
    kept_last = best is None or checkpoint_step(best) == state.global_step
    if last is not None and last.get("step") == state.global_step and kept_last:
        return eval_metrics(last)
    return eval_metrics(trainer.evaluate())


def eval_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """TRL's eval metrics with names that survive JSON keys and reports: eval_rewards/margins -> ..."""
    return {k.replace("/", "_"): float(v) for k, v in metrics.items()
            if k.startswith("eval_") and isinstance(v, int | float)}
