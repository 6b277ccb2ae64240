"""Replies from a model reference: one-shot (`tunelab generate`) and interactive (`tunelab chat`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from threading import Thread
from typing import Any

import torch

from .data.templates import Message, render_chat, trained_system_prompt
from .models.load import LoadedModel, load


def stream_reply(lm: LoadedModel, messages: list[Message], *, max_new_tokens: int = 256,
                 temperature: float = 0.0, top_p: float = 1.0) -> Iterator[str]:
    """Yield the reply text piece by piece."""
    from transformers import TextIteratorStreamer

    tok, cfg = lm.tokenizer, lm.run_config()
    if cfg is not None and cfg.method == "reward":
        from .models.load import ModelError

        raise ModelError(f"{lm.resolved.run} is a reward model: it scores answers and writes none. Use it in "
                         f"rl.rewards for GRPO, or load it with tunelab.load() to score text")
    if lm.labels:  # classification head: the reply is the predicted label (or the run's unsure label)
        from .eval.classify import scored_head
        from .eval.unsure import for_run
        from .runs import RunDir

        preds, probs = scored_head(lm.model, tok, [messages[-1]["content"]], lm.labels)
        unsure = for_run(cfg, RunDir(lm.resolved.run).summary()) if lm.resolved.run is not None else None
        yield (unsure.apply(preds, probs) if unsure else preds)[0]
        return
    if cfg is not None and cfg.task == "completion":  # trained on raw text: no chat template
        enc = tok(messages[-1]["content"], return_tensors="pt", add_special_tokens=False)
    else:
        enc = render_chat(tok, messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    enc = enc.to(next(lm.model.parameters()).device)
    streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
    kwargs: dict[str, Any] = dict(**enc, max_new_tokens=max_new_tokens, streamer=streamer,
                                  pad_token_id=tok.pad_token_id)
    if temperature > 0:
        kwargs.update(do_sample=True, temperature=temperature, top_p=top_p)
    else:
        kwargs.update(do_sample=False)
    failure: list[BaseException] = []
    thread = Thread(target=_generate, args=(lm.model, kwargs, streamer, failure))
    thread.start()
    yield from streamer
    thread.join()
    if failure:
        raise failure[0]


@torch.no_grad()
def _generate(model: Any, kwargs: dict[str, Any], streamer: Any, failure: list[BaseException]) -> None:
    try:
        model.generate(**kwargs)
    except BaseException as exc:  # surfaces in the caller; the streamer must end or the caller waits forever
        failure.append(exc)
        streamer.end()


def generate(ref: str | LoadedModel | None, prompt: str, *, system: str | None = None,
             on_text: Callable[[str], None] | None = None, **kwargs: Any) -> str:
    lm = ref if isinstance(ref, LoadedModel) else load(ref)
    system = system or trained_system_prompt(lm.run_config())
    messages: list[Message] = ([{"role": "system", "content": system}] if system else [])
    messages.append({"role": "user", "content": prompt})
    parts = []
    for piece in stream_reply(lm, messages, **kwargs):
        parts.append(piece)
        if on_text:
            on_text(piece)
    return "".join(parts).strip()


def describe(lm: LoadedModel) -> str:
    r = lm.resolved
    what = {"run": "tuned run", "alias": "embedded default", "dir": "local model", "gguf": "GGUF file",
            "hub": "hub model"}[r.kind]
    extra = f", adapter {r.adapter}" if r.adapter else ""
    return f"{what}: {r.run or r.path}{extra}"
