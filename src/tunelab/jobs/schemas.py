"""The fine-tuning job request as OpenAI's API takes it, plus tunelab's one extension field."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Auto = Literal["auto"]


class _Lenient(BaseModel):
    """OpenAI's objects grow fields: an unknown one is refused with its name (not silently dropped)."""

    model_config = ConfigDict(extra="forbid")


class Hyperparameters(_Lenient):
    n_epochs: Auto | int | None = None
    batch_size: Auto | int | None = None
    learning_rate_multiplier: Auto | float | None = None
    beta: Auto | float | None = None  # dpo
    # reinforcement
    compute_multiplier: Auto | float | None = None
    eval_interval: Auto | int | None = None
    eval_samples: Auto | int | None = None
    reasoning_effort: Literal["default", "low", "medium", "high"] | None = None


class SupervisedMethod(_Lenient):
    hyperparameters: Hyperparameters | None = None


class DpoMethod(_Lenient):
    hyperparameters: Hyperparameters | None = None


class ReinforcementMethod(_Lenient):
    grader: dict[str, Any]
    hyperparameters: Hyperparameters | None = None


class Method(_Lenient):
    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: SupervisedMethod | None = None
    dpo: DpoMethod | None = None
    reinforcement: ReinforcementMethod | None = None


class TunelabExtension(_Lenient):
    """tunelab's own options, sent beside OpenAI's fields (the openai client: `extra_body={"tunelab": {...}}`)."""

    config: dict[str, Any] = {}
    """Any tunelab config key, dotted ({"peft.r": 32}) or nested ({"peft": {"r": 32}}): LoRA rank, task type,
    classification labels... A job without them gets tunelab's `auto` choices."""
    sweep: dict[str, Any] | None = None
    """Make the job a sweep: its trials search settings (tunelab's `sweep` keys: trials, minutes, space,
    pruning, evaluations; {} for the default budget and space) and the best trial becomes the job's model."""


class JobCreate(_Lenient):
    model: str
    training_file: str
    validation_file: str | None = None
    suffix: str | None = Field(None, max_length=64)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    metadata: dict[str, str] | None = None
    method: Method | None = None
    hyperparameters: Hyperparameters | None = None  # OpenAI's older form (supervised)
    integrations: list[dict[str, Any]] | None = None
    tunelab: TunelabExtension | None = None

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is not None and (len(v) > 16 or any(len(k) > 64 or len(x) > 512 for k, x in v.items())):
            raise ValueError("at most 16 pairs, keys up to 64 characters, values up to 512")
        return v

    @field_validator("suffix")
    @classmethod
    def _suffix(cls, v: str | None) -> str | None:
        if v is not None and not all(c.isalnum() or c in "-_" for c in v):
            raise ValueError("letters, digits, - and _ only")
        return v
