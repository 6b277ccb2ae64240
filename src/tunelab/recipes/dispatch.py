"""config.method -> the recipe module that trains it, run through the one life cycle (lifecycle.py)."""

from __future__ import annotations

import importlib
from typing import Any

from rich.console import Console

from ..config import ConfigError, TunelabConfig
from ..runs import RunResult
from .lifecycle import execute

RECIPES = {"sft": "sft", "reward": "reward", "dpo": "dpo", "kto": "dpo", "orpo": "dpo", "cpo": "dpo", "simpo": "dpo",
           "grpo": "grpo", "rloo": "grpo"}


def run(cfg: TunelabConfig, *, resume: bool = False, console: Console | None = None,
        callbacks: list[Any] | None = None) -> RunResult:
    """Train as the config says; returns the run directory, how the run ended and its summary."""
    name = f"{__package__}.{RECIPES[cfg.method]}"
    try:
        recipe = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise
        raise ConfigError(f"method: {cfg.method} is not available in this version of tunelab") from None
    return execute(cfg, recipe, resume=resume, console=console, callbacks=callbacks)  # type: ignore[arg-type]
