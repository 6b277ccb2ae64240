"""Config sections -> the objects the trainer needs (peft config, TrainingArguments, callbacks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import distributed
from ..config import TunelabConfig
from . import auto
from .auto import Hyperparams

# non-reentrant: works with frozen inputs (LoRA) without forcing input gradients
CHECKPOINTING_KWARGS = {"use_reentrant": False}


def peft_config(cfg: TunelabConfig, task_type: str) -> Any:
    from peft import LoraConfig

    p = cfg.peft
    return LoraConfig(r=p.r, lora_alpha=p.alpha, lora_dropout=p.dropout, target_modules=p.target_modules,
                      use_dora=p.method == "dora", task_type=task_type)


def wrap_model(model: Any, cfg: TunelabConfig, task_type: str) -> Any:
    if cfg.peft.method == "full":
        model.requires_grad_(True)
        return model
    from peft import get_peft_model, prepare_model_for_kbit_training

    if getattr(model, "is_quantized", False):  # QLoRA: norms and embeddings in fp32, input grads for checkpointing
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=auto.gradient_checkpointing(cfg),
                                                gradient_checkpointing_kwargs=CHECKPOINTING_KWARGS)
    return get_peft_model(model, peft_config(cfg, task_type))


def training_arguments(cfg: TunelabConfig, hp: Hyperparams, checkpoints: Path, has_val: bool, packed: bool) -> Any:
    from transformers import TrainingArguments

    return TrainingArguments(**training_kwargs(cfg, hp, checkpoints, has_val, packed))


def training_kwargs(cfg: TunelabConfig, hp: Hyperparams, checkpoints: Path, has_val: bool,
                    packed: bool) -> dict[str, Any]:
    """The TrainingArguments every recipe shares (TRL's configs extend TrainingArguments)."""
    import torch

    t = cfg.train
    every = "steps" if t.eval_every else "epoch"
    kw: dict[str, Any] = {}
    # said either way: TRL's configs default to checkpointing on, which recomputes every layer in the backward
    # pass and, in online DPO, turns the KV cache off while sampling (measured 35x slower sampling)
    kw["gradient_checkpointing"] = auto.gradient_checkpointing(cfg)
    if kw["gradient_checkpointing"]:
        kw["gradient_checkpointing_kwargs"] = CHECKPOINTING_KWARGS
    if t.sharding != "none":  # FSDP2 through accelerate: each transformer layer a shard unit
        kw.update(fsdp=True, fsdp_config={"version": 2, "cpu_offload": t.sharding == "fsdp_offload",
                                          "state_dict_type": "FULL_STATE_DICT"})
    if has_val:
        kw.update(eval_strategy=every, save_strategy=every, load_best_model_at_end=True,
                  metric_for_best_model=f"eval_{t.monitor}", greater_is_better=t.monitor != "loss")
        if t.eval_every:  # save_every is a multiple of eval_every (checked with the config)
            kw.update(eval_steps=t.eval_every, save_steps=t.save_every or t.eval_every)
    else:
        kw.update(eval_strategy="no", save_strategy="steps" if t.save_every else "epoch")
        if t.save_every:
            kw.update(save_steps=t.save_every)
    return dict(
        output_dir=str(checkpoints),
        # the batch is the global one: N processes split it, and train the same model as one (auto.hyperparams
        # made it a multiple of N)
        per_device_train_batch_size=hp.batch_size // distributed.world_size(),
        per_device_eval_batch_size=hp.batch_size // distributed.world_size(),
        gradient_accumulation_steps=t.grad_accum,
        num_train_epochs=hp.epochs,
        max_steps=t.max_steps or -1,
        learning_rate=hp.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=hp.warmup_steps,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        logging_steps=t.log_every,
        logging_first_step=True,
        save_total_limit=t.keep_checkpoints,
        seed=t.seed,
        data_seed=t.seed,
        report_to=list(t.report_to) or "none",
        disable_tqdm=True,
        prediction_loss_only=True,
        remove_unused_columns=False,
        train_sampling_strategy=hp.order or ("group_by_length" if auto.group_by_length(cfg, packed) else "random"),
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        include_num_input_tokens_seen="non_padding",  # summed over processes: the run's tokens/s (SeenTokens)
        ddp_find_unused_parameters=False,  # every trainable weight takes part in each step: no graph search
        **kw,
    )
