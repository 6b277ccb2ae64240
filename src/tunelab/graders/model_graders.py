"""Model graders (score_model, label_model): a tunelab reward-model run scoring the rendered conversation, or a
chat model on an OpenAI-compatible server (TUNELAB_GRADER_BASE_URL) asked through the openai client."""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path
from typing import Any

from ..config import ConfigError
from ..config.graders import GraderMessage, LabelModelGrader, ScoreModelGrader
from .results import GradeFailure, GradeResult, Pair, failed, result
from .templates import render

BASE_URL_ENV, API_KEY_ENV = "TUNELAB_GRADER_BASE_URL", "TUNELAB_GRADER_API_KEY"


def reward_run(model: str) -> Path | None:
    """The directory `model` names (a tunelab reward-model run, once check_model has checked it); None for a model
    on a server."""
    p = Path(model).expanduser()
    return p if p.is_dir() else None


def check_model(g: ScoreModelGrader | LabelModelGrader, label: str) -> None:
    """ConfigError unless the grader's model is a completed reward-model run, or a server is set to ask."""
    run = reward_run(g.model)
    if run is not None:
        from ..runs import RunDir

        rd = RunDir(run)
        if isinstance(g, LabelModelGrader):
            raise ConfigError(f"{label}: model {g.model} is a directory, but a label_model grader needs a chat "
                              f"model on a server ({BASE_URL_ENV}): a reward model gives a score, not a label")
        if not rd.is_run() or rd.config().method != "reward" or rd.labels() != ["reward"]:
            raise ConfigError(f"{label}: model {g.model} is a directory but not a completed tunelab reward-model "
                              "run (method: reward, with its one-score head); name such a run, or a model on the "
                              f"server at {BASE_URL_ENV}")
        if any(not isinstance(p, str) and p.type in ("input_image", "input_audio")
               for m in g.input for p in (m.content if isinstance(m.content, list) else [m.content])):
            raise ConfigError(f"{label}: a reward-model run reads text only; its input has image or audio parts")
        return
    if not os.environ.get(BASE_URL_ENV):
        raise ConfigError(f"{label}: model {g.model!r} is not a directory (a tunelab reward-model run) and "
                          f"{BASE_URL_ENV} is not set: set it to an OpenAI-compatible server's URL (tunelab serve, "
                          f"vLLM, or https://api.openai.com/v1 with {API_KEY_ENV})")
    try:
        import openai  # noqa: F401
    except ImportError:
        raise ConfigError(f"{label}: a grader model on a server needs the openai package: pip install "
                          "'openai>=1.50,<4'") from None


def grade_model(g: ScoreModelGrader | LabelModelGrader, pairs: list[Pair]) -> list[GradeResult]:
    """Every answer graded: in one batch through a reward-model run, else up to 8 requests at a time."""
    t0 = time.perf_counter()
    rendered: list[list[dict[str, Any]] | GradeFailure] = []
    for s, i in pairs:
        try:
            rendered.append([_chat_message(m, s, i) for m in g.input])
        except GradeFailure as exc:
            rendered.append(exc)
    run = reward_run(g.model)
    if run is not None and isinstance(g, ScoreModelGrader):
        return _reward_model_scores(g, run, pairs, rendered, t0)
    with ThreadPoolExecutor(max_workers=min(8, max(len(pairs), 1))) as pool:
        return list(pool.map(lambda msgs: _ask(g, msgs), rendered))


def _chat_message(m: GraderMessage, sample: dict[str, Any], item: dict[str, Any]) -> dict[str, Any]:
    parts = m.content if isinstance(m.content, list) else [m.content]
    out: list[dict[str, Any]] = []
    for p in parts:
        if isinstance(p, str):
            out.append({"type": "text", "text": render(p, sample, item)})
        elif p.type in ("input_text", "output_text"):
            out.append({"type": "text", "text": render(p.text, sample, item)})
        elif p.type == "input_image":
            out.append({"type": "image_url", "image_url": {"url": render(p.image_url, sample, item)}
                        | ({"detail": p.detail} if p.detail else {})})
        else:
            out.append({"type": "input_audio", "input_audio": p.input_audio.model_dump()})
    role = "system" if m.role == "developer" else m.role  # servers other than OpenAI's may not know developer
    texts_only = all(x["type"] == "text" for x in out)
    return {"role": role, "content": "".join(x["text"] for x in out) if texts_only else out}


@cache
def _reward_scorer(run: str) -> Callable[..., list[float]]:
    from ..rewards import reward_model

    return reward_model(Path(run))  # loaded once per process


def _reward_model_scores(g: ScoreModelGrader, run: Path, pairs: list[Pair],
                         rendered: list[list[dict[str, Any]] | GradeFailure], t0: float) -> list[GradeResult]:
    """The reward model's score of the rendered conversation, with the answer appended as the assistant's turn
    unless the input ends with one; squashed into `range` by a sigmoid (a reward model's scale is arbitrary)."""
    ok = [i for i, r in enumerate(rendered) if not isinstance(r, GradeFailure)]
    prompts, replies = [], []
    for i in ok:
        msgs = rendered[i]
        assert not isinstance(msgs, GradeFailure)
        if msgs and msgs[-1]["role"] == "assistant":
            prompts.append(msgs[:-1])
            replies.append(msgs[-1]["content"])
        else:
            prompts.append(msgs)
            replies.append(pairs[i][0]["output_text"])
    raw = _reward_scorer(str(run.resolve()))(prompts, replies) if ok else []
    lo, hi = g.range or (0.0, 1.0)
    seconds = (time.perf_counter() - t0) / max(len(pairs), 1)
    scored = dict(zip(ok, raw, strict=True))
    out = []
    for i, r in enumerate(rendered):
        if isinstance(r, GradeFailure):
            out.append(failed(g, r, seconds))
        else:
            reward = lo + (hi - lo) / (1 + math.exp(-scored[i]))
            out.append(result(g, reward, seconds, scores={g.name: reward, "reward_model_score": scored[i]}))
    return out


@cache
def _client(base_url: str, api_key: str) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=base_url, api_key=api_key, timeout=120, max_retries=2)


def _ask(g: ScoreModelGrader | LabelModelGrader, msgs: list[dict[str, Any]] | GradeFailure) -> GradeResult:
    t0 = time.perf_counter()
    if isinstance(msgs, GradeFailure):
        return failed(g, msgs, time.perf_counter() - t0)
    kwargs: dict[str, Any] = {}
    sp = g.sampling_params if isinstance(g, ScoreModelGrader) else None
    if sp is not None:
        kwargs = {k: v for k, v in (("temperature", sp.temperature), ("top_p", sp.top_p), ("seed", sp.seed),
                                    ("max_completion_tokens", sp.max_completions_tokens),
                                    ("reasoning_effort", sp.reasoning_effort)) if v is not None}
    try:
        client = _client(os.environ.get(BASE_URL_ENV, ""), os.environ.get(API_KEY_ENV) or "none")
        reply = client.chat.completions.create(model=g.model, messages=msgs, **kwargs)
    except Exception as exc:  # the server's or the connection's: this answer scores 0, flagged
        return failed(g, GradeFailure("model_grader_server_error", f"{type(exc).__name__}: {exc}"),
                       time.perf_counter() - t0)
    usage = {}
    if reply.usage is not None:
        usage = {g.model: {"prompt_tokens": reply.usage.prompt_tokens or 0,
                           "completion_tokens": reply.usage.completion_tokens or 0,
                           "total_tokens": reply.usage.total_tokens or 0}}
    message = reply.choices[0].message if reply.choices else None
    text = (message.content or "") if message else ""
    seconds = time.perf_counter() - t0
    if message is not None and getattr(message, "refusal", None):
        return result(g, 0.0, seconds, errors={"model_grader_refusal_error": True,
                                                "model_grader_refusal_error_details": message.refusal},
                       scores={}, usage=usage)
    try:
        if isinstance(g, LabelModelGrader):
            label = parse_label(text, g.labels)
            return result(g, float(label in g.passing_labels), seconds, scores={g.name: label}, usage=usage)
        lo, hi = g.range or (0.0, 1.0)
        return result(g, max(lo, min(hi, parse_score(text))), seconds, usage=usage)
    except GradeFailure as exc:
        out = failed(g, exc, seconds)
        out.model_grader_token_usage_per_model = usage
        return out


_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def parse_score(text: str) -> float:
    """A grader model's score: {"result": x} (OpenAI's structured reply) or {"score": x}, else the first number."""
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, int | float) and not isinstance(data, bool):
        return float(data)
    if isinstance(data, dict):
        for key in ("result", "score"):
            if isinstance(data.get(key), int | float) and not isinstance(data.get(key), bool):
                return float(data[key])
    found = _NUMBER.search(text)
    if found is None:
        raise GradeFailure("model_grader_parse_error", f"no number in the grader model's reply {text[:200]!r}")
    return float(found.group(0))


def parse_label(text: str, labels: list[str]) -> str:
    """The label a grader model chose: {"result": label}, the whole reply, else the label it names first."""
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict) and data.get("result") in labels:
        return str(data["result"])
    said = text.strip().strip(".\"'` ").lower()
    for lab in labels:
        if said == lab.lower():
            return lab
    hits = [(m.start(), -len(lab), lab) for lab in labels
            if (m := re.search(rf"(?<!\w){re.escape(lab.lower())}(?!\w)", text.lower()))]
    if not hits:
        raise GradeFailure("model_grader_parse_error", f"the grader model's reply {text[:200]!r} names none of the "
                       f"labels {labels}")
    return min(hits)[2]
