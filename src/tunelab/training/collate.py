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
