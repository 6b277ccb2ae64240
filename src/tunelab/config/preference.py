"""Settings for preference tuning (reward models, DPO and relatives) and online RL (GRPO, RLOO, online DPO)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, model_validator
from pydantic_core import PydanticCustomError

from .base import Section
from .graders import Grader

DPO_LOSSES = Literal["sigmoid", "ipo", "hinge", "robust", "exo_pair", "nca_pair", "bco_pair", "sppo_hard", "aot",
                     "apo_zero", "apo_down", "sigmoid_norm"]


class PreferenceConfig(Section):
    beta: float = Field(0.1, gt=0)
    """Strength of the pull towards the reference model (DPO, online DPO, KTO, CPO/SimPO beta; ORPO's lambda)."""

    loss_type: DPO_LOSSES = "sigmoid"
    """method dpo: sigmoid is DPO; ipo and hinge are the IPO and SLiC variants; the rest as TRL names them."""

    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5)
    """method dpo (sigmoid, robust): assumed share of preference labels that are wrong (cDPO, robust DPO)."""

    simpo_gamma: float = Field(0.5, ge=0.0)
    """method simpo: target reward margin."""

    max_prompt_tokens: int = Field(512, gt=0)
    """Prompt tokens kept (from the end) when prompt + answer exceed model.max_length."""


class RLConfig(Section):
    rewards: list[str] = ["numeric"]
    """Reward functions for method grpo/rloo/online_dpo, summed: exact, numeric (the number after '####' or the last
    number, against the row's answer), format (the answer ends in '#### N'), regex:<pattern>, length:<tokens>,
    a tunelab reward-model run directory, or module:function."""

    reward_weights: list[float] | None = None
    """Weight of each reward function; empty weighs them equally."""

    num_generations: int = Field(4, ge=2)
    """Completions sampled per prompt; each is scored against the others from the same prompt (online_dpo: always
    two)."""

    max_completion_tokens: int = Field(128, gt=0)
    """Longest sampled completion."""

    temperature: float = Field(1.0, gt=0)
    """Sampling temperature of the completions."""

    kl_beta: float = Field(0.04, ge=0.0)
    """KL penalty towards the reference model (0 turns it off and saves the reference pass)."""

    answer_field: str = "answer"
    """Column holding each prompt's reference answer (used by exact and numeric rewards)."""

    grader: Grader | None = None
    """OpenAI's grader object (reinforcement fine-tuning): string_check, text_similarity, python, score_model or
    multi, reading {{sample.output_text}} and each row's other fields as {{item.<field>}}. When set, it is the
    reward, instead of rl.rewards; see docs/preference.md."""

    grader_timeout: float = Field(5.0, gt=0)
    """Seconds a python grader may take on one answer; past it the answer scores 0 and the error is counted."""

    @model_validator(mode="after")
    def _grader_or_rewards(self, info: ValidationInfo) -> RLConfig:
        if self.grader is None or (info.context or {}).get("rules") is False:
            return self
        # a rule across fields, reported as TunelabConfig's rules are: each at the line of the key it names
        found = [(f"rl.{key}", f"rl.grader and rl.{key} are both set: a grader is the whole reward. Remove "
                  f"rl.{key}, or rl.grader to use rl.rewards")
                 for key in ("rewards", "reward_weights")
                 if getattr(self, key) != type(self).model_fields[key].get_default(call_default_factory=True)]
        if found:
            raise PydanticCustomError("config_rules", "; ".join(m for _, m in found), {"problems": found})
        return self
