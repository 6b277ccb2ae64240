"""The one typed config object: YAML file -> TunelabConfig -> recipes.

Rules across fields are checked when it is built, before any data or model is loaded. Two kinds: settings the
chosen method does not read are refused with the reason (a DPO run silently ignoring `train.packing: false`
would mislead), and settings that only work together are checked together. A setting left at its default is
never refused: a config written out whole (a run's config.yaml) reads back.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, PrivateAttr, ValidationInfo, model_validator
from pydantic_core import PydanticCustomError

from .base import Section
from .classification import ClassificationConfig
from .data import DataConfig
from .evaluation import EvalConfig
from .model import ModelConfig, quantize_problems
from .peft import PeftConfig
from .preference import PreferenceConfig, RLConfig
from .sweep import SweepConfig
from .train import TrainConfig, liger_problems


class TunelabConfig(Section):
    name: str | None = None
    """Run name; the run is written to <output_dir>/<name>. Empty uses the config file's name."""

    output_dir: str = "runs"
    """Directory that holds run directories."""

    method: Literal["sft", "reward", "dpo", "kto", "orpo", "cpo", "simpo", "grpo", "rloo",
                    "online_dpo"] = "sft"
    """sft (supervised fine-tuning); reward (a reward model from preference pairs); dpo (with
    preference.loss_type for IPO, hinge, ...), kto, orpo, cpo, simpo (preference pairs); grpo, rloo (online
    RL: sampled completions scored by rl.rewards); online_dpo (two sampled completions per prompt scored by
    rl.rewards, the better one preferred)."""

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

    sweep: SweepConfig = Field(default_factory=SweepConfig)
    """`tunelab sweep`: the search space, budget and where the study is kept (training alone ignores it)."""

    _rules_off: bool = PrivateAttr(False)  # a run's own config, read back: it trained as it was (kept on assignment)

    @model_validator(mode="after")
    def _rules_across_fields(self, info: ValidationInfo) -> TunelabConfig:
        if (info.context or {}).get("rules") is False:
            self._rules_off = True
        if self._rules_off:
            return self
        found = problems(self)
        if found:  # one error carrying every problem with its key: the loader puts each at its file:line
            raise PydanticCustomError("config_rules", "; ".join(msg for _, msg in found), {"problems": found})
        return self


def default(key: str) -> Any:
    """A setting's default, read from the schema so that no other module retypes it: default("model.max_length")."""
    model: type[Section] = TunelabConfig
    *sections, name = key.split(".")
    for s in sections:
        model = model.model_fields[s].annotation  # type: ignore[assignment]
    return model.model_fields[name].get_default(call_default_factory=True)


# --- rules across fields ---------------------------------------------------------------------------

RuleProblem = tuple[str, str]  # (dotted key, what is wrong and what to do)

PAIR_METHODS = ("dpo", "kto", "orpo", "cpo", "simpo")
RL_METHODS = ("grpo", "rloo", "online_dpo")  # trained on their own sampled answers to prompts
REFERENCE_FREE = ("orpo", "cpo", "simpo")  # preference methods without a reference model
GENERATION_MONITORS = ("token_f1", "rouge_l", "exact_match", "numeric_accuracy")  # task metrics of generated answers

# Settings only some methods read: key -> (methods that read it, why the others don't).
ONLY_FOR: dict[str, tuple[tuple[str, ...], str]] = {
    "task": (("sft",), "preference and RL methods train chat models on prompts and answers"),
    "classification": (("sft",), "only supervised runs train classifiers"),
    "data.too_long": (("sft",), "TRL's trainers truncate preference pairs and prompts themselves"),
    "data.train_on": (("sft",), "preference and RL losses are on the answers by definition"),
    "data.cache": (("sft",), "only supervised rows are tokenised ahead and cached"),
    "data.curate": (("sft",), "curate preference and RL files first with `tunelab data curate`, then train on "
                    "the curated copy"),
    "train.packing": (("sft",), "preference pairs and sampled answers are batched by TRL"),
    "train.label_only_logits": (("sft",), "TRL computes the preference and RL losses itself"),
    "train.loss_chunk_tokens": (("sft",), "TRL computes the preference and RL losses itself"),
    "train.max_batch_tokens": (("sft",), "TRL batches preference pairs and sampled answers itself"),
    "train.frozen_bf16": (("sft",), "TRL keeps the frozen weights as they are"),
    "train.compile": (("sft",), "TRL runs the model's layers as they are"),
    "train.group_by_length": (("sft",), "TRL samples pairs and prompts its own way"),
    "train.early_stopping": (("sft",), "preference and RL runs train for their set steps"),
    "eval.during_training": (("sft",), "preference runs log their own held-out metrics; RL scores after training"),
    "eval.max_new_tokens": (("sft",), "RL answers are as long as rl.max_completion_tokens"),
    "eval.limit": (("sft", *RL_METHODS), "preference runs score every held-out pair"),
    "preference.beta": ((*PAIR_METHODS, "online_dpo"), "it weighs the preference loss"),
    "preference.loss_type": (("dpo",), "it picks DPO's loss variant"),
    "preference.label_smoothing": (("dpo",), "it is DPO's (cDPO, robust DPO) label noise"),
    "preference.simpo_gamma": (("simpo",), "it is SimPO's reward margin"),
    "preference.max_prompt_tokens": (("orpo", "cpo", "simpo"), "DPO and KTO keep the end of long prompts"),
    "rl": (RL_METHODS, "it configures online RL"),
    "rl.num_generations": (("grpo", "rloo"), "online DPO samples two answers per prompt and prefers the better"),
    "rl.kl_beta": (("grpo", "rloo"), "online DPO's pull towards the starting model is preference.beta"),
}


def _field(cfg: BaseModel, key: str) -> tuple[Any, Any]:
    """(value, default) of a dotted key."""
    *sections, name = key.split(".")
    node = cfg
    for s in sections:
        node = getattr(node, s)
    info = type(node).model_fields[name]
    return getattr(node, name), info.get_default(call_default_factory=True)


def _changed(value: Any, default: Any) -> list[str]:
    """The keys under a setting that differ from their defaults ([""] for a plain setting that differs, or a
    section set where its default is None, such as rl.grader)."""
    if isinstance(value, BaseModel) and isinstance(default, BaseModel):
        out = []
        for name in type(value).model_fields:
            sub, sub_default = getattr(value, name), getattr(default, name)
            out += [f"{name}.{k}" if k else name for k in _changed(sub, sub_default)]
        return out
    return [""] if value != default else []


def unused_by_method(cfg: TunelabConfig) -> list[RuleProblem]:
    out: list[RuleProblem] = []
    for key, (methods, why) in ONLY_FOR.items():
        if cfg.method in methods:
            continue
        value, default = _field(cfg, key)
        for sub in _changed(value, default):
            full = f"{key}.{sub}" if sub else key
            if any(k == full for k, _ in out):  # already said under its section (rl, then rl.kl_beta)
                continue
            users = ", ".join(methods)
            out.append((full, f"{full} is not used by method {cfg.method} ({why}); it applies to method "
                        f"{users}. Remove it, or change method"))
    return out


def has_validation(cfg: TunelabConfig) -> bool:
    return cfg.data.validation is not None or cfg.data.val_fraction > 0


def combinations(cfg: TunelabConfig) -> list[RuleProblem]:
    t, out = cfg.train, []
    val = has_validation(cfg) and cfg.method not in RL_METHODS  # RL scores held-out prompts after training only
    if val and t.save_every and not t.eval_every:
        out.append(("train.save_every", "train.save_every needs train.eval_every when there is validation data "
                    "(checkpoints are saved at evaluations, to keep the best one): set train.eval_every too"))
    elif val and t.save_every and t.eval_every and t.save_every % t.eval_every:
        out.append(("train.save_every", f"train.save_every={t.save_every} must be a multiple of "
                    f"train.eval_every={t.eval_every}: the best checkpoint is chosen at evaluations"))
    if t.eval_every and cfg.method in RL_METHODS:
        out.append(("train.eval_every", f"method {cfg.method} scores held-out prompts once, after training: "
                    "remove train.eval_every"))
    if t.monitor == "accuracy" and not (cfg.task == "classification" or cfg.method == "reward"):
        out.append(("train.monitor", "train.monitor=accuracy needs task: classification (or method: reward)"))
    if t.monitor in GENERATION_MONITORS and (cfg.method != "sft" or cfg.task == "classification"):
        out.append(("train.monitor", f"train.monitor={t.monitor} scores generated answers: it needs method sft "
                    "with a chat or completion task"))
    if t.monitor != "loss" and not has_validation(cfg):
        out.append(("train.monitor", f"train.monitor={t.monitor} needs validation data: set data.validation or "
                    "data.val_fraction > 0"))
    if t.early_stopping.patience and not has_validation(cfg):
        out.append(("train.early_stopping.patience", "early stopping watches the validation data: set "
                    "data.validation or data.val_fraction > 0"))
    c = cfg.classification
    if c.unsure_label is not None and cfg.task != "classification":
        out.append(("classification.unsure_label", "classification.unsure_label needs task: classification"))
    elif c.unsure_label is not None and c.unsure_below == "auto" and not has_validation(cfg):
        out.append(("classification.unsure_below", "classification.unsure_below=auto is calibrated on the "
                    "validation rows: set data.validation or data.val_fraction > 0, or give a number (0..1)"))
    out += quantize_problems(cfg.model.quantize, cfg.peft.method) + liger_problems(t.liger)
    if cfg.method in RL_METHODS:
        rl = cfg.rl
        if rl.max_completion_tokens >= cfg.model.max_length:
            out.append(("rl.max_completion_tokens", f"rl.max_completion_tokens={rl.max_completion_tokens} leaves "
                        f"no room for a prompt within model.max_length={cfg.model.max_length}"))
        if rl.reward_weights is not None and len(rl.reward_weights) != len(rl.rewards):
            out.append(("rl.reward_weights", f"rl.reward_weights has {len(rl.reward_weights)} weights for "
                        f"{len(rl.rewards)} rewards: give one weight per reward"))
    return out


def problems(cfg: TunelabConfig) -> list[RuleProblem]:
    return unused_by_method(cfg) + combinations(cfg)
