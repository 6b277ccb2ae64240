"""An OpenAI fine-tuning job request -> the tunelab config that trains it.

supervised -> method sft (task chat unless the extension says otherwise), dpo -> dpo, reinforcement -> grpo
with the request's grader. n_epochs, batch_size, learning_rate_multiplier, beta and eval_samples map to their
tunelab keys; "auto" (or absent) leaves tunelab's own `auto` rule. Settings tunelab can't honour are refused
with the parameter named, not ignored.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..config import ConfigError, TunelabConfig, load_config
from .errors import invalid
from .schemas import Hyperparameters, JobCreate

METHODS = {"supervised": "sft", "dpo": "dpo", "reinforcement": "grpo"}
SERVICE_KEYS = ("name", "output_dir", "data.train", "data.validation", "method", "model.base", "train.seed")
UNSUPPORTED = {"compute_multiplier": "samples per prompt are rl.num_generations (tunelab.config)",
               "eval_interval": "held-out prompts are scored once, after training",
               "reasoning_effort": "it applies to OpenAI's reasoning models only"}


def method_of(req: JobCreate) -> tuple[str, Hyperparameters, dict[str, Any]]:
    """(OpenAI method type, its hyperparameters, the method object as the job reports it)."""
    kind = req.method.type if req.method else "supervised"
    section = getattr(req.method, kind, None) if req.method else None
    hp = (section.hyperparameters if section is not None else None) or req.hyperparameters or Hyperparameters()
    if req.hyperparameters is not None and req.method is not None and kind != "supervised":
        raise invalid("top-level hyperparameters apply to supervised jobs: give them in method."
                      f"{kind}.hyperparameters", param="hyperparameters")
    if kind == "reinforcement" and section is None:
        raise invalid("a reinforcement job needs method.reinforcement.grader", param="method.reinforcement")
    shown = {"type": kind, kind: {"hyperparameters": hp.model_dump(exclude_none=True)}}
    if kind == "reinforcement":
        shown[kind]["grader"] = section.grader  # type: ignore[union-attr]
    return kind, hp, shown


def overrides(req: JobCreate, kind: str, hp: Hyperparameters) -> list[str]:
    """Dotted config overrides from OpenAI's fields ("auto" and absent leave tunelab's own choice)."""
    out = [f"method={METHODS[kind]}"]
    if kind == "supervised" and hp.beta is not None:
        raise invalid("beta applies to dpo jobs", param="method.supervised.hyperparameters.beta")
    for name, value in hp.model_dump(exclude_none=True).items():
        if name in UNSUPPORTED and value not in ("auto", "default"):
            raise invalid(f"{name}={value!r} is not supported by tunelab: {UNSUPPORTED[name]}",
                          param=f"method.{kind}.hyperparameters.{name}")
    if hp.n_epochs not in (None, "auto"):
        out.append(f"train.epochs={int(hp.n_epochs)}")
    if hp.batch_size not in (None, "auto"):
        out.append(f"train.batch_size={int(hp.batch_size)}")
    if hp.learning_rate_multiplier not in (None, "auto"):
        out.append(f"train.learning_rate_multiplier={float(hp.learning_rate_multiplier)}")
    if hp.beta not in (None, "auto"):
        out.append(f"preference.beta={float(hp.beta)}")
    if hp.eval_samples not in (None, "auto"):
        out.append(f"eval.limit={int(hp.eval_samples)}")
    return out


def _flatten(prefix: str, value: Any) -> list[tuple[str, Any]]:
    if isinstance(value, dict) and value and not prefix.endswith(("columns", "grader")):
        return [kv for k, v in value.items() for kv in _flatten(f"{prefix}.{k}" if prefix else str(k), v)]
    return [(prefix, value)]


def extension_overrides(req: JobCreate) -> list[str]:
    """tunelab.config as dotted overrides; the keys the service sets itself are refused."""
    out = []
    given = (req.tunelab.config if req.tunelab else None) or {}
    for key, value in _flatten("", given) if given else []:
        if key in SERVICE_KEYS or key.startswith(("data.train", "data.validation")):
            raise invalid(f"tunelab.config.{key} is set by the job itself (from {_origin(key)})",
                          param=f"tunelab.config.{key}")
        out.append(f"{key}={json.dumps(value)}")
    return out


def sweep_overrides(req: JobCreate) -> list[str]:
    """tunelab.sweep as `sweep.*` overrides: the search space stays one value (its keys are dotted names)."""
    sweep = req.tunelab.sweep if req.tunelab else None
    if sweep is None:
        return []
    if "storage" in sweep:
        raise invalid("tunelab.sweep.storage is set by the job itself (the study lives in the job's directory)",
                      param="tunelab.sweep.storage")
    return [f"sweep.{key}={json.dumps(value)}" for key, value in sweep.items()]


def _origin(key: str) -> str:
    return {"model.base": "model", "train.seed": "seed", "method": "method.type"}.get(
        key, "training_file / validation_file" if key.startswith("data.") else "the server")


def build_config(req: JobCreate, *, base: str, train: Path, validation: Path | None, workdir: Path,
                 seed: int) -> tuple[TunelabConfig, dict[str, Any]]:
    """(the config the job trains with, the method object as the job reports it)."""
    kind, hp, shown = method_of(req)
    if req.integrations:
        raise invalid("integrations (Weights & Biases) are not supported here: a job's metrics are in its events "
                      "and its run's report", param="integrations")
    items = ["name=run", f"output_dir={json.dumps(str(workdir))}", f"model.base={json.dumps(base)}",
             f"data.train={json.dumps(str(train))}", f"train.seed={seed}"]
    if validation is not None:
        items.append(f"data.validation={json.dumps(str(validation))}")
    method_items = overrides(req, kind, hp)
    ext = extension_overrides(req) + sweep_overrides(req)
    if kind == "reinforcement":
        method_items.append(f"rl.grader={json.dumps(shown[kind]['grader'])}")
    try:
        cfg = load_config(None, items + method_items + ext)
    except ConfigError as exc:
        msg = str(exc).replace("command-line override", "setting")
        raise invalid(msg, param=_param_of(msg)) from None
    return cfg, shown


def _param_of(message: str) -> str | None:
    """The request parameter an error is about, as far as the message says."""
    for line in message.splitlines():
        start = line.find("setting '")
        if start >= 0:
            key = line[start + 9:].split("=", 1)[0]
            if key.startswith("sweep."):
                return "tunelab." + key
            return "tunelab.config." + key if not key.startswith(("train.epochs", "train.batch")) else "method"
    return None
