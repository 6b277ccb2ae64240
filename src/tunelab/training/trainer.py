"""transformers.Trainer with tunelab's loss: bf16 autocast that really applies on CPU, and LM-head
logits only at positions that carry a label (never the whole [tokens x vocab] tensor)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from transformers import Trainer

from ..data.templates import IGNORE
from .callbacks import TokenCounter


def _unwrap(model: Any) -> Any:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def supports_label_only_logits(model: Any) -> bool:
    """Plain decoder + linear head models; softcapped or scaled logits take the plain path."""
    lm = _unwrap(model)
    cfg = getattr(lm, "config", None)
    odd = any(getattr(cfg, k, None) for k in ("final_logit_softcapping", "logit_scale", "logits_scaling"))
    return hasattr(lm, "get_decoder") and lm.get_output_embeddings() is not None and not odd


def causal_lm_loss(model: Any, inputs: dict[str, torch.Tensor], num_items: Any, label_only: bool) -> torch.Tensor:
    """Sum of token cross-entropies over label positions, divided by num_items (the label tokens of
    the whole accumulated batch), so that gradient accumulation matches one big batch."""
    labels = inputs["labels"][:, 1:]
    keep = labels != IGNORE
    denom = num_items if num_items is not None else keep.sum().clamp(min=1)
    if label_only:
        lm = _unwrap(model)
        hidden = lm.get_decoder()(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                  use_cache=False).last_hidden_state  # [B, T, H]
        logits = lm.get_output_embeddings()(hidden[:, :-1][keep]).float()  # [N, V], N = label tokens
    else:
        out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
        logits = out.logits[:, :-1][keep].float()
    return F.cross_entropy(logits, labels[keep], reduction="sum") / denom


class TunelabTrainer(Trainer):
    def __init__(self, *args: Any, bf16: bool, token_level: bool, label_only_logits: bool,
                 counter: TokenCounter, task_metric: Callable[[Any], dict[str, float]] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bf16_autocast = bf16
        self.token_level = token_level
        self.label_only = label_only_logits and token_level and supports_label_only_logits(self.model)
        self.counter = counter
        self.task_metric = task_metric
        # Our loss is already normalised by the accumulated batch's label count.
        self.model_accepts_loss_kwargs = token_level

    def _autocast(self) -> Any:
        if not self.bf16_autocast:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.args.device.type, dtype=torch.bfloat16)

    def evaluation_loop(self, *args: Any, **kwargs: Any) -> Any:
        """The validation loss, plus the task metric (e.g. eval_accuracy) where the task has one, so that
        it is logged, and best-checkpoint selection and early stopping can monitor it."""
        out = super().evaluation_loop(*args, **kwargs)
        if self.task_metric is not None:
            prefix = kwargs.get("metric_key_prefix", args[4] if len(args) > 4 else "eval")
            for key, value in self.task_metric(self.model).items():
                out.metrics[f"{prefix}_{key}"] = value
        return out

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        with self._autocast():
            if self.token_level:
                loss = causal_lm_loss(model, inputs, num_items_in_batch, self.label_only)
            else:
                loss = model(**inputs).loss
        if model.training:
            self.counter.tokens += int(inputs["attention_mask"].sum())
        return (loss, {}) if return_outputs else loss
