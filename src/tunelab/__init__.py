"""tunelab: fine-tune language models for your domain, end to end."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .version import __version__

if TYPE_CHECKING:
    from .config import TunelabConfig
    from .models.load import LoadedModel
    from .runs import RunResult


def load_config(path: str | None = None, overrides: list[str] | None = None) -> TunelabConfig:
    """YAML file + dotted overrides -> the typed config."""
    from .config import load_config as _load

    return _load(path, overrides)


def train(config: TunelabConfig | str, overrides: list[str] | None = None, *, resume: bool = False) -> RunResult:
    """Train as `tunelab train` does; returns the run directory, status and summary."""
    from .plan import fit

    cfg = load_config(config, overrides) if isinstance(config, str) else config
    return fit.run(cfg, resume=resume)


def load(ref: str | None = None) -> LoadedModel:
    """Load a model reference (alias, HF dir, .gguf, run directory, hub id) with its tokenizer."""
    from .models.load import load as _load

    return _load(ref)


def check_data(path: str, **kwargs: Any) -> Any:
    """Validate a data file as `tunelab data check` does; returns the DataReport."""
    from .data.check import check

    return check(path, **kwargs)


def generate(ref: str | Any, prompt: str, **kwargs: Any) -> str:
    """One reply from a model reference or a LoadedModel."""
    from .inference import generate as _generate

    return _generate(ref, prompt, **kwargs)


__all__ = ["__version__", "check_data", "generate", "load", "load_config", "train"]
