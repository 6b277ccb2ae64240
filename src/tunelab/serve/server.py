"""Put the pieces together: model + adapters -> engine -> app; run it with uvicorn."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from . import request_log
from .engine import Engine, on_fresh_thread
from .models import load_base
from .routes import create_app
from .schemas import APIError
from .state import ServeSettings, State, data_dir
from .store import Store, database_url
from .ui.session import Sessions, load_secret

log = logging.getLogger("tunelab.serve")


def build(model: str | None = None, *, adapters: list[tuple[str, str]] | None = None, name: str | None = None,
          data: str | None = None, db_url: str | None = None, dtype: str | None = None, max_batch: int = 16,
          max_queue: int = 64, settings: ServeSettings | None = None, strict_adapters: bool = False,
          engine_kind: str = "torch") -> Any:
    """The FastAPI app, with the base model loaded and the adapters added. An adapter that fails to load is left
    out (state.adapter_errors says why), or with `strict_adapters` refuses the start. `engine_kind` "llama.cpp"
    decodes with llama.cpp (`dtype`: auto, f32, f16, bf16 or q8_0: the GGUF the base is served from); `dtype` None:
    the engine's default (fp32 for torch, auto for llama.cpp)."""
    from ..models.load import ModelError

    if engine_kind == "llama.cpp":
        from .llama_engine import available

        if (why := available()) is not None:
            raise ModelError(why)
    dtype = dtype or ("fp32" if engine_kind == "torch" else "auto")
    torch_dtype = dtype if engine_kind == "torch" else "fp32"  # llama.cpp's engine keeps the fp32 base beside it
    base = on_fresh_thread(load_base, model, name=name, dtype=torch_dtype)  # no torch pool left on this thread
    engine = _engine(engine_kind, base, model, dtype, max_batch=max_batch, max_queue=max_queue)
    try:
        return _app(base, engine, model, data, db_url, settings, adapters, strict_adapters)
    except BaseException:
        engine.stop()  # llama.cpp's engine: its files and memory
        raise


def _app(base: Any, engine: Engine, model: str | None, data: str | None, db_url: str | None,
         settings: ServeSettings | None, adapters: list[tuple[str, str]] | None, strict_adapters: bool) -> Any:
    from ..models.load import ModelError
    from ..models.registry import DEFAULT_MODEL

    store = Store(database_url(data_dir(data), db_url), busy_timeout_s=request_log.BUSY_S)
    state = State(base, engine, store, settings or ServeSettings())
    state.base_ref = model or DEFAULT_MODEL
    state.sessions = Sessions(state.settings.projects(), load_secret(data_dir(data)))
    if state.settings.jobs:
        from .jobs_api import JobsRuntime

        state.jobs = JobsRuntime(state, data_dir(data), db_url, state.settings.worker_jobs)
    for adapter_name, ref in adapters or []:
        try:
            state.add_adapter(adapter_name, ref)
        except APIError as exc:
            message = f"--adapter {adapter_name}={ref}: {exc.message}"
            if strict_adapters:
                raise ModelError(message) from None
            # one damaged adapter must not keep the base and the others from being served
            state.adapter_errors[adapter_name] = message
            log.error("%s; serving the other models without it (POST /v1/adapters loads it once fixed; "
                      "--strict-adapters refuses to start instead)", message)
    return create_app(state)


def _engine(kind: str, base: Any, ref: str | None, dtype: str, *, max_batch: int, max_queue: int) -> Engine:
    if kind == "torch":
        return Engine(base.model, base.tokenizer, base_name=base.name, max_batch=max_batch, max_queue=max_queue)
    import shutil
    import tempfile
    from pathlib import Path

    from .llama_engine import LlamaCppEngine, base_gguf

    workdir = Path(tempfile.mkdtemp(prefix="tunelab-llama-"))
    try:
        path = on_fresh_thread(base_gguf, ref, base.model, base.tokenizer, dtype, workdir, base.name)
        engine = LlamaCppEngine(base.model, base.tokenizer, path, base_name=base.name, max_batch=max_batch,
                                max_queue=max_queue, workdir=workdir)
        base.dtype = engine.file_type
        return engine
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)  # a written base GGUF can take GBs
        raise


class BackgroundServer:
    """uvicorn in a thread, for tests and benchmarks: `with BackgroundServer(app) as url: ...`."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                                    timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.time() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.time() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        sock = self.server.servers[0].sockets[0]
        host, port = sock.getsockname()[:2]
        url = f"http://{host}:{port}"
        state = getattr(getattr(self.server.config.app, "state", None), "tunelab", None)
        if state is not None and state.settings.url is None:  # jobs' model graders call this server
            state.settings.url = url
        return url

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def serve(app: Any, host: str, port: int) -> None:
    import gc

    import uvicorn

    # What start-up made (torch, transformers, the model: millions of objects) lives as long as the server: out of
    # the garbage collector's sight, a full collection takes ~20 ms instead of stopping every stream for 0.3-1.2 s
    # (measured under 64 streaming clients), which also kept disconnected clients' slots past a second.
    gc.collect()
    gc.freeze()
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=10)

