"""LM head + cross-entropy in chunks of tokens: the [tokens x vocab] logits never exist whole.

The forward pass computes each chunk's logits, its loss and at once its gradients (softmax - one-hot), keeps
only the gradients with respect to the hidden states ([tokens x hidden], small) and drops the logits. With
49,152 vocabulary columns that is the difference between ~200 MB per 1,000 label tokens and a few MB.
"""

from __future__ import annotations

from typing import Any

import torch


def _compute_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """What autocast would run the head's matmul in here."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return dtype


def _chunk_log_probs(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """[chunk, V] log-probabilities, computed in fp32 (at least) as the plain path's cross-entropy does."""
    logits = h @ weight.t()
    if bias is not None:
        logits = logits + bias.to(logits.dtype)
    return torch.log_softmax(logits, dim=-1, dtype=torch.promote_types(logits.dtype, torch.float32))


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                labels: torch.Tensor, chunk: int, dtype: torch.dtype, w: torch.Tensor) -> torch.Tensor:
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if weight.requires_grad else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if bias is not None and bias.requires_grad else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, hidden.shape[0], chunk):
                h = hidden[start:start + chunk].to(dtype)
                y = labels[start:start + chunk]
                # log-softmax straight from the matmul's output, in fp32: one pass per row, where a separate fp32
                # copy, logsumexp and subtraction took four over the [chunk x vocab] logits
                log_probs = _chunk_log_probs(h, w, bias)
                total -= log_probs.gather(1, y[:, None]).sum()
                d = log_probs.exp_()  # softmax, in place
                d[torch.arange(len(y), device=y.device), y] -= 1.0  # d loss / d logits
                d_low = d.to(dtype)
                grad_hidden[start:start + chunk] = (d_low @ w).to(hidden.dtype)
                if grad_weight is not None:
                    grad_weight += (d_low.t() @ h).float()
                if grad_bias is not None:
                    grad_bias += d.sum(0)
        ctx.save_for_backward(grad_hidden)
        ctx.grad_weight, ctx.grad_bias = grad_weight, grad_bias
        return total

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        (grad_hidden,) = ctx.saved_tensors
        gw = None if ctx.grad_weight is None else ctx.grad_weight * grad_out
        gb = None if ctx.grad_bias is None else ctx.grad_bias * grad_out
        return grad_hidden * grad_out.to(grad_hidden.dtype), gw, gb, None, None, None, None


def _weight_in(head: torch.nn.Linear, dtype: torch.dtype) -> torch.Tensor:
    """The head's weight in the matmul's dtype. A frozen head (tied embeddings under LoRA: 49,152 x 576 here) is
    cast once and kept while it is unchanged, instead of at every step (~20 ms of a ~2 s step on a CPU)."""
    weight = head.weight
    if weight.dtype == dtype or weight.requires_grad:
        return weight.to(dtype)
    key = (weight.data_ptr(), weight._version, dtype)
    cached = head.__dict__.get("_tunelab_cast")
    if cached is None or cached[0] != key:
        cached = head.__dict__["_tunelab_cast"] = (key, weight.detach().to(dtype))
    return cached[1]


def linear_cross_entropy(hidden: torch.Tensor, head: torch.nn.Linear, labels: torch.Tensor,
                         chunk: int = 512) -> torch.Tensor:
    """Sum over tokens of cross_entropy(head(hidden), labels); hidden [N, H], labels [N]. Same value and
    gradients as the plain path, computed `chunk` tokens at a time."""
    dtype = _compute_dtype(hidden.device, head.weight.dtype)
    needs_grad = torch.is_grad_enabled() and (hidden.requires_grad or head.weight.requires_grad)
    if needs_grad:
        return _LinearCrossEntropy.apply(hidden, head.weight, head.bias, labels, chunk, dtype, _weight_in(head, dtype))
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    with torch.autocast(hidden.device.type, enabled=False):
        w = _weight_in(head, dtype)
        for start in range(0, hidden.shape[0], chunk):
            log_probs = _chunk_log_probs(hidden[start:start + chunk].to(dtype), w, head.bias)
            total -= log_probs.gather(1, labels[start:start + chunk, None]).sum()
    return total
