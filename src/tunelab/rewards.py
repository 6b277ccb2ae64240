"""rl.rewards strings -> TRL reward functions: (prompts, completions, **columns) -> one float per completion.

TRL passes every extra dataset column as a keyword argument, so the row's reference answer arrives as `answer`.
Completions are plain strings, or [{"role": "assistant", "content": ...}] for chat prompts.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import ConfigError
from .data.templates import render_chat
from .runs import RunDir, layout

RewardFunc = Callable[..., list[float]]

VALID_FORMS = ("exact, numeric, format, regex:<pattern>, length:<tokens>, a reward-model run directory "
               "(method: reward), or module:function")
ANSWER_REWARDS = ("exact", "numeric")  # rewards that score against the row's reference answer
_MODULE_FUNC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
# '#### 42' (commas, sign, decimals and a leading $ allowed) as the last line of the completion
_FINAL_LINE = re.compile(r"(?:^|\n)[ \t]*####[ \t]*\$?-?(?:\d[\d,]*)?\.?\d+[ \t]*$")


def text_of(completion: Any) -> str:
    """A completion's text: a string as is, a list of messages as their contents joined."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        return "".join(str(m.get("content") or "") for m in completion if isinstance(m, dict))
    if isinstance(completion, dict):
        return str(completion.get("content") or "")
    return str(completion)


def _answers(kwargs: dict[str, Any], n: int) -> list[str | None]:
    answers = kwargs.get("answer")
    return list(answers) if answers is not None else [None] * n


def exact(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
    """1 when the completion, stripped, is the reference answer, stripped."""
    return [float(a is not None and text_of(c).strip() == str(a).strip())
            for c, a in zip(completions, _answers(kwargs, len(completions)), strict=True)]


def numeric(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
    """1 when the completion's final number (after '####', else the last one) equals the answer's."""
    from .eval.metrics import same_final_number

    return [float(a is not None and same_final_number(text_of(c), str(a)))
            for c, a in zip(completions, _answers(kwargs, len(completions)), strict=True)]


def format_reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
    """1 when the completion ends with a '#### <number>' line; 0.5 when '####' appears elsewhere."""
    out = []
    for c in completions:
        text = text_of(c).strip()
        out.append(1.0 if _FINAL_LINE.search(text) else 0.5 if "####" in text else 0.0)
    return out


format_reward.__name__ = "format"  # TRL logs rewards/<function name>/mean


def regex_reward(pattern: str) -> RewardFunc:
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"rl.rewards: regex:{pattern} is not a valid regular expression ({exc})") from None

    def regex(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
        return [float(compiled.search(text_of(c)) is not None) for c in completions]

    return regex


def length_reward(target: int, tokenizer: Any) -> RewardFunc:
    def length(prompts: list[Any], completions: list[Any], completion_ids: list[list[int]] | None = None,
               **kwargs: Any) -> list[float]:
        if completion_ids is not None:  # the sampled tokens themselves, when TRL passes them
            counts = [len(ids) for ids in completion_ids]
        else:
            counts = [len(tokenizer(text_of(c), add_special_tokens=False)["input_ids"]) for c in completions]
        return [max(0.0, 1.0 - abs(n - target) / target) for n in counts]

    return length


def _import_function(spec: str) -> RewardFunc:
    mod_name, func_name = spec.split(":", 1)
    if os.getcwd() not in sys.path:  # `tunelab` as a console script doesn't see the user's own modules otherwise
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(mod_name)
    except Exception as exc:
        raise ConfigError(f"rl.rewards: {spec}: can't import module {mod_name!r} ({type(exc).__name__}: {exc}); "
                          "it must be importable from the directory you run tunelab in, or installed") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ConfigError(f"rl.rewards: {spec}: module {mod_name!r} has no function {func_name!r}")
    return func  # type: ignore[no-any-return]


def _reward_run(spec: str) -> Path | None:
    """The directory a reward spec names, if it names one (a reward-model run)."""
    p = Path(spec).expanduser()
    return p if p.is_dir() else None


def _check_reward_run(p: Path) -> None:
    run = RunDir(p)
    if not run.is_run():
        raise ConfigError(f"rl.rewards: {p} is a directory but not a tunelab run; a directory must be a "
                          "reward-model run (method: reward)")
    method = run.config().method
    if method != "reward":
        raise ConfigError(f"rl.rewards: {p} is a method: {method} run, not a reward model; train one with "
                          "method: reward")
    if run.labels() != ["reward"]:  # the one-output head a reward run saves with its adapter
        raise ConfigError(f"rl.rewards: {p} has no reward head (its {layout.LABELS} is missing or is not "
                          '["reward"]): the run is incomplete or not a tunelab reward model')


def check(specs: list[str]) -> None:
    """Every reward spec is one tunelab knows, before any model is loaded (cheap, no imports of user code)."""
    if not specs:
        raise ConfigError(f"rl.rewards is empty: name at least one reward ({VALID_FORMS})")
    for spec in specs:
        if spec in ("exact", "numeric", "format") or spec.startswith("regex:"):
            continue
        if spec.startswith("length:"):
            value = spec.split(":", 1)[1]
            if not value.isdigit() or int(value) <= 0:
                raise ConfigError(f"rl.rewards: {spec}: length:<tokens> needs a positive whole number of tokens")
            continue
        run = _reward_run(spec)
        if run is not None:
            _check_reward_run(run)
            continue
        if _MODULE_FUNC.match(spec):
            continue
        raise ConfigError(f"rl.rewards: unknown reward {spec!r}: use one of {VALID_FORMS}")


def needs_answer(specs: list[str]) -> bool:
    return any(s in ANSWER_REWARDS for s in specs)


def build(specs: list[str], tokenizer: Any) -> list[RewardFunc]:
    """The reward functions, in rl.rewards order (check() first)."""
    check(specs)
    out: list[RewardFunc] = []
    for spec in specs:
        if spec == "exact":
            out.append(exact)
        elif spec == "numeric":
            out.append(numeric)
        elif spec == "format":
            out.append(format_reward)
        elif spec.startswith("regex:"):
            out.append(regex_reward(spec.split(":", 1)[1]))
        elif spec.startswith("length:"):
            out.append(length_reward(int(spec.split(":", 1)[1]), tokenizer))
        elif (run := _reward_run(spec)) is not None:
            out.append(reward_model(run))
        else:
            out.append(_import_function(spec))
    return out


def _load_reward_model(run: Path) -> tuple[Any, Any]:
    """A reward-model run (a one-output head, loaded as `tunelab.load` loads it) and its tokenizer."""
    from .models.load import load

    lm = load(str(run))
    lm.model.requires_grad_(False)
    return lm.model, lm.tokenizer


def reward_model(run: Path, batch_size: int = 8) -> RewardFunc:
    """The scalar score of a reward-model run for prompt + completion, rendered with its chat template."""
    import torch

    model, tok = _load_reward_model(run)

    def render(prompt: Any, completion: Any) -> str:
        if isinstance(prompt, list) and getattr(tok, "chat_template", None):
            msgs = [*prompt, {"role": "assistant", "content": text_of(completion)}]
            return str(render_chat(tok, msgs, tokenize=False))
        return text_of(prompt) + text_of(completion)

    @torch.no_grad()
    def score(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
        texts = [render(p, c) for p, c in zip(prompts, completions, strict=True)]
        dev, out = next(model.parameters()).device, []
        tok.padding_side = "right"  # the score is read at the last non-padding token
        for i in range(0, len(texts), batch_size):
            enc = tok(texts[i : i + batch_size], return_tensors="pt", padding=True, truncation=True,
                      max_length=2048, add_special_tokens=False).to(dev)
            out += model(**enc).logits[:, 0].float().tolist()
        return out

    score.__name__ = f"reward_model_{run.name}"
    return score
