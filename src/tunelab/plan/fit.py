"""Will it fit? The ladder of changes that bring a run's memory down, each with its own estimate, and
`train.fit: auto`: the first rung that fits, applied before training (the report says what was changed).

Rungs, each adding to the ones before, in the order that changes the training least:
  1. smaller micro-batches: the same examples per optimizer step, in more, smaller pieces (max_batch_tokens
     for supervised runs; batch_size with grad_accum for the others) - the same training, slower;
  2. gradient checkpointing - the same training, about a third slower;
  3. LoRA instead of full fine-tuning;
  4. a smaller LoRA rank.
QLoRA (4-bit base) needs a GPU, and a smaller model is the user's choice: both are said, not applied.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.console import Console

from .. import distributed
from ..config import ConfigError, TunelabConfig
from ..config.load import apply_overrides
from ..errors import TunelabError
from ..training import auto
from .estimate import Estimate, describe, estimate, memory_limit, mib

QUICK_BOUND_SHARE = 0.5  # below this share of the limit, a generous bound says the run fits: no rehearsal


class DoesNotFit(TunelabError):
    """Not even the last rung of the ladder fits in memory."""


@dataclass
class Rung:
    change: str  # in words
    overrides: dict[str, Any]  # dotted key -> value


def ladder(cfg: TunelabConfig, batch_size: int) -> list[Rung]:
    """The rungs that apply to this run, each including the ones before it."""
    t, p = cfg.train, cfg.peft
    out: list[Rung] = []
    so_far: dict[str, Any] = {}

    def add(change: str, **overrides: Any) -> None:
        so_far.update(overrides)
        out.append(Rung(change, dict(so_far)))

    if cfg.method == "sft" and t.max_batch_tokens and (t.max_batch_tokens == "auto" or t.max_batch_tokens > 128):
        add(f"smaller micro-batches (train.max_batch_tokens {t.max_batch_tokens} -> 128)",
            **{"train.max_batch_tokens": 128})
    elif cfg.method == "sft" and not t.max_batch_tokens:
        add("smaller micro-batches (train.max_batch_tokens 128)", **{"train.max_batch_tokens": 128})
    elif cfg.method != "sft" and batch_size > 1:
        n = distributed.world_size()  # a batch the processes can still split evenly
        smaller = max(n, batch_size // 4 // n * n)
        add(f"smaller micro-batches (batch {batch_size}x{t.grad_accum} -> {smaller}x"
            f"{t.grad_accum * batch_size // smaller}, the same examples per step)",
            **{"train.batch_size": smaller, "train.grad_accum": t.grad_accum * batch_size // smaller})
    if t.gradient_checkpointing is not True:
        add("gradient checkpointing (train.gradient_checkpointing true)", **{"train.gradient_checkpointing": True})
    if p.method == "full":
        add("LoRA instead of full fine-tuning (peft.method lora, r 16)", **{"peft.method": "lora", "peft.r": 16,
                                                                          "peft.alpha": 32})
    rank = so_far.get("peft.r", p.r)
    if rank > 4:
        smaller = max(4, rank // 4)
        alpha = max(1, round(so_far.get("peft.alpha", p.alpha) * smaller / rank))
        add(f"a smaller LoRA rank (peft.r {rank} -> {smaller})", **{"peft.r": smaller, "peft.alpha": alpha})
    return out


ADVICE = ("On a GPU, QLoRA (a 4-bit base) takes about a quarter of the base model's memory; a smaller base model "
          "(model.base) takes less in proportion to its size.")


def apply(cfg: TunelabConfig, overrides: dict[str, Any]) -> TunelabConfig:
    """The config with dotted keys changed, validated as a whole (a ConfigError says what does not fit)."""
    import json

    from pydantic import ValidationError

    data = apply_overrides(cfg.model_dump(mode="json"), [f"{k}={json.dumps(v)}" for k, v in overrides.items()])
    try:
        out = TunelabConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError("; ".join(str(e["msg"]) for e in err.errors())) from None
    out.name = cfg.name
    return out


def climb(cfg: TunelabConfig, first: Estimate, console: Console | None = None, *,
          stop_at_fit: bool = True) -> list[Estimate]:
    """Each rung's estimate, in order (until the first that fits, unless stop_at_fit is off)."""
    out = []
    for rung in ladder(cfg, first.train["batch_size"]):
        if console is not None:
            console.print(f"  trying {rung.change}...", highlight=False)
        est = estimate(apply(cfg, rung.overrides))
        est.change, est.overrides = rung.change, rung.overrides
        out.append(est)
        if est.fits and stop_at_fit:
            break
    return out


# --- train.fit: auto -----------------------------------------------------------------------------------

def quick_bound_mib(cfg: TunelabConfig, n_params: int, lengths: list[int]) -> float:
    """A generous upper bound of the run's peak memory, from sizes alone: weights (and their gradients and Adam
    state when trained whole), the heaviest batch's activations, and the libraries."""
    from ..config.schema import PAIR_METHODS, RL_METHODS

    weights = 4 * n_params
    if cfg.peft.method == "full":
        weights *= 4  # + gradients + two Adam moments
        if cfg.method in ("dpo", "kto", "online_dpo") or (cfg.method in RL_METHODS and cfg.rl.kl_beta):
            weights += 4 * n_params  # the frozen reference
    hp = auto.hyperparams(cfg, n_params=n_params, lengths=lengths or [cfg.model.max_length])
    longest = max(lengths or [cfg.model.max_length]) or cfg.model.max_length
    if cfg.method == "sft":
        tokens = max(auto.max_batch_tokens(cfg, bool(hp.compile)) or hp.batch_size * longest, longest)
    elif cfg.method in RL_METHODS:
        tokens = hp.batch_size * auto.generations(cfg) * cfg.model.max_length
    else:
        tokens = hp.batch_size * cfg.model.max_length * (2 if cfg.method in PAIR_METHODS or cfg.method == "reward"
                                                         else 1)
    per_token = 3e6 * math.sqrt(n_params / 135e6)  # measured ~1.5-2 MB a token for a 135M model; generous
    return (weights + tokens * per_token) / 2**20 + 2048


def fitter(console: Console) -> Callable[[TunelabConfig, Any], tuple[TunelabConfig, dict[str, Any]]]:
    """The life cycle's before_open hook for train.fit: auto."""

    def fit(cfg: TunelabConfig, prepared: Any) -> tuple[TunelabConfig, dict[str, Any]]:
        from ..models.load import param_count, resolve
        from .rehearsal import row_length

        limit, source = memory_limit(cfg)
        lengths = [row_length(r) for r in prepared.data.train]
        bound = quick_bound_mib(cfg, param_count(resolve(cfg.model.base).path), lengths)
        if bound <= QUICK_BOUND_SHARE * limit or cfg.train.fit == "off":  # off: no rehearsal, the bound decides
            return checkpointing(cfg, bound, limit, {})
        console.print(f"Memory may be short ({mib(limit)} from {source}): measuring a few steps first")
        first = estimate(cfg)
        if first.fits or cfg.train.fit == "off":  # fit off: here for train.gradient_checkpointing: auto only
            noted = {"fit": {"peak_memory_mib": first.peak_memory_mib, "limit_mib": limit, "changed": []}}
            return checkpointing(cfg, first.peak_memory_mib, limit, noted if cfg.train.fit == "auto" else {})
        console.print(f"[yellow]As configured the run needs about {mib(first.peak_memory_mib)}, over the "
                      f"{mib(limit)} it may use; trying the ladder[/]")
        rungs = climb(cfg, first, console)
        if not rungs or not rungs[-1].fits:
            tried = "; ".join(f"{r.change}: {mib(r.peak_memory_mib)}" for r in rungs) or "nothing applies"
            raise DoesNotFit("the run does not fit in memory, and nothing tunelab can change makes it fit.\n"
                             + "\n".join(describe(first)) + f"\nTried: {tried}.\n{ADVICE}")
        chosen = rungs[-1]
        changed = [r.change for r in rungs]
        console.print(f"[yellow]train.fit: applied {changed[-1]} (and the rungs before it): about "
                      f"{mib(chosen.peak_memory_mib)} of {mib(limit)}[/]")
        fitted = apply(cfg, chosen.overrides)
        noted = {"fit": {"peak_memory_mib": chosen.peak_memory_mib, "limit_mib": limit,
                         "before_mib": first.peak_memory_mib, "changed": changed, "overrides": chosen.overrides}}
        return checkpointing(fitted, chosen.peak_memory_mib, limit, noted)

    return fit


def checkpointing(cfg: TunelabConfig, need_mib: float, limit_mib: int,
                  noted: dict[str, Any]) -> tuple[TunelabConfig, dict[str, Any]]:
    """train.gradient_checkpointing: auto settled from the memory estimate without it (training/auto.py's rule);
    the summary says what it chose and why, resolved.json records the choice."""
    if cfg.train.gradient_checkpointing != "auto":
        return cfg, noted
    on = auto.gradient_checkpointing(cfg, need_mib, limit_mib)
    return apply(cfg, {"train.gradient_checkpointing": on}), noted | {"gradient_checkpointing": {
        "auto": on, "estimate_mib": round(need_mib, 1), "limit_mib": limit_mib}}


def run(cfg: TunelabConfig, *, resume: bool = False, console: Console | None = None,
        callbacks: list[Any] | None = None) -> Any:
    """Train as the config says, made to fit first (train.fit: auto); a resumed run keeps its own settings."""
    from ..recipes import dispatch

    console = console or Console(stderr=True)
    settle = cfg.train.fit == "auto" or cfg.train.gradient_checkpointing == "auto"
    hook = fitter(console) if settle and not resume else None
    return dispatch.run(cfg, resume=resume, console=console, callbacks=callbacks, before_open=hook)
