"""llama.cpp behind the same API (`tunelab serve --engine llama.cpp`): the fastest single stream on a CPU.

llama.cpp (through llama-cpp-python, an optional install) runs the base as a GGUF file, quantized weights and fused
kernels, and each adapter unmerged through its runtime LoRA (the PEFT adapter written as a GGUF LoRA at load). It
decodes one sequence at a time: requests wait their turn, so it suits one or a few clients, where the torch engine's
batches don't pay; under many concurrent clients the torch engine's batched throughput is higher.

Everything around the model is the torch engine's: the queue, the rows, sampling from the logits (the same seeds
give the same draws from the same logits), streaming, stop strings, cancellation, metrics. Only the forward pass and
the adapters differ. A new row reuses the KV cache of the prompt prefix it shares with the previous row (a system
prompt, a conversation's history) when both use the same adapter.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import torch

from .engine import Engine, _Row

# GGUF file types as /v1/models names them (gguf.LlamaFileType names, lower-cased, without MOSTLY_)
_FILE_TYPE_NAMES = {"ALL_F32": "f32", "MOSTLY_F16": "f16", "MOSTLY_BF16": "bf16"}


def available() -> str | None:
    """None when llama-cpp-python can be imported, else what to do."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return ("--engine llama.cpp needs llama-cpp-python, which is not installed: pip install llama-cpp-python "
                "(a native build of a few minutes; docs/install.md says which build flags to use)")
    except OSError as exc:  # the package is there but its shared library doesn't load
        return f"llama-cpp-python is installed but its library doesn't load ({exc}); reinstall it"
    return None


def file_type(path: Path) -> str:
    """The GGUF's weight type as a short name: q4_1, q8_0, f16, ..."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    field = reader.get_field(gguf.Keys.General.FILE_TYPE)
    if field is None:
        return "gguf"
    name = gguf.LlamaFileType(int(field.contents())).name
    return _FILE_TYPE_NAMES.get(name, name.removeprefix("MOSTLY_").lower())


def base_gguf(ref: str | None, model: Any, tokenizer: Any, dtype: str, workdir: Path, name: str) -> Path:
    """The GGUF file llama.cpp serves the base from: the model's own file (`auto` for the default model or a .gguf
    reference), else the loaded base written at `dtype` (f16 for `auto`) into `workdir`."""
    from ..export.gguf import ARCHITECTURES, write_gguf
    from ..models.load import ModelError
    from ..models.registry import ALIASES, DEFAULT_MODEL

    if dtype == "auto":
        ref = ref or DEFAULT_MODEL
        if ref in ALIASES:
            return ALIASES[ref].path()
        if ref.endswith(".gguf") and Path(ref).expanduser().is_file():
            return Path(ref).expanduser()
        dtype = "f16"
    arch = ARCHITECTURES.get(model.config.model_type)
    if arch is None:
        raise ModelError(f"llama.cpp can't serve a {model.config.model_type!r} model through tunelab (GGUF export "
                         f"supports {', '.join(ARCHITECTURES)}); serve it with --engine torch")
    path = workdir / f"base.{dtype}.gguf"
    write_gguf(model, tokenizer, path, ftype=dtype, arch=arch, name=name)
    return path


class LlamaCppEngine(Engine):
    """The torch engine's queue and streaming around llama.cpp's forward pass, one sequence at a time."""

    name = "llama.cpp"
    rows_at_once = 1  # type: ignore[assignment]  # one sequence at a time
    MAX_CONTEXT = 8192  # llama.cpp allocates the KV cache for all of it up front: a 128k-context model would take GBs

    def __init__(self, model: Any, tokenizer: Any, gguf_path: Path, *, base_name: str, max_queue: int = 64,
                 max_batch: int = 16, threads: int | None = None, workdir: Path | None = None) -> None:
        # `model` (the torch base, fp32) stays for what needs its weights beside decoding: prompt embeddings for
        # drift monitoring and the shapes an adapter is checked against
        self.gguf_path = gguf_path
        self.threads = threads or torch.get_num_threads()
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="tunelab-llama-"))
        self._llm: Any = None
        self.file_type = file_type(gguf_path)  # q4_1, f16, ...: what /v1/models shows as the base's dtype
        self._loras: dict[str, tuple[Any, Path]] = {}  # adapter name -> (llama_adapter_lora_p, its GGUF in workdir)
        self._active: str | None = None  # the adapter set on the context (None: the base)
        self._current: _Row | None = None  # the row whose tokens the context holds
        super().__init__(model, tokenizer, base_name=base_name, max_batch=max_batch, max_queue=max_queue,
                         batch_wait_s=0.0)

    def _open(self) -> None:
        self._owned(self._load)

    def _load(self) -> None:
        import llama_cpp
        from llama_cpp import Llama

        from ..models.load import ModelError

        # an f32 file is asked for exact answers: its KV cache in f32 too (llama.cpp's default f16 moves logits ~1e-2)
        kv = {"type_k": llama_cpp.GGML_TYPE_F32, "type_v": llama_cpp.GGML_TYPE_F32} \
            if self.file_type == "f32" else {}
        try:
            self._llm = Llama(model_path=str(self.gguf_path), n_ctx=min(self.max_context, self.MAX_CONTEXT),
                              n_threads=self.threads, n_threads_batch=self.threads, n_batch=512, logits_all=False,
                              verbose=False, **kv)
        except ValueError as exc:
            raise ModelError(f"llama.cpp can't load {self.gguf_path}: {exc}") from None
        vocab = self.model.get_input_embeddings().weight.shape[0]
        if self._llm.n_vocab() != vocab:
            raise ModelError(f"{self.gguf_path}: its vocabulary has {self._llm.n_vocab()} tokens and the model's "
                             f"tokenizer {vocab}: not the same model")
        self.max_context = min(self.max_context, self._llm.n_ctx())

    def stop(self) -> None:
        super().stop()
        if self._thread is not None and self._thread.is_alive():
            return  # still inside a long llama.cpp call: freeing its memory under it would crash the process
        if self._llm is not None:
            import llama_cpp

            self._set_adapter(None)
            for lora, _ in self._loras.values():
                llama_cpp.llama_adapter_lora_free(lora)
            self._loras.clear()
            self._llm.close()
            self._llm = None
        shutil.rmtree(self.workdir, ignore_errors=True)

    # ---- adapters --------------------------------------------------------------------------------
    def _add_adapter(self, name: str, path: Path, info: dict[str, Any]) -> None:
        import llama_cpp

        from ..export.gguf_lora import write_lora_gguf

        with self._model_lock:
            self._check_new_name(name)
            file = self.workdir / f"lora-{uuid.uuid4().hex}.gguf"
            try:
                write_lora_gguf(path, self.model.config, file)
                lora = llama_cpp.llama_adapter_lora_init(self._llm.model, str(file).encode())
            except Exception:
                file.unlink(missing_ok=True)
                raise
            if not lora:
                file.unlink(missing_ok=True)
                raise ValueError(f"{path}: llama.cpp refused the adapter (made for another base model?)")
            self._loras[name] = (lora, file)
            self.adapters[name] = info | {"solo": False}

    def _drop_removed(self) -> None:
        import llama_cpp

        ready = self._removable()
        if not ready:
            return
        with self._model_lock:
            for name in ready:
                if self._active == name:
                    self._set_adapter(None)
                if name in self._loras:
                    lora, file = self._loras.pop(name)
                    llama_cpp.llama_adapter_lora_free(lora)
                    file.unlink(missing_ok=True)
        with self._cv:
            self._removing -= ready

    def _set_adapter(self, name: str | None) -> None:
        """Put `name`'s LoRA (or none) on the context; the KV cache computed under another one is dropped."""
        import ctypes

        import llama_cpp

        if name == self._active:
            return
        if name is None:
            failed = llama_cpp.llama_set_adapters_lora(self._llm.ctx, None, 0, None)
        else:
            adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(self._loras[name][0])
            failed = llama_cpp.llama_set_adapters_lora(self._llm.ctx, adapters, 1, (ctypes.c_float * 1)(1.0))
        if failed:
            raise RuntimeError(f"llama.cpp could not switch to adapter {name or self.base_name!r}")
        self._active = name
        self._llm.n_tokens = 0

    # ---- the loop --------------------------------------------------------------------------------
    def _step(self) -> None:
        if self._removing:
            self._drop_removed()
        with self._cv:  # one request at a time: its rows run one after another
            admitted = self._admit_one() if not self._rows else []
        with self._model_lock:
            self._drop_cancelled()
            self._rows.extend(admitted)
            row = next((r for r in self._rows if not r.done), None)
            if row is None:
                return
            try:
                logits = self._next_logits(row)
            except Exception as exc:  # the request fails (all its rows); the context starts afresh for the next
                self._current, self._llm.n_tokens = None, 0
                self._fail(self._rows, exc)
                self._retire()
                return
            self._take([row], logits[None])

    def _admit_one(self) -> list[_Row]:
        while self._waiting:
            req = self._waiting.popleft()
            if not req.cancelled:
                return self._rows_of(req)
        return []

    def _next_logits(self, row: _Row) -> torch.Tensor:
        import llama_cpp
        import numpy as np

        llm = self._llm
        if row is not self._current:  # a new row: its prompt, after the prefix the context already holds
            self._set_adapter(row.req.adapter)
            # at least one prompt token is fed: it gives the logits
            prefix = llm.longest_token_prefix(llm.input_ids[:llm.n_tokens].tolist(), row.prompt[:-1])
            llm.n_tokens = prefix
            self._current = row
            llm.eval(row.prompt[prefix:])
        else:
            llm.eval(row.ids[-1:])
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))
        return torch.from_numpy(logits.copy())

    def _retire(self) -> None:
        self._rows = [r for r in self._rows if not r.done]
