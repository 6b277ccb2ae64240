"""transformers.Trainer with tunelab's loss: bf16 autocast that really applies on CPU, and LM-head
logits only at positions that carry a label, in chunks (never the whole [tokens x vocab] tensor)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from transformers import Trainer

from .. import distributed
from ..data.templates import IGNORE
from .chunked_ce import linear_cross_entropy
from .collate import split_by_tokens


def _unwrap(model: Any) -> Any:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def supports_label_only_logits(model: Any) -> bool:
    """Plain decoder + linear head models; softcapped or scaled logits take the plain path."""
    lm = _unwrap(model)
    cfg = getattr(lm, "config", None)
    odd = any(getattr(cfg, k, None) for k in ("final_logit_softcapping", "logit_scale", "logits_scaling"))
    return hasattr(lm, "get_decoder") and lm.get_output_embeddings() is not None and not odd


def _sharded_or_wrapped(model: Any) -> bool:
    """DDP wraps the model (`.module`); FSDP2 shards it in place, and only its own forward gathers the weights."""
    if hasattr(model, "module"):
        return True
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return False
    return isinstance(model, FSDPModule)


@contextlib.contextmanager
def _no_gradient_sync(accelerator: Any, model: Any) -> Any:
    """Backward without exchanging gradients between processes (they add up, exchanged at the next one that does):
    DDP's no_sync, or FSDP2's switch; nothing to hold back in one process."""
    if accelerator.num_processes <= 1:
        yield
    elif hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        with accelerator.no_sync(model):
            yield


def _decoder_states(model: Any, kwargs: dict[str, Any]) -> tuple[Any, torch.Tensor]:
    """The language model and its decoder's last hidden states. A model wrapped for several processes (DDP, FSDP)
    must run its own forward, which sets up the gradients' exchange: its decoder's output is caught on the way,
    and the head is asked for one position's logits only."""
    if not _sharded_or_wrapped(model):
        lm = _unwrap(model)
        return lm, lm.get_decoder()(**kwargs, use_cache=False).last_hidden_state
    lm = _unwrap(getattr(model, "module", model))
    seen: list[torch.Tensor] = []
    hook = lm.get_decoder().register_forward_hook(lambda _m, _i, out: seen.append(out.last_hidden_state))
    try:
        model(**kwargs, use_cache=False, logits_to_keep=1)
    finally:
        hook.remove()
    return lm, seen[0]


MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids", "cu_seq_lens_q")  # the last two from packing


def causal_lm_loss(model: Any, inputs: dict[str, torch.Tensor], num_items: Any, label_only: bool,
                   chunk: int = 0) -> torch.Tensor:
    """Sum of token cross-entropies over label positions, divided by num_items (the label tokens of
    the whole accumulated batch), so that gradient accumulation matches one big batch.

    label_only: LM-head logits only at label positions; chunk > 0: and those `chunk` tokens at a time."""
    labels = inputs["labels"][:, 1:]
    keep = labels != IGNORE
    denom = num_items if num_items is not None else keep.sum().clamp(min=1)
    kwargs = {k: inputs[k] for k in MODEL_INPUTS if k in inputs}
    if label_only:
        lm, hidden = _decoder_states(model, kwargs)  # [B, T, H]
        hidden, head = hidden[:, :-1][keep], lm.get_output_embeddings()  # [N, H], N = label tokens
        if chunk:
            return linear_cross_entropy(hidden, head, labels[keep], chunk) / denom
        logits = head(hidden).float()  # [N, V]
    else:
        logits = model(**kwargs, use_cache=False).logits[:, :-1][keep].float()
    return F.cross_entropy(logits, labels[keep], reduction="sum") / denom


class TunelabTrainer(Trainer):
    def __init__(self, *args: Any, bf16: bool, token_level: bool, label_only_logits: bool,
                 loss_chunk: int, max_batch_tokens: int | None,
                 task_metric: Callable[[Any], dict[str, float]] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bf16_autocast = bf16
        self.token_level = token_level
        self.label_only = label_only_logits and token_level and supports_label_only_logits(self.model)
        self.loss_chunk = loss_chunk
        self.max_batch_tokens = max_batch_tokens
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
            t0 = time.perf_counter()
            # main scores, the others take its figures: best-checkpoint and early-stopping decisions must agree
            scores = distributed.on_main(self._task_scores)
            for key, value in scores.items():
                out.metrics[f"{prefix}_{key}"] = value
            out.metrics[f"{prefix}_task_metric_runtime"] = round(time.perf_counter() - t0, 4)  # beside eval_runtime
        return out

    def _task_scores(self) -> dict[str, float]:
        assert self.task_metric is not None
        with self._autocast():  # frozen weights may be held in bf16 while training
            return self.task_metric(self.model)

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        """Length-grouped batches drawn as one process would draw the global batch: N processes then split each
        global batch between them and train the same model as one (the trainer groups by one process's batch)."""
        world = self.args.world_size
        if self.args.train_sampling_strategy != "group_by_length" or world <= 1:
            return super()._get_train_sampler(train_dataset)
        from transformers.trainer_pt_utils import LengthGroupedSampler

        data = train_dataset if train_dataset is not None else self.train_dataset
        return LengthGroupedSampler(self.args.train_batch_size * world * self.args.gradient_accumulation_steps,
                                    dataset=data, model_input_name="input_ids")

    def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
        """A batch larger than train.max_batch_tokens runs in pieces, forward and backward each, so activation
        memory stays bounded; the loss is normalised by the whole batch's label count, so the step is the same."""
        if not (self.token_level and self.max_batch_tokens and num_items_in_batch is not None):
            return super().training_step(model, inputs, num_items_in_batch)
        pieces = split_by_tokens(inputs, self.max_batch_tokens)
        loss = 0
        for i, piece in enumerate(pieces):
            # with several processes each may cut its share into a different number of pieces: gradients are
            # exchanged at the last piece's backward only, so every process makes the same collective calls
            with contextlib.nullcontext() if i == len(pieces) - 1 else _no_gradient_sync(self.accelerator, model):
                loss += super().training_step(model, piece, num_items_in_batch)
        return loss

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        with self._autocast():
            if self.token_level:
                loss = causal_lm_loss(model, inputs, num_items_in_batch, self.label_only, self.loss_chunk)
            else:
                loss = model(**inputs).loss
        if self.token_level and num_items_in_batch is not None and self.args.average_tokens_across_devices:
            # num_items_in_batch counts every process's labels and DDP averages gradients over processes: scaled
            # back, the step is the same as one process's over the global batch (as Trainer.compute_loss does)
            loss = loss * self.accelerator.num_processes
        return (loss, {}) if return_outputs else loss
