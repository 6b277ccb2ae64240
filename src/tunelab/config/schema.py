"""The one typed config object: YAML file -> TunelabConfig -> recipes."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import Section
from .classification import ClassificationConfig
from .data import DataConfig
from .evaluation import EvalConfig
from .model import ModelConfig
from .peft import PeftConfig
from .preference import PreferenceConfig, RLConfig
from .train import TrainConfig


class TunelabConfig(Section):
    name: str | None = None
    """Run name; the run is written to <output_dir>/<name>. Empty uses the config file's name."""

    output_dir: str = "runs"
    """Directory that holds run directories."""

    method: Literal["sft", "reward", "dpo", "kto", "orpo", "cpo", "simpo", "grpo", "rloo"] = "sft"
    """sft (supervised fine-tuning); reward (a reward model from preference pairs); dpo (with
    preference.loss_type for IPO, hinge, ...), kto, orpo, cpo, simpo (preference pairs); grpo, rloo (online
    RL: sampled completions scored by rl.rewards)."""

    task: Literal["chat", "classification", "completion"] = "chat"
    """chat: assistant replies; classification: text -> label; completion: prompt/completion or raw text."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    """The base model and sequence length."""

    data: DataConfig = Field(default_factory=DataConfig)
    """Training and validation data."""

    peft: PeftConfig = Field(default_factory=PeftConfig)
    """LoRA / DoRA adapters or full fine-tuning."""

    train: TrainConfig = Field(default_factory=TrainConfig)
    """Optimisation, evaluation, checkpoints."""

    eval: EvalConfig = Field(default_factory=EvalConfig)
    """Scoring on the validation split after training."""

    classification: ClassificationConfig = Field(default_factory=ClassificationConfig)
    """Classification settings (task: classification)."""

    preference: PreferenceConfig = Field(default_factory=PreferenceConfig)
    """Preference tuning settings (method reward, dpo, kto, orpo, cpo, simpo)."""

    rl: RLConfig = Field(default_factory=RLConfig)
    """Online RL settings (method grpo, rloo)."""
