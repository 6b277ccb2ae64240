"""Batches of token ids padded on the right; labels padded with the ignore index."""

from __future__ import annotations

from typing import Any

import torch

from ..data.templates import IGNORE


class PadCollator:
    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        scalar_labels = not isinstance(rows[0]["labels"], list)
        labels = (torch.tensor([r["labels"] for r in rows]) if scalar_labels
                  else torch.full((len(rows), width), IGNORE, dtype=torch.long))
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n] = torch.tensor(r["input_ids"])
            mask[i, :n] = 1
            if not scalar_labels:
                labels[i, :n] = torch.tensor(r["labels"])
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def split_by_tokens(batch: dict[str, torch.Tensor], max_tokens: int) -> list[dict[str, torch.Tensor]]:
    """A batch -> consecutive pieces of at most max_tokens tokens each (padded rows x width, or packed tokens),
    each trimmed to its own width. The pieces' loss gradients, normalised by the whole batch's label count,
    add up to the whole batch's: they bound activation memory without changing the step."""
    if "cu_seq_lens_q" in batch:
        return _split_packed(batch, max_tokens)
    lengths = batch["attention_mask"].sum(1).tolist()
    pieces, start = [], 0
    while start < len(lengths):
        end, width = start + 1, lengths[start]
        while end < len(lengths) and (end + 1 - start) * max(width, lengths[end]) <= max_tokens:
            width = max(width, lengths[end])
            end += 1
        pieces.append({k: v[start:end, :width] if v.dim() == 2 else v[start:end] for k, v in batch.items()})
        start = end
    return pieces


def _split_packed(batch: dict[str, torch.Tensor], max_tokens: int) -> list[dict[str, torch.Tensor]]:
    bounds = batch["cu_seq_lens_q"].tolist()
    pieces, first = [], 0
    while first < len(bounds) - 1:
        last = first + 1
        while last < len(bounds) - 1 and bounds[last + 1] - bounds[first] <= max_tokens:
            last += 1
        a, b = bounds[first], bounds[last]
        piece = {k: v[:, a:b] for k, v in batch.items() if k != "cu_seq_lens_q"}
        piece["cu_seq_lens_q"] = batch["cu_seq_lens_q"][first:last + 1] - a
        pieces.append(piece)
        first = last
    return pieces
