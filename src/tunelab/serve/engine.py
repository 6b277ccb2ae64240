"""The serving engine: one base model, any number of LoRA adapters, continuous batching.

A single thread owns the model: every computation on it (adapter loads and prompt embeddings too) runs there,
because libgomp slows every thread's small parallel regions once two threads keep thread pools (more pool
threads than cores: it stops spinning and sleeps between regions; one decoding token took 1.7x as long).

Requests wait in a bounded queue; at every decoding step the engine
admits waiting ones (their prompts are prefilled together, left-padded) and merges their KV cache into
the running batch, so requests that arrive while others are generating share the next forward passes.
Rows that finish, or whose client went away, leave the batch at once. Rows for different adapters run
in one forward pass through peft's mixed-adapter batches (`adapter_names`).

Every row keeps its own positions, so left padding changes nothing but the masked columns: greedy
answers are those of the same prompt run alone (a test checks it with 16 concurrent clients).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import math
import re
import threading
import time
import uuid
import warnings
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from ..models.weight_int8 import is_quantized

T = TypeVar("T")
BASE = "__base__"  # peft's name for "no adapter" in a mixed batch


class QueueFull(RuntimeError):
    def __init__(self, retry_after: int) -> None:
        super().__init__("the server is at capacity")
        self.retry_after = retry_after


@dataclass
class Sampling:
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 256
    stop: list[str] = field(default_factory=list)
    seed: int | None = None


@dataclass
class Event:
    kind: str  # "text" | "finish" | "done" | "error"
    index: int = 0
    text: str = ""
    finish_reason: str | None = None
    error: BaseException | None = None


@dataclass
class GenRequest:
    """One API request: `n` rows (choices) for each of its prompts, all with one adapter and sampling."""

    model: str  # the name the client asked for
    adapter: str | None
    prompts: list[list[int]]
    sampling: Sampling
    n: int = 1
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created: float = field(default_factory=time.time)
    cancelled: bool = False
    cancelled_at: float | None = None
    first_token_at: float | None = None
    finished_at: float | None = None
    completion_tokens: int = 0
    texts: dict[int, str] = field(default_factory=dict)
    finish_reasons: dict[int, str] = field(default_factory=dict)
    _loop: asyncio.AbstractEventLoop | None = None
    _queue: asyncio.Queue[Event] | None = None
    _open_rows: int = 0

    @property
    def prompt_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)

    def cancel(self) -> None:
        """The client went away: its rows leave the batch at the engine's next step."""
        if not self.cancelled:
            self.cancelled_at = time.time()
            self.cancelled = True

    def bind(self, loop: asyncio.AbstractEventLoop) -> asyncio.Queue[Event]:
        self._loop, self._queue = loop, asyncio.Queue()
        return self._queue

    def emit(self, event: Event) -> None:
        if event.kind == "text":
            self.texts[event.index] = self.texts.get(event.index, "") + event.text
        elif event.kind == "finish":
            self.finish_reasons[event.index] = event.finish_reason or "stop"
        if self._loop is not None and self._queue is not None:
            try:
                self._loop.call_soon_threadsafe(self._queue.put_nowait, event)
            except RuntimeError:  # the client's event loop is gone (server shutting down)
                self.cancel()


@dataclass
class _Row:
    req: GenRequest
    index: int
    prompt: list[int]
    generator: torch.Generator | None
    ids: list[int] = field(default_factory=list)
    pos: int = 0  # position of the next token to feed
    emitted: int = 0  # characters of the decoded text already sent
    done: bool = False


class Engine:
    """Owns the model; `submit` from any thread, results arrive on the request's asyncio queue."""

    name = "torch"  # the engine, as /v1/models shows it

    @property
    def rows_at_once(self) -> int:
        """Sequences decoded together (what a queue's wait is estimated from)."""
        return self.max_batch

    def __init__(self, model: Any, tokenizer: Any, *, base_name: str, max_batch: int = 16, max_queue: int = 64,
                 max_context: int | None = None, batch_wait_s: float = 0.005) -> None:
        self.model, self.tokenizer, self.base_name = model, tokenizer, base_name
        self.max_batch, self.max_queue, self.batch_wait_s = max_batch, max_queue, batch_wait_s
        cfg = getattr(model, "config", None)
        self.max_context = max_context or int(getattr(cfg, "max_position_embeddings", 2048) or 2048)
        self.device = next(model.parameters()).device
        self.adapters: dict[str, dict[str, Any]] = {}  # name -> info (source, system prompt, ...)
        self._removing: set[str] = set()
        self.eos_ids = _eos_ids(model, tokenizer)
        # transformers 5.2x renamed `past_key_values` to `cache`; accept either
        self._cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self._waiting: deque[GenRequest] = deque()
        self._rows: list[_Row] = []
        self._cache: Any = None
        self._mask: torch.Tensor | None = None
        self._cv = threading.Condition()
        self._calls: deque[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = deque()
        self._model_lock = threading.RLock()
        self._layers_on: bool | None = None  # the adapters' LoRA layers switched on (None: unknown, set it)
        self._stop = False
        self._thread: threading.Thread | None = None
        self.tokens_generated = 0
        self._recent: deque[tuple[float, int]] = deque(maxlen=256)  # (time, tokens) per step, for tokens/s
        self._avg_request_s = 2.0
        # called with the seconds from a request's cancel() to its rows leaving the batch (for /metrics)
        self.on_release: Callable[[float], None] | None = None
        self._open()

    def _open(self) -> None:
        _check_cache(self._owned(self._probe_cache))  # refused at start, not at the first request

    def _probe_cache(self) -> Any:
        with torch.inference_mode():
            probe = self.model(input_ids=torch.tensor([[self.tokenizer.eos_token_id or 0]], device=self.device),
                               use_cache=True, **{self._cache_arg: _full_cache()})
        return _cache_of(probe)

    # ---- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="tunelab-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _owned(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` run on the engine's thread (or, before it starts, on a thread of its own), waited for."""
        if threading.current_thread() is self._thread:
            return fn(*args)
        if self._stop:  # stopped: what the model held may be freed already
            raise RuntimeError("the server is shutting down")
        if self._thread is None or not self._thread.is_alive():
            return on_fresh_thread(fn, *args)
        done: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._cv:
            if self._stop:  # the loop may already have failed its last calls: this one would wait forever
                raise RuntimeError("the server is shutting down")
            self._calls.append((lambda: fn(*args), done))
            self._cv.notify_all()
        return done.result()

    def _run_calls(self) -> None:
        while True:
            with self._cv:
                if not self._calls:
                    return
                fn, done = self._calls.popleft()
            try:
                done.set_result(fn())
            except BaseException as exc:  # the caller gets it; the engine goes on
                done.set_exception(exc)

    # ---- adapters --------------------------------------------------------------------------------
    def add_adapter(self, name: str, path: Path, info: dict[str, Any]) -> None:
        """Load an adapter beside the others. On failure the model is left as it was."""
        self._owned(self._add_adapter, name, path, info)

    def _add_adapter(self, name: str, path: Path, info: dict[str, Any]) -> None:
        from peft import PeftModel

        with self._model_lock:
            self._check_new_name(name)
            if hasattr(torch.nn.ModuleDict, name):  # peft keeps each adapter's layers under its name
                raise ValueError(f"{name!r} can't name an adapter: torch's modules use that name for themselves; "
                                 f"choose another")
            before = self.model
            try:
                if isinstance(self.model, PeftModel):
                    # peft lists the adapters already loaded as missing too: only this one's own keys count
                    missing = [k for k in self.model.load_adapter(str(path), adapter_name=name).missing_keys
                               if f".{name}." in k]
                else:
                    with warnings.catch_warnings(record=True) as caught:  # peft only warns of missing weights
                        warnings.simplefilter("always")
                        self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=name)
                    said = [str(w.message) for w in caught if "missing adapter keys" in str(w.message)]
                    missing = [k for m in said for k in re.findall(r"'([^']+)'", m)] or said
                if missing:  # those weights would stay at their initial values: an adapter loaded half
                    raise ValueError(f"{path}: the adapter's weights file lacks some of its weights (e.g. "
                                     f"{missing[0][:200]}): cut short, or saved for another adapter config; copy "
                                     f"it again")
            except Exception:
                self._roll_back(before, name)
                raise
            config = self.model.peft_config[name]
            if getattr(config, "use_dora", False) and is_quantized(self.model):
                self._roll_back(before, name)  # DoRA rescales the base weight itself: int8 weights would be wrong
                raise ValueError(f"{path}: a DoRA adapter needs the base's float weights; serve it with --dtype "
                                 f"fp32 or bf16 (this server holds the base in int8)")
            dtype = self.model.get_input_embeddings().weight.dtype
            for param_name, param in self.model.named_parameters():
                if f".{name}." in param_name and param.dtype != dtype:
                    # peft keeps adapters in fp32 on a bf16 base: every LoRA matmul would cast (2x slower)
                    param.data = param.data.to(dtype)
            self.model.eval()
            self._layers_on = None
            # peft can't mix DoRA adapters with others in one forward pass: they get batches of their own
            self.adapters[name] = info | {"solo": bool(getattr(config, "use_dora", False))}

    def _check_new_name(self, name: str) -> None:
        if name in self.adapters or name == self.base_name:
            raise ValueError(f"a model named {name!r} is already loaded")
        if name in self._removing:
            raise ValueError(f"{name!r} is still finishing requests after its removal; add it again shortly")

    def _removable(self) -> set[str]:
        """Removed adapters that no running or waiting request uses any more."""
        with self._cv:
            in_use = {r.req.adapter for r in self._rows} | {q.adapter for q in self._waiting}
            return self._removing - in_use

    def _roll_back(self, before: Any, name: str) -> None:
        from peft import PeftModel

        self._layers_on = None
        if isinstance(before, PeftModel):
            if name in before.peft_config:
                before.delete_adapter(name)
            self.model = before
            return
        from peft.tuners.lora import LoraLayer

        # a failed first load may have put LoRA layers into the plain base: take them out again
        for module_name, module in list(before.named_modules()):
            if isinstance(module, LoraLayer):
                parent_name, _, child = module_name.rpartition(".")
                setattr(before.get_submodule(parent_name) if parent_name else before, child,
                        module.get_base_layer())
        self.model = before

    def remove_adapter(self, name: str) -> None:
        """New requests for it are refused at once; its weights go when no row uses them."""
        with self._cv:
            if name not in self.adapters:
                raise KeyError(name)
            del self.adapters[name]
            self._removing.add(name)
            self._cv.notify_all()

    def _drop_removed(self) -> None:
        """Unload removed adapters that no running or waiting request uses (engine thread only)."""
        ready = self._removable()
        if not ready:
            return
        with self._model_lock:  # not under _cv: submitting requests must never wait for an unload
            for name in ready:
                loaded = getattr(self.model, "peft_config", {})
                if name in loaded and len(loaded) == 1:  # peft can't run with no adapter: back to the plain base
                    self.model = self.model.unload()
                elif name in loaded:
                    self.model.delete_adapter(name)
            self._layers_on = None
        with self._cv:
            self._removing -= ready

    @property
    def model_names(self) -> list[str]:
        return [self.base_name, *self.adapters]

    # ---- queue -----------------------------------------------------------------------------------
    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    @property
    def active_rows(self) -> int:
        return len(self._rows)

    def tokens_per_second(self, window_s: float = 10.0) -> float:
        now = time.time()
        recent = [(t, n) for t, n in list(self._recent) if now - t <= window_s]
        if len(recent) < 2:
            return 0.0
        span = max(now - recent[0][0], 1e-3)
        return sum(n for _, n in recent) / span

    def submit(self, req: GenRequest) -> None:
        rows = len(req.prompts) * req.n
        if rows > self.max_batch:
            raise ValueError(f"this request needs {rows} sequences (prompts x n) and the server generates at most "
                             f"{self.max_batch} at once (--max-batch)")
        with self._cv:
            if len(self._waiting) >= self.max_queue:  # requests whose clients left make room first
                self._waiting = deque(r for r in self._waiting if not r.cancelled)
            if len(self._waiting) >= self.max_queue:
                batches_ahead = math.ceil((len(self._waiting) + len(self._rows)) / max(self.rows_at_once, 1))
                raise QueueFull(max(1, math.ceil(batches_ahead * self._avg_request_s)))
            req._open_rows = len(req.prompts) * req.n
            self._waiting.append(req)
            self._cv.notify_all()

    # ---- the loop --------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cv:
                if not self._rows and not self._waiting and not self._stop and not self._calls:
                    self._cv.wait(timeout=0.5)
                if self._stop:
                    break
            self._run_calls()
            with self._cv:
                if not self._rows and self._waiting and self.batch_wait_s:
                    # idle: give requests sent together a moment to arrive, so they prefill together
                    self._cv.wait(timeout=self.batch_wait_s)
            try:
                self._step()
            except Exception as exc:  # never let the engine thread die: fail what is in flight, keep serving
                self._fail(self._rows, exc)
                self._rows, self._cache, self._mask = [], None, None
        self._fail(self._rows, RuntimeError("the server is shutting down"))
        with self._cv:
            calls, self._calls = list(self._calls), deque()
        for _, done in calls:
            done.set_exception(RuntimeError("the server is shutting down"))

    def _step(self) -> None:
        if self._removing:
            self._drop_removed()
        with self._cv:
            admitted = self._admit()
        with self._model_lock, torch.inference_mode():
            self._drop_cancelled()
            if admitted:
                try:
                    prefilled = self._prefill(admitted)
                except Exception as exc:  # the running batch is untouched: fail only the newcomers
                    self._fail(admitted, exc)
                else:
                    self._join(admitted, *prefilled)
            if self._rows:
                self._decode_step()

    @staticmethod
    def _fail(rows: list[_Row], exc: BaseException) -> None:
        for row in rows:
            if not row.done:
                row.done = True
                row.req.emit(Event("error", row.index, error=exc))

    def _solo(self, adapter: str | None) -> bool:
        return bool(adapter and self.adapters.get(adapter, {}).get("solo"))

    def _admit(self) -> list[_Row]:
        """Take waiting requests, first come first served, while they fit the batch and can share it."""
        rows: list[_Row] = []
        while self._waiting:
            req = self._waiting[0]
            need = len(req.prompts) * req.n
            running = [r.req.adapter for r in self._rows] + [r.req.adapter for r in rows]
            if running and len(running) + need > self.max_batch:
                break
            if running and any(self._solo(a) for a in {*running, req.adapter}) and set(running) != {req.adapter}:
                break  # a DoRA adapter's rows can't share a forward pass with other adapters' rows
            self._waiting.popleft()
            if not req.cancelled:
                rows.extend(self._rows_of(req))
        return rows

    @staticmethod
    def _rows_of(req: GenRequest) -> list[_Row]:
        """A request's rows (n for each prompt), each with its own sampling generator."""
        rows = []
        for p_i, prompt in enumerate(req.prompts):
            for j in range(req.n):
                gen = None
                if req.sampling.temperature > 0:
                    gen = torch.Generator(device="cpu")
                    if req.sampling.seed is not None:
                        gen.manual_seed((req.sampling.seed + j) % 2**63)
                    else:
                        gen.seed()
                rows.append(_Row(req, p_i * req.n + j, prompt, gen, pos=len(prompt)))
        return rows

    def _forward(self, rows: list[_Row], **kwargs: Any) -> Any:
        from peft import PeftModel

        if isinstance(self.model, PeftModel):
            names = [r.req.adapter or BASE for r in rows]
            self._adapter_layers(on=names != [BASE] * len(names))
            if len(set(names)) > 1:  # mixed batch: peft runs each adapter on its own rows
                kwargs["adapter_names"] = names
            elif names[0] != BASE and self.model.active_adapter != names[0]:
                # one adapter for all rows: the plain LoRA path, without per-adapter row gathering
                self.model.set_adapter(names[0])
        return self.model(use_cache=True, logits_to_keep=1, **kwargs)

    def _adapter_layers(self, *, on: bool) -> None:
        """Switch the LoRA layers on or off only when the batch's kind changes: peft's `disable_adapter()` walks
        every module (27 ms a step with the default model, as long as the step itself)."""
        if self._layers_on is not on:
            if on:
                self.model.base_model.enable_adapter_layers()
            else:
                self.model.base_model.disable_adapter_layers()
            self._layers_on = on

    def _prefill(self, rows: list[_Row]) -> tuple[Any, torch.Tensor]:
        """The newcomers' forward pass on their own; nothing shared is touched yet."""
        width = max(len(r.prompt) for r in rows)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r.prompt):] = torch.tensor(r.prompt)
            mask[i, width - len(r.prompt):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self._forward(rows, input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                            position_ids=positions.to(self.device), **{self._cache_arg: _full_cache()})
        return out, mask.to(self.device)

    def _join(self, rows: list[_Row], out: Any, mask: torch.Tensor) -> None:
        self._merge(_cache_of(out), mask)
        self._rows.extend(rows)
        self._take(rows, out.logits[:, -1, :])

    def _decode_step(self) -> None:
        rows = self._rows
        ids = torch.tensor([[r.ids[-1]] for r in rows], device=self.device)
        positions = torch.tensor([[r.pos - 1] for r in rows], device=self.device)
        assert self._mask is not None
        mask = torch.cat([self._mask, self._mask.new_ones((len(rows), 1))], dim=1)
        out = self._forward(rows, input_ids=ids, attention_mask=mask, position_ids=positions,
                            **{self._cache_arg: self._cache})
        self._cache, self._mask = _cache_of(out), mask
        self._take(rows, out.logits[:, -1, :])

    def _take(self, rows: list[_Row], logits: torch.Tensor) -> None:
        """Choose each row's next token, stream its text, and retire rows that are done."""
        logits = logits.float()
        greedy = logits.argmax(-1).tolist()
        now = time.time()
        for i, row in enumerate(rows):
            if row.done:
                continue
            s = row.req.sampling
            token = greedy[i] if row.generator is None else _sample(logits[i], s.temperature, s.top_p, row.generator)
            if row.req.first_token_at is None:
                row.req.first_token_at = now
            if token in self.eos_ids:
                self._finish(row, "stop")
                continue
            row.ids.append(token)
            row.pos += 1
            row.req.completion_tokens += 1
            self._stream(row)
            if not row.done and (len(row.ids) >= s.max_tokens or row.pos >= self.max_context):
                self._finish(row, "length")
        self.tokens_generated += len(rows)
        self._recent.append((now, len(rows)))
        self._retire()

    def _stream(self, row: _Row) -> None:
        text = self.tokenizer.decode(row.ids, skip_special_tokens=True)
        stops = row.req.sampling.stop
        if stops:
            start = max(0, row.emitted - max(len(s) for s in stops))
            hits = [j for j in (text.find(s, start) for s in stops) if j >= 0]
            if hits:
                end = min(hits)
                if end > row.emitted:
                    row.req.emit(Event("text", row.index, text[row.emitted:end]))
                row.emitted = end
                self._finish(row, "stop", flush=False)
                return
        safe = len(text)
        if text.endswith("\ufffd"):  # a character split across tokens: wait for the rest
            safe = len(text.rstrip("\ufffd"))
        for s in stops:  # hold back what may be the start of a stop string
            for k in range(min(len(s) - 1, safe), 0, -1):
                if text[:safe].endswith(s[:k]):
                    safe -= k
                    break
        if safe > row.emitted:
            row.req.emit(Event("text", row.index, text[row.emitted:safe]))
            row.emitted = safe

    def _finish(self, row: _Row, reason: str, *, flush: bool = True) -> None:
        if flush and row.ids:
            text = self.tokenizer.decode(row.ids, skip_special_tokens=True)
            if len(text) > row.emitted:
                row.req.emit(Event("text", row.index, text[row.emitted:]))
                row.emitted = len(text)
        row.done = True
        row.req.emit(Event("finish", row.index, finish_reason=reason))
        row.req._open_rows -= 1
        if row.req._open_rows == 0:
            row.req.finished_at = time.time()
            self._avg_request_s = 0.9 * self._avg_request_s + 0.1 * (row.req.finished_at - row.req.created)
            row.req.emit(Event("done"))

    def _drop_cancelled(self) -> None:
        released: dict[str, GenRequest] = {}
        for row in self._rows:
            if row.req.cancelled and not row.done:
                row.done = True
                released[row.req.id] = row.req
        self._retire()
        if self.on_release is not None:
            now = time.time()
            for req in released.values():
                self.on_release(now - (req.cancelled_at or now))

    def _retire(self) -> None:
        keep = [i for i, r in enumerate(self._rows) if not r.done]
        if len(keep) == len(self._rows):
            return
        if not keep:
            self._rows, self._cache, self._mask = [], None, None
            return
        index = torch.tensor(keep, device=self.device)
        self._cache.batch_select_indices(index)
        assert self._mask is not None
        mask = self._mask[index]
        first = int(mask.any(0).nonzero()[0])  # columns that are padding for every row left: drop them
        if first:
            for layer in self._cache.layers:
                layer.keys, layer.values = layer.keys[..., first:, :], layer.values[..., first:, :]
            mask = mask[:, first:]
        self._mask = mask
        self._rows = [self._rows[i] for i in keep]

    def _merge(self, cache: Any, mask: torch.Tensor) -> None:
        """Append a freshly prefilled group to the running batch, left-padding the shorter side."""
        if self._cache is None or self._mask is None:
            self._cache, self._mask = cache, mask
            return
        width = max(self._mask.shape[1], mask.shape[1])
        for old, new in zip(self._cache.layers, cache.layers, strict=True):
            old.keys = torch.cat([_pad_left(old.keys, width), _pad_left(new.keys, width)], dim=0)
            old.values = torch.cat([_pad_left(old.values, width), _pad_left(new.values, width)], dim=0)
        self._mask = torch.cat([_pad_left(self._mask, width), _pad_left(mask, width)], dim=0)

    # ---- helpers for the API layer ---------------------------------------------------------------
    def prompt_embedding(self, ids: list[int]) -> list[float]:
        """Mean input embedding of a prompt: what drift monitoring compares, with no text kept."""
        return self._owned(self._prompt_embedding, ids)

    @torch.inference_mode()
    def _prompt_embedding(self, ids: list[int]) -> list[float]:
        emb = self.model.get_input_embeddings()
        vec = emb(torch.tensor(ids[-2048:], device=self.device)).float().mean(0)
        return vec.cpu().tolist()


def on_fresh_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`fn` run on a short-lived thread: its torch thread pool ends with it (see the module's docstring)."""
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tunelab-model-setup") as pool:
        return pool.submit(fn, *args, **kwargs).result()


def _full_cache() -> Any:
    """A cache that keeps every position: sliding-window layers (Gemma 2, Gemma 3) would otherwise get caches that
    drop old positions, which can't be padded and merged across rows; their attention masks still apply the window,
    so the logits are the same."""
    from transformers import DynamicCache

    return DynamicCache()


def _cache_of(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _pad_left(t: torch.Tensor, width: int) -> torch.Tensor:
    dim = 1 if t.dim() == 2 else -2
    missing = width - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def _check_cache(cache: Any) -> None:
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer) is not DynamicLayer for layer in layers):
        kinds = sorted({type(layer).__name__ for layer in layers or []}) or [type(cache).__name__]
        raise ValueError(f"tunelab serve batches models whose KV cache is a plain dynamic cache (transformer "
                         f"families such as llama, qwen2, qwen3, mistral, gemma2, gemma3, phi3); this model keeps "
                         f"{', '.join(kinds)}")


def _sample(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> int:
    probs = torch.softmax(logits / max(temperature, 1e-5), dim=-1).cpu()
    if top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        keep = sorted_p.cumsum(0) - sorted_p < top_p  # the smallest set whose mass reaches top_p
        sorted_p = sorted_p * keep
        choice = torch.multinomial(sorted_p / sorted_p.sum(), 1, generator=generator)
        return int(order[choice])
    return int(torch.multinomial(probs, 1, generator=generator))


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(getattr(model, "generation_config", None), "eos_token_id", None),
                   getattr(model.config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, list | tuple):
            ids.update(int(x) for x in source)
    return ids
