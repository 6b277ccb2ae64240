"""Decoder layers compiled (torch.compile, inductor) for training steps, eager everywhere else.

On a CPU an eager LoRA step spends most of its time outside the matmuls: RMSNorm, rotary embeddings, SiLU x up,
LoRA's scaling, residual adds and autocast's casts, each a pass over memory (bench/profile_lora_step.py).
Compiled, each layer's chains of such ops become a few fused loops, in the backward pass too. With packed rows the
attention keeps every shape in tensors (packing.row_layout), so one graph with dynamic sizes serves every batch and
every layer: one compilation in all, about 40 s the first time on a machine, seconds once inductor's cache has it.

Only steps that build a backward graph use the compiled layers: evaluation and generation (no gradients, a KV
cache) stay eager, so they neither trigger recompilation nor depend on it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from typing import Any

import torch


def cxx_compiler() -> str | None:
    """The C++ compiler inductor would build CPU kernels with ($CXX, else the first of g++, c++, clang++), or None."""
    return os.environ.get("CXX") or next(filter(None, map(shutil.which, ("g++", "c++", "clang++"))), None)


def _language_model(model: Any) -> Any:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def compile_for_training(model: Any) -> Callable[[], None]:
    """Compile each decoder layer of a (possibly peft-wrapped) causal LM for gradient-building calls; returns
    what puts the eager layers back."""
    import torch.fx.experimental._config as fx_config

    from .packing import ROWS

    # sizes that happen to be equal at the first trace (two attention batches of as many rows) would otherwise
    # share a symbol, and the first batch where they differ would compile again
    fx_config.use_duck_shape = False
    # a layer the compiler fails on runs eager (with a warning) rather than ending the run
    torch._dynamo.config.suppress_errors = True
    lm = _language_model(model)
    decoder = lm.get_decoder()
    layers = list(decoder.layers)
    # the embeddings' output made to need a gradient, as gradient checkpointing does: the first layer's input then
    # looks like every other layer's, and one graph serves them all (two compilations otherwise, the first layer's
    # input needing none), for one layer's input gradient computed and dropped
    hooked = not hasattr(lm, "_require_grads_hook")
    if hooked:
        lm.enable_input_require_grads()
    setattr(decoder, ROWS, True)  # packed rows' attention in padded batches: shapes a compiled graph can follow
    for layer in layers:
        eager = layer.forward
        compiled = torch.compile(eager, dynamic=True)

        def forward(*args: Any, _eager: Any = eager, _compiled: Any = compiled, **kwargs: Any) -> Any:
            return (_compiled if torch.is_grad_enabled() else _eager)(*args, **kwargs)

        layer.forward = forward  # an instance attribute: hooks, state_dict and saved adapters are unchanged

    def undo() -> None:
        if hooked:
            lm.disable_input_require_grads()
        setattr(decoder, ROWS, False)
        for layer in layers:
            layer.__dict__.pop("forward", None)

    return undo
