"""config.method -> the recipe module that trains it, run through the one life cycle (lifecycle.py)."""

from __future__ import annotations

import importlib
import os
from typing import Any

from rich.console import Console

from ..config import ConfigError, TunelabConfig
from ..runs import RunResult
from .lifecycle import BeforeOpen, Recipe, execute, validate

RECIPES = {"sft": "sft", "reward": "reward", "dpo": "dpo", "kto": "dpo", "orpo": "dpo", "cpo": "dpo", "simpo": "dpo",
           "grpo": "grpo", "rloo": "grpo", "online_dpo": "grpo"}


def recipe_for(cfg: TunelabConfig) -> Recipe:
    name = f"{__package__}.{RECIPES[cfg.method]}"
    try:
        return importlib.import_module(name)  # type: ignore[return-value]
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise
        raise ConfigError(f"method: {cfg.method} is not available in this version of tunelab") from None


def run(cfg: TunelabConfig, *, resume: bool = False, console: Console | None = None,
        callbacks: list[Any] | None = None, before_open: BeforeOpen | None = None) -> RunResult:
    """Train as the config says; returns the run directory, how the run ended and its summary."""
    # oneDNN keeps up to 1,024 matmul primitives with their buffers, and packed batches bring new shapes at every
    # step: ~0.9 GB of a LoRA run's peak memory for the default model. 128 hold a step's shapes: the same speed,
    # 19% less peak memory (docs/benchmarks.md). Read by oneDNN at its first matmul, so set before any.
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "128")
    return execute(cfg, recipe_for(cfg), resume=resume, console=console, callbacks=callbacks, before_open=before_open)


def check(cfg: TunelabConfig, console: Console | None = None) -> dict[str, Any]:
    """Check a run's inputs as training would before it starts (model, data, probe files), without training;
    returns the data report or raises the user error that training would raise."""
    return validate(cfg, recipe_for(cfg), console)
