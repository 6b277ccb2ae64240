"""Weight-only int8 linear layers for serving: a quarter of fp32's bytes per weight.

Decoding one token reads every weight once, so at batch 1 an fp32 model is bound by memory bandwidth
(bench/serve_throughput.py). Each frozen linear layer keeps its weight as int8 with one scale per output
channel and multiplies with torch's own int8 weight-only kernel (`_weight_int8pack_mm`, bf16 activations: the
kernel's fp32-activation path is 10x slower). Prompts (more than one position) use the weight dequantized to
bf16 for that call instead, because the int8 kernel loses to a plain matmul on many rows. Which path a row takes
depends only on whether it is prefilling or decoding, never on what else is in the batch.

The layer stays an `nn.Linear`, so peft puts LoRA adapters around it as around any linear layer; the adapters
keep their own precision (fp32) and are added to the layer's output.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class Int8Linear(nn.Linear):
    """`nn.Linear` whose weight is int8 (symmetric, per output channel) and frozen."""

    def __init__(self, linear: nn.Linear) -> None:
        nn.Module.__init__(self)  # not nn.Linear.__init__: it would allocate a float weight first
        self.in_features, self.out_features = linear.in_features, linear.out_features
        w = linear.weight.detach().float()
        scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-12)
        q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
        self.weight = nn.Parameter(q, requires_grad=False)
        self.register_buffer("scales", scale.to(torch.bfloat16))
        self.bias = linear.bias
        if self.bias is not None:
            self.bias.requires_grad_(False)

    def dequantized(self, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        return self.weight.to(dtype) * self.scales.to(dtype)[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).to(torch.bfloat16)
        if x.dim() >= 2 and x.shape[-2] > 1:  # a prompt: many rows at once, where a bf16 matmul wins
            y = rows @ self.dequantized().t()
        else:
            y = torch._weight_int8pack_mm(rows, self.weight, self.scales)
        y = y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)
        return y + self.bias if self.bias is not None else y

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, weight=int8 per-channel"


def quantize_linears(model: Any) -> int:
    """Replace every plain `nn.Linear` of `model` (the LM head included) by an `Int8Linear`, in place.

    A head tied to the input embeddings gets an int8 copy; the embeddings themselves stay as they are.
    Returns the number of layers replaced."""
    if getattr(model.config, "tie_word_embeddings", False):
        model.config.tie_word_embeddings = False  # never re-tie the int8 head to the float embeddings
    replaced = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Linear:
                setattr(module, name, Int8Linear(child))
                replaced += 1
    return replaced


def is_quantized(model: Any) -> bool:
    return any(isinstance(m, Int8Linear) for m in model.modules())
