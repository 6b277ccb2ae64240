"""config.method -> the recipe module that trains it. Each recipe is self-contained: run(cfg) -> RunResult."""

from __future__ import annotations

import importlib
from typing import Any

from rich.console import Console

from ..config import ConfigError, TunelabConfig
from .sft import RunResult

RECIPES = {"sft": "sft", "reward": "reward", "dpo": "dpo", "kto": "dpo", "orpo": "dpo", "cpo": "dpo", "simpo": "dpo",
           "grpo": "grpo", "rloo": "grpo"}


def run(cfg: TunelabConfig, *, resume: bool = False, console: Console | None = None,
        callbacks: list[Any] | None = None) -> RunResult:
    try:
        module = importlib.import_module(f"{__package__}.{RECIPES[cfg.method]}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__package__}.{RECIPES[cfg.method]}":
            raise
        raise ConfigError(f"method: {cfg.method} is not available in this version of tunelab") from None
    return module.run(cfg, resume=resume, console=console, callbacks=callbacks)
