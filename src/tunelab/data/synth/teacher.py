"""The teacher: any OpenAI-compatible chat endpoint, asked through the official client, several requests at once,
every reply cached in the output directory so that a re-run or a resumed run asks nothing twice."""

from __future__ import annotations

import hashlib
import json
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import TunelabError

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"  # `tunelab serve` with its defaults
CACHE_FILE = "teacher-cache.sqlite"
Message = dict[str, str]
NO_MESSAGE = "a reply without a message (not a chat completion)"


class TeacherError(TunelabError):
    """The teacher can't be used at all (unreachable, refused the key, no such model, or every request failed);
    the message names the endpoint and what to do."""


@dataclass
class Request:
    """One chat request; `index` makes otherwise identical requests distinct (and is sent as the seed)."""

    messages: list[Message]
    temperature: float
    max_tokens: int
    index: int
    purpose: str = ""  # "qa", "utterances", "relabel", "documents": for counts only, not part of the key

    def key(self, model: str) -> str:
        """The cache key: what changes the reply (model, messages, sampling, seed index), not where it is sent."""
        body = {"model": model, "messages": self.messages, "temperature": self.temperature,
                "max_tokens": self.max_tokens, "seed": self.index}
        return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


@dataclass
class Answer:
    request: Request
    key: str
    text: str | None  # None: no reply (the request failed: see error)
    error: str = ""
    cached: bool = False


class Cache:
    """Replies by request key in SQLite, each committed as it arrives: a killed run loses only requests in flight."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, model TEXT, request TEXT, "
                         "reply TEXT, created REAL)")

    def get(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT reply FROM replies WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def put(self, key: str, model: str, request: Request, reply: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO replies VALUES (?, ?, ?, ?, ?)",
                             (key, model, json.dumps(request.messages, ensure_ascii=False), reply, time.time()))

    def models(self) -> list[str]:
        with self._lock:
            return [str(r[0]) for r in self._db.execute("SELECT DISTINCT model FROM replies")]

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM replies").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


@dataclass
class TeacherSettings:
    base_url: str = DEFAULT_BASE_URL
    model: str | None = None  # None: the first model the endpoint lists
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = 120.0  # seconds per attempt; small local teachers on a CPU are slow
    max_retries: int = 2
    concurrency: int = 4


@dataclass
class Tally:
    """What the teacher did in one run."""

    requested: int = 0
    answered: int = 0
    cache_hits: int = 0
    failed: dict[str, int] = field(default_factory=dict)  # error in words -> requests

    def to_dict(self) -> dict[str, Any]:
        return {"requested": self.requested, "answered": self.answered, "cache_hits": self.cache_hits,
                "failed": dict(self.failed)}


class Teacher:
    def __init__(self, settings: TeacherSettings, cache: Cache) -> None:
        import openai

        self.settings = settings
        self.base_url = settings.base_url.rstrip("/")
        self.cache = cache
        self.tally = Tally()
        # local servers take any key; a hosted API that needs one answers 401, explained in _describe
        key = os.environ.get(settings.api_key_env) or "unused"
        self.client = openai.OpenAI(base_url=self.base_url, api_key=key, timeout=settings.timeout,
                                    max_retries=settings.max_retries)
        self._model = settings.model

    @property
    def model(self) -> str:
        """The model asked: the one given, else the first the endpoint lists (asked once)."""
        if self._model is None:
            try:
                listed = [m.id for m in self.client.models.list().data]
            except Exception as exc:  # noqa: BLE001 - every failure becomes one message
                asked = self.cache.models()
                if len(asked) == 1:  # a re-run with the teacher gone: what is cached still costs nothing
                    self._model = asked[0]
                    return asked[0]
                msg = self._describe(exc)[1]
                raise TeacherError(f"{msg} (asked for its models, as --model was not given)") from None
            if not listed:
                raise TeacherError(f"teacher {self.base_url} lists no models: give --model")
            self._model = listed[0]
        return self._model

    def describe(self) -> dict[str, str]:
        return {"base_url": self.base_url, "model": self.model}

    def _unreachable(self) -> str:
        return (f"teacher {self.base_url} unreachable: start one with `tunelab serve` or give --base-url "
                "(any OpenAI-compatible endpoint: llama.cpp, vLLM, a hosted API)")

    def _describe(self, exc: BaseException) -> tuple[bool, str]:
        """(fatal, message): fatal errors would fail every request, so the run stops at the first."""
        import openai

        where = f"teacher {self.base_url}"
        if isinstance(exc, openai.APITimeoutError):
            return False, f"timed out after {self.settings.timeout:g} s ({self.settings.max_retries} retries)"
        if isinstance(exc, openai.APIConnectionError):
            return True, self._unreachable()
        if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
            return True, (f"{where} refused the API key (HTTP {exc.status_code}): set {self.settings.api_key_env} "
                          "or name the variable holding the key with --api-key-env")
        if isinstance(exc, openai.NotFoundError):
            return True, (f"{where} has no model {self._model!r} or no chat completions endpoint (HTTP 404): "
                          "check --model and --base-url (it usually ends in /v1)")
        if isinstance(exc, openai.BadRequestError | openai.UnprocessableEntityError):
            return True, f"{where} refused the request (HTTP {exc.status_code}): {_message(exc)}"
        if isinstance(exc, openai.APIStatusError):
            return False, f"HTTP {exc.status_code} after {self.settings.max_retries} retries: {_message(exc)}"
        return False, f"unusable response ({type(exc).__name__}: {str(exc)[:120]})"

    def _call(self, req: Request, model: str) -> str | None:
        r = self.client.chat.completions.create(model=model, messages=req.messages,  # type: ignore[arg-type]
                                                temperature=req.temperature, max_tokens=req.max_tokens,
                                                seed=req.index)
        try:  # a server may answer 200 with another shape: that's a bad reply, not a crash
            content = r.choices[0].message.content
        except (AttributeError, IndexError, TypeError):
            return None
        return content if isinstance(content, str) else None

    def ask(self, requests: Sequence[Request], on_answer: Callable[[Answer], None] | None = None) -> list[Answer]:
        """Every request's answer, in order: cached ones at once, the others `concurrency` at a time. Requests that
        time out or fail after retries come back with an error; TeacherError when the teacher can't be used."""
        model = self.model
        done = on_answer or (lambda _: None)
        out: list[Answer | None] = [None] * len(requests)
        todo: list[int] = []
        self.tally.requested += len(requests)
        for i, req in enumerate(requests):
            key = req.key(model)
            hit = self.cache.get(key)
            if hit is None:
                todo.append(i)
                continue
            out[i] = Answer(req, key, hit, cached=True)
            self.tally.answered += 1
            self.tally.cache_hits += 1
            done(out[i])
        if todo:
            self._ask_teacher(requests, todo, model, out, done)
        return [a for a in out if a is not None]

    def _ask_teacher(self, requests: Sequence[Request], todo: list[int], model: str, out: list[Answer | None],
                     done: Callable[[Answer], None]) -> None:
        # Daemon threads rather than a ThreadPoolExecutor: after Ctrl-C or an early stop, the process exits at
        # once instead of waiting (up to the timeout, per retry) for the requests still in flight.
        work: queue.Queue[int] = queue.Queue()
        results: queue.Queue[tuple[int, str | None, BaseException | None]] = queue.Queue()
        stop = threading.Event()
        for i in todo:
            work.put(i)

        def worker() -> None:
            while not stop.is_set():
                try:
                    i = work.get_nowait()
                except queue.Empty:
                    return
                try:
                    results.put((i, self._call(requests[i], model), None))
                except Exception as exc:  # noqa: BLE001 - handed to the main thread, which explains it
                    results.put((i, None, exc))

        for n in range(min(self.settings.concurrency, len(todo))):
            threading.Thread(target=worker, name=f"teacher-{n}", daemon=True).start()
        failures_in_a_row, any_reply = 0, False
        try:
            for _ in todo:
                i, text, exc = results.get()
                req = requests[i]
                key = req.key(model)
                if exc is not None:
                    fatal, error = self._describe(exc)
                    if fatal:
                        raise TeacherError(error)
                elif text is None:
                    error = NO_MESSAGE
                else:
                    self.cache.put(key, model, req, text)
                    self.tally.answered += 1
                    any_reply, failures_in_a_row = True, 0
                    out[i] = answer = Answer(req, key, text)
                    done(answer)
                    continue
                self._failed(error)
                failures_in_a_row += 1
                out[i] = answer = Answer(req, key, None, error)
                done(answer)
                # a teacher that never answers would otherwise cost len(requests) x timeout
                if not any_reply and failures_in_a_row >= max(3, self.settings.concurrency):
                    raise TeacherError(f"teacher {self.base_url} ({model}): the first {failures_in_a_row} requests "
                                       f"all failed, the last with: {error}. Check that it answers "
                                       "(`curl BASE_URL/models`), or raise --timeout for a slow one")
        finally:
            stop.set()

    def _failed(self, msg: str) -> None:
        self.tally.failed[msg] = self.tally.failed.get(msg, 0) + 1


def _message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:200]
    return str(getattr(exc, "message", exc))[:200]
