"""What every request handler shares: the settings, the loaded base and adapters, and the request log."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Request

from ..home import home
from .engine import Engine
from .metrics import Metrics
from .models import Base, adapter_source, training_prompts
from .request_log import RequestLogWriter
from .schemas import APIError
from .store import Store
from .ui.session import Sessions

log = logging.getLogger("tunelab.serve")
GENERATION_PATHS = {"/v1/chat/completions": "chat", "/v1/completions": "completions"}


DEFAULT_PROJECT = "default"


@dataclass
class ServeSettings:
    api_keys: list[str] = field(default_factory=list)  # KEY (project "default") or PROJECT:KEY
    admin_keys: list[str] = field(default_factory=list)  # for loading/unloading adapters; default: api_keys
    log_content: bool = False
    max_body_bytes: int = 2_000_000
    max_file_bytes: int = 512 * 1024 * 1024  # uploads to /v1/files
    default_max_tokens: int = 256
    jobs: bool = True  # the files and fine_tuning.jobs API
    worker_jobs: int = 1  # jobs this server trains at once; 0: none (workers run elsewhere)
    job_processes: int = 1  # training processes each of those jobs runs in (tunelab train --nproc)
    python_graders: bool = True  # user code run by python graders (a subprocess with limits, not a sandbox)
    url: str | None = None  # where this server answers (set by `tunelab serve`): jobs' graders call its models

    def projects(self) -> dict[str, str]:
        """key -> the project it belongs to."""
        out = {}
        for entry in self.api_keys:
            project, sep, key = entry.partition(":")
            out[key if sep and project and key else entry] = project if sep and project and key else DEFAULT_PROJECT
        return out


class State:
    """Everything a request handler needs, in one place."""

    def __init__(self, base: Base, engine: Engine, store: Store, settings: ServeSettings) -> None:
        self.base, self.engine, self.store, self.settings = base, engine, store, settings
        self.metrics = Metrics(engine)
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="tunelab-log")  # one writer: FIFO, no lock fights
        self.request_log = RequestLogWriter(store, self.writer, engine.prompt_embedding, self.metrics.registry)
        self.adapter_errors: dict[str, str] = {}  # --adapter that failed to load at start-up -> why
        self.adapter_lock = threading.Lock()
        self.started = int(time.time())
        self.owners: dict[str, str] = {}  # fine-tuned model -> the project that owns it; other models are shared
        self.base_ref: str | None = None  # the model reference the base was loaded from (jobs train on it)
        self.jobs: Any = None  # JobsRuntime when the jobs API is on
        self.sessions: Sessions | None = None  # the web UI's sign-ins

    def owner(self, name: str) -> str | None:
        """The project a fine-tuned model belongs to (from its ft:<base>:<project>:... name when it is not loaded);
        None for a shared model (the base, an --adapter)."""
        if name in self.owners:
            return self.owners[name]
        parts = name.split(":")
        return parts[2] if name.startswith("ft:") and len(parts) >= 5 else None

    def visible(self, name: str, project: str) -> bool:
        return name in self.engine.model_names and self.owners.get(name, project) == project

    def add_adapter(self, name: str, ref: str, owner: str | None = None) -> dict[str, Any]:
        """Load an adapter (blocking: call from a worker thread) and profile its training data afterwards;
        `owner`: the only project that sees it (a fine-tuned model), else every key sees it."""
        with self.adapter_lock:
            if name in self.engine.model_names:
                raise APIError(409, f"a model named {name!r} is already loaded; DELETE /v1/adapters/{name} first",
                               param="name", code="model_exists")
            try:
                src = adapter_source(ref, self.base)
                self.engine.add_adapter(name, src.path, src.info())
            except ValueError as exc:
                if "still finishing" in str(exc):
                    raise APIError(409, str(exc), param="name", code="model_exists") from None
                raise APIError(400, str(exc), param="path", code="invalid_adapter") from None
            except Exception as exc:  # e.g. an adapter made for another model: shapes don't fit
                raise APIError(400, f"{ref}: can't load this adapter onto {self.base.name}: {exc}", param="path",
                               code="invalid_adapter") from None
        if owner is not None:
            self.owners[name] = owner
        self.adapter_errors.pop(name, None)
        self.metrics.adapter.labels(name).set(1)
        threading.Thread(target=self._profile, args=(name, src), daemon=True).start()
        return self.model_card(name)

    def _profile(self, name: str, src: Any) -> None:
        try:
            prompts = training_prompts(src, self.base.tokenizer)
            if prompts:
                self.store.save_profile(name, str(src.run or src.path), [len(p) for p in prompts],
                                        [self.engine.prompt_embedding(p) for p in prompts])
        except Exception as exc:  # drift checks go without a profile; serving goes on
            log.warning("could not profile the training data of adapter %s: %s", name, exc)

    def remove_adapter(self, name: str) -> None:
        if name == self.base.name:
            raise APIError(400, "the base model can't be removed", param="name")
        try:
            self.engine.remove_adapter(name)
        except KeyError:
            raise APIError(404, f"no adapter named {name!r}", param="name", code="model_not_found") from None
        self.owners.pop(name, None)
        self.metrics.adapter.remove(name)

    def model_card(self, name: str) -> dict[str, Any]:
        card = {"id": name, "object": "model", "created": self.started, "owned_by": self.owners.get(name, "tunelab"),
                # the base's weights as served: answers differ from fp32's in bf16, int8 and llama.cpp's quantized files
                "dtype": self.base.dtype, "engine": self.engine.name}
        if name in self.engine.adapters:
            card["parent"] = self.base.name
            card["source"] = self.engine.adapters[name].get("source")
            if self.engine.adapters[name].get("caveat"):  # trained on medical or legal data: its limits
                card["caveat"] = self.engine.adapters[name]["caveat"]
        return card

    def models_for(self, project: str) -> list[str]:
        return [n for n in self.engine.model_names if self.visible(n, project)]

    def resolve_model(self, name: str, project: str = DEFAULT_PROJECT) -> str | None:
        """The adapter to use for a requested model name (None: the base). A checkpoint of the project's own
        fine-tuned model (<model>:ckpt-step-N) is loaded the first time it is asked for (blocking: call from a
        worker thread)."""
        if name == self.base.name:
            return None
        if name not in self.engine.adapters and self.jobs is not None:
            path = self.jobs.service.checkpoint_path(project, name)
            if path is not None:
                with contextlib.suppress(APIError):  # loaded meanwhile by another request
                    self.add_adapter(name, str(path), owner=project)
        if name in self.engine.adapters and self.visible(name, project):
            return name
        # why stays in the server's log (it names server paths); the client learns only that it failed to load
        failed = (" (it failed to load when the server started: its operator can see why in the server's log)"
                  if name in self.adapter_errors else "")
        raise APIError(404, f"The model '{name}' does not exist{failed}. Loaded: {', '.join(self.models_for(project))}",
                       param="model", code="model_not_found")

    def record_failure(self, request: Request, status: int, error: str) -> None:
        """Requests refused before generation (bad parameters, unknown model, auth) are logged too."""
        endpoint = GENERATION_PATHS.get(request.url.path)
        project = getattr(request.state, "project", None)  # None: refused before its key was checked
        if endpoint is None or status == 401 or (project is None and self.settings.api_keys):
            return  # unauthenticated callers don't get to write to the log
        model = getattr(request.state, "model", None) or "unknown"
        # labels only for models that exist: clients can't grow the metrics without bound
        self.metrics.observe(model if model in self.engine.model_names else "unknown", endpoint, status)
        fields = dict(id="err-" + uuid.uuid4().hex, created=time.time(), endpoint=endpoint, model=model,
                      status=status, error=error[:2000], project=project or DEFAULT_PROJECT)
        self.log_request(fields)

    def log_request(self, fields: dict[str, Any], prompt: list[int] | None = None) -> None:
        """Hand a request-log row to the single writer thread, which also embeds `prompt` if given; a database
        that can't take it never fails the request (serve/request_log.py)."""
        self.request_log.submit(fields, prompt)


def data_dir(path: str | None) -> Path:
    """Where the request log lives: `path`, or `serve/` under tunelab's home; created if missing."""
    d = Path(path).expanduser() if path else home() / "serve"
    d.mkdir(parents=True, exist_ok=True)
    return d
