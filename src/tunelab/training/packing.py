"""Padding-free batches: a batch's rows laid end to end in one row, each attending only to itself.

transformers' sdpa path turns packed position_ids into a block-diagonal mask over the whole packed row, which
costs attention over every pair of tokens in it (measured 0.3-0.7x the padded speed on a CPU). The attention
registered here instead runs causal attention on each row's own slice, so the work is what the rows need and
the result is what each row gives alone.

On a CUDA GPU the packed row goes to a varlen kernel instead, picked by what is installed (packed_attention):
flash_attention_2 (the flash-attn package) gets each row's boundaries, FlexAttention (torch >= 2.5) a document
block mask built from the rows' positions; without either, the per-row attention here runs there too.
"""

from __future__ import annotations

from typing import Any

import torch

from ..data.templates import IGNORE

VARLEN = "tunelab_varlen"


EAGER_MAX_LEN = 512  # rows up to this long: plain matmul attention, measured ~1.2x faster than sdpa here


def _causal_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      scaling: float | None) -> torch.Tensor:
    """Causal attention of short rows of one length by matmuls: [rows, heads, T, d] -> [rows, T, heads, d]. On a
    CPU, sdpa's flash kernel spends most of its backward pass on bookkeeping at these lengths; for long rows its
    memory saving matters more (this keeps [rows, heads, T, T] probabilities for the backward pass).

    The query heads that share a key/value head (grouped-query attention) go into one matmul as one longer query
    instead of repeating the keys and values for each, and softmax reads the bf16 scores and computes in fp32 without
    a separate fp32 copy (forward and backward 1.18x faster eager, the same compiled: bench/attention_cpu.py)."""
    rows, heads, t, d = query.shape
    groups = key.shape[1]
    query = query.reshape(rows, groups, heads // groups * t, d)  # q head j reads kv head j // (heads // groups)
    scores = (query @ key.transpose(-1, -2)) * (scaling if scaling is not None else d ** -0.5)
    position = torch.arange(t, device=query.device)
    future = position.repeat(heads // groups)[:, None] < position[None, :]
    at_least_fp32 = torch.promote_types(scores.dtype, torch.float32)
    probs = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1, dtype=at_least_fp32).to(value.dtype)
    return (probs @ value).reshape(rows, heads, t, d).transpose(1, 2)


ROWS = "tunelab_rows"  # the decoder's kwarg carrying row_layout's tensors to every layer's attention


def row_layout(cu: torch.Tensor) -> dict[str, Any] | None:
    """Index tensors that lay a packed row's rows out as padded batches and back, computed once per forward pass
    (not in every layer). The rows, shortest first, go into two batches split where the padded attention is
    smallest, so that short rows do not pay for the longest. Always two batches of at least two rows (a batch
    short of rows repeats one, whose copy nothing reads): a compiled layer then meets one shape of graph and
    no size-1 dimension, and compiles once. `gather`: per batch [rows, longest] each slot's packed position (a
    row's pad slots repeat its last token, which causal masking keeps out of its real tokens' attention);
    `scatter` [T]: each packed token's slot in the batches laid end to end. None when a row is too long for
    matmul attention (those rows go through sdpa)."""
    device, cu = cu.device, cu.cpu()  # index arithmetic on the CPU, the results moved once
    lengths = (cu[1:] - cu[:-1]).tolist()
    if max(lengths) > EAGER_MAX_LEN:
        return None
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    n = len(order)
    split = min(range(1, n), key=lambda k: k * lengths[order[k - 1]] ** 2 + (n - k) * lengths[order[-1]] ** 2,
                default=1)
    gather, scatter, offset, placed = [], torch.empty(int(cu[-1]), dtype=torch.long), 0, set()
    for group in (order[:split], order[split:] or order):
        group = group if len(group) > 1 else group * 2
        longest = lengths[group[-1]]
        starts, lens = cu[group], torch.tensor([lengths[r] for r in group])
        slots = torch.arange(longest)
        gather.append((starts[:, None] + torch.minimum(slots, lens[:, None] - 1)).to(device))
        for i, r in enumerate(group):
            if r not in placed:
                placed.add(r)
                scatter[int(cu[r]):int(cu[r + 1])] = torch.arange(lengths[r]) + offset + i * longest
        offset += len(group) * longest
    return {"gather": gather, "scatter": scatter.to(device)}


def _rows_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, rows: dict[str, Any],
                    scaling: float | None) -> torch.Tensor:
    """Causal attention of every row of a packed row at once, in row_layout's padded batches: [1, heads, T, d] ->
    [1, T, heads, d]. No per-row Python loop, and every shape comes from tensors, so a compiled decoder layer keeps
    attention in its graph whatever the batch's row lengths."""
    outs = []
    for gather in rows["gather"]:
        def padded(x: torch.Tensor, gather: torch.Tensor = gather) -> torch.Tensor:  # -> [rows, h, longest, d]
            return x[0].index_select(1, gather.reshape(-1)).unflatten(1, gather.shape).transpose(0, 1)

        outs.append(_causal_attention(padded(query), padded(key), padded(value), scaling).flatten(0, 1))
    return torch.cat(outs).index_select(0, rows["scatter"]).unsqueeze(0)


def _varlen_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                      **kwargs: Any) -> tuple[torch.Tensor, None]:
    """query/key/value [1, heads, T, head_dim]; cu_seq_lens_q [rows + 1] marks where each row starts."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    cu = kwargs.get("cu_seq_lens_q")
    if cu is None:  # an ordinary batch (evaluation, generation): plain sdpa
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    rows = kwargs.get(ROWS)
    if rows is not None and not (dropout and module.training):
        return _rows_attention(query, key, value, rows, scaling), None
    bounds = cu.tolist()
    parts = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        q, k, v = query[:, :, a:b], key[:, :, a:b], value[:, :, a:b]
        if b - a <= EAGER_MAX_LEN and not (dropout and module.training):
            parts.append(_causal_attention(q, k, v, scaling))
        else:
            parts.append(sdpa_attention_forward(module, q, k, v, None, dropout=dropout, scaling=scaling,
                                                is_causal=True)[0])
    return torch.cat(parts, dim=1), None  # [1, T, heads, head_dim]


def register_varlen_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(VARLEN, _varlen_attention)
    AttentionMaskInterface.register(VARLEN, sdpa_mask)


FLASH, FLEX = "flash_attention_2", "flex_attention"


def packed_attention(device: str, *, flash_attn: bool, flex: bool) -> str:
    """The attention that keeps packed rows apart, for a device and what is installed: on CUDA flash-attn's varlen
    kernel, else FlexAttention's document mask, else the per-row attention here; on a CPU always the per-row
    attention (FlexAttention has no backward pass on a CPU, and the per-row matmuls measured fastest there)."""
    if device != "cuda":
        return VARLEN
    return FLASH if flash_attn else FLEX if flex else VARLEN


def available_packed_attention() -> str:
    """packed_attention for this machine."""
    from transformers.utils import is_flash_attn_2_available, is_torch_flex_attn_available

    from ..device import device

    return packed_attention(device(), flash_attn=is_flash_attn_2_available(), flex=is_torch_flex_attn_available())


def _packed_kwargs(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict]:
    """Before the decoder runs a packed batch (cu_seq_lens_q from PackCollator): no padding mask, so that
    transformers builds the mask from the rows' reset positions (FlexAttention: a document block mask), and
    flash-attn's varlen boundaries and longest row given once instead of found again in every layer; the per-row
    attention here gets the rows' padded layout, also once, when the layers are compiled (training.compiled)."""
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None:
        return args, kwargs
    if module.config._attn_implementation == VARLEN:  # the mask goes unused: rows are kept apart by row_layout
        # eager, the row-by-row loop measured faster (no padding); compiled layers need every shape in tensors
        rows = row_layout(cu) if getattr(module, ROWS, False) else None
        return args, kwargs if rows is None else dict(kwargs, **{ROWS: rows})
    kwargs = dict(kwargs, attention_mask=None)
    if module.config._attn_implementation == FLASH:
        longest = int((cu[1:] - cu[:-1]).max())
        cu = cu.to(torch.int32)
        kwargs.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=longest, max_length_k=longest)
    return args, kwargs


def use_varlen_attention(model: Any, implementation: str | None = None) -> str:
    """Switch a (possibly peft-wrapped) causal LM to an attention that keeps packed rows apart (implementation,
    or this machine's available_packed_attention); batches without row boundaries (evaluation, generation)
    attend as usual. Returns the implementation."""
    impl = implementation or available_packed_attention()
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    if impl == VARLEN:
        register_varlen_attention()
    lm.set_attn_implementation(impl)
    decoder = lm.get_decoder()
    if not getattr(decoder, "_tunelab_packed_hook", False):
        decoder.register_forward_pre_hook(_packed_kwargs, with_kwargs=True)
        decoder._tunelab_packed_hook = True
    return impl


class PackCollator:
    """Rows -> one row [1, sum of lengths] with per-row positions and boundaries. A row's first token gets no
    label: in a padded batch nothing predicts it, and here it would be predicted from the previous row."""

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        bounds = [0]
        for r in rows:
            n = len(r["input_ids"])
            ids += r["input_ids"]
            labels += [IGNORE] + list(r["labels"][1:])
            positions += range(n)
            bounds.append(bounds[-1] + n)
        return {"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels]),
                "attention_mask": torch.ones(1, len(ids), dtype=torch.long), "position_ids": torch.tensor([positions]),
                "cu_seq_lens_q": torch.tensor(bounds)}
