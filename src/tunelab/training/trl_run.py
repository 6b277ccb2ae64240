"""What the TRL-based recipes (reward models, DPO and its relatives) share: preference data in, the
starting model, callbacks, and the run directory's bookkeeping, so each recipe keeps only its method."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from transformers import TrainerCallback

from ..config import ConfigError, TunelabConfig
from ..data.records import DataError, Problem
from ..data.split import split_validation
from ..models.load import load_tokenizer, merge_adapters, resolve
from . import hardware
from .callbacks import GracefulInterrupt, MetricsLogger, RichProgress, TokenCounter
from .rundir import RunDir


class SeenTokens(TrainerCallback):
    """TRL trainers count input tokens themselves (`num_input_tokens_seen`): feed them to progress and logs."""

    def __init__(self, counter: TokenCounter) -> None:
        self.counter = counter

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.counter.tokens = int(state.num_input_tokens_seen or 0)


def threads(cfg: TunelabConfig) -> None:
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)


def start(cfg: TunelabConfig) -> tuple[Any, Any, bool]:
    """(resolved base, tokenizer, bf16) for a run."""
    if not cfg.data.train:
        raise DataError([Problem("config", "data.train is empty: set it to your training file")])
    base = resolve(cfg.model.base)
    tokenizer = load_tokenizer(str(base.run / "tokenizer") if base.run else base.path)
    if tokenizer.chat_template is None:
        raise ConfigError(f"method: {cfg.method} renders prompts with the model's chat template, and "
                          f"{cfg.model.base} has none: pick a chat model")
    return base, tokenizer, hardware.use_bf16(cfg.model.precision)


def check_probes(cfg: TunelabConfig) -> None:
    """A bad probe file is found now, not after training (a reward model writes no answers: it is not probed)."""
    if cfg.eval.probes.enabled and cfg.method != "reward":
        from ..probes.run import probe_sets

        probe_sets(cfg.eval.probes)


def preference_pairs(cfg: TunelabConfig) -> tuple[list[Any], list[Any], list[Problem], dict[str, Any]]:
    """Training and validation pairs, every problem found before anything is written."""
    from ..data.preference import load_pairs

    fmt = cfg.data.format if cfg.data.format in ("trl", "openai_dpo", "hh_rlhf") else "auto"

    def one(path: str) -> tuple[list[Any], list[Problem], dict[str, str]]:
        pairs, problems, formats = load_pairs(path, fmt, cfg.data.columns, cfg.data.system_prompt)
        errors = [p for p in problems if p.severity == "error"]
        if errors and cfg.data.on_error == "fail":
            raise DataError(errors)
        return pairs, errors, formats

    train, skipped, formats = one(cfg.data.train)
    if cfg.data.validation:
        val, val_skipped, val_formats = one(cfg.data.validation)
        skipped, formats = skipped + val_skipped, formats | val_formats
    else:
        train, val = split_validation(train, cfg.data.val_fraction, cfg.train.seed)
    if cfg.data.limit and cfg.data.limit < len(train):
        keep = set(random.Random(cfg.train.seed).sample(range(len(train)), cfg.data.limit))
        train = [p for i, p in enumerate(train) if i in keep]
    if not train:
        raise DataError([Problem(cfg.data.train, "no usable preference pairs")])
    report = {"format": formats, "train_pairs": len(train), "validation_pairs": len(val), "skipped": len(skipped)}
    return train, val, skipped, report


def run_on_pairs(cfg: TunelabConfig, resume: bool, console: Console | None, callbacks: list[Any] | None,
                 train_fn: Any) -> Any:
    """The part every pair-trained recipe shares: check the data, open the run, mark it failed on any error."""
    from .rundir import open_run

    console = console or Console(stderr=True)
    threads(cfg)
    check_probes(cfg)
    base, tokenizer, bf16 = start(cfg)
    train, val, skipped, report = preference_pairs(cfg)
    run_dir = open_run(cfg, resume)
    try:
        result = train_fn(run_dir, cfg, resume, console, callbacks, base, tokenizer, bf16, train, val, skipped,
                          report)
    except BaseException as exc:  # whatever happens after the run directory exists, it says so
        run_dir.status("failed", error=f"{type(exc).__name__}: {exc}")
        raise
    finish(result, cfg, console)
    return result


def finish(result: Any, cfg: TunelabConfig, console: Console) -> None:
    """After a completed run: the probes of the tuned model (loaded back as `tunelab probe` loads it), then the
    report, which shows them."""
    if result.status != "completed":
        return
    if cfg.eval.probes.enabled and cfg.method != "reward":
        from ..probes.run import probe_saved_run

        probe_saved_run(result.run_dir, cfg.eval.probes, batch_size=cfg.eval.batch_size, console=console)
    from ..eval.report import report_completed

    report_completed(result, console)


def messages(msgs: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [{"role": m["role"], "content": m["content"]} for m in msgs]


def conversational(pair: Any) -> dict[str, Any]:
    """A pair in TRL's conversational preference format; TRL renders it with the chat template."""
    return {"prompt": messages(pair.prompt), "chosen": [{"role": "assistant", "content": pair.chosen}],
            "rejected": [{"role": "assistant", "content": pair.rejected}]}


def pair_lengths(pairs: list[Any], tokenizer: Any) -> list[int]:
    """Rough token count of prompt + the longer answer, for the automatic batch size."""
    out = []
    for p in pairs:
        chars = sum(len(m["content"]) for m in p.prompt) + max(len(p.chosen), len(p.rejected))
        out.append(2 * max(1, chars // 4))  # both sides of the pair go through the model
    return out


def starting_model(cfg: TunelabConfig, base: Any, *, reward_head: bool = False, pad_token_id: int | None = None) -> Any:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if reward_head:
        model = AutoModelForSequenceClassification.from_pretrained(base.path, num_labels=1, dtype=torch.float32)
        model.config.pad_token_id = pad_token_id
    else:
        model = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32)
    model = merge_adapters(model, base.adapters)  # continuing from a tunelab run: start from what it trained
    return model.to(hardware.device())


def callbacks(run: RunDir, console: Console, extra: list[Any] | None) -> tuple[list[Any], GracefulInterrupt]:
    counter = TokenCounter()
    interrupt = GracefulInterrupt(console)
    return [SeenTokens(counter), MetricsLogger(run.metrics, counter), RichProgress(counter, console), interrupt,
            *(extra or [])], interrupt


def quiet(trainer: Any) -> Any:
    """Progress and metrics.jsonl replace the trainer's own printing (also for evaluations before training)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    return trainer


def train(trainer: Any, run: RunDir, resume: bool, console: Console) -> tuple[Any, float]:
    checkpoint = run.last_checkpoint() if resume else None
    if resume and checkpoint is None:
        console.print("[yellow]No checkpoint in this run yet: starting it from the beginning[/]")
    run.trim_metrics(int(checkpoint.name.split("-")[-1]) if checkpoint else 0)
    t0 = time.perf_counter()
    out = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    return out, time.perf_counter() - t0


def save(run: RunDir, cfg: TunelabConfig, model: Any, tokenizer: Any) -> Path:
    """The adapter in standard PEFT format (or the full model) and the tokenizer, as SFT runs save them."""
    final = run.path / ("model" if cfg.peft.method == "full" else "adapter")
    model.save_pretrained(str(final))
    tokenizer.save_pretrained(str(run.path / "tokenizer"))
    return final


def final_eval(trainer: Any) -> dict[str, float]:
    """Held-out metrics of the trained model. When the trainer has just evaluated it at its last step (and kept
    that model, not an earlier best checkpoint), those are reused: on 2 CPU cores one pass over 183 preference
    pairs takes about 10 minutes, and a second pass gives the same numbers."""
    state = trainer.state
    last = next((h for h in reversed(state.log_history) if "eval_loss" in h), None)
    best = state.best_model_checkpoint
    kept_last = best is None or Path(best).name == f"checkpoint-{state.global_step}"
    if last is not None and last.get("step") == state.global_step and kept_last:
        return eval_metrics(last)
    return eval_metrics(trainer.evaluate())


def eval_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """TRL's eval metrics with names that survive JSON keys and reports: eval_rewards/margins -> ..."""
    return {k.replace("/", "_"): float(v) for k, v in metrics.items()
            if k.startswith("eval_") and isinstance(v, int | float)}
