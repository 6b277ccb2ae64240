from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from .base import Section

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]


class EarlyStoppingConfig(Section):
    patience: int | None = Field(None, gt=0)
    """Stop after this many evaluations without improvement in train.monitor; empty disables early stopping."""

    min_delta: float = Field(0.0, ge=0.0)
    """Smallest change in train.monitor that counts as an improvement."""


class TrainConfig(Section):
    epochs: PositiveInt | Literal["auto"] = "auto"
    """Passes over the training data; auto picks from the dataset size (fewer passes for more rows)."""

    max_steps: int | None = Field(None, gt=0)
    """Stop after this many optimizer steps (overrides epochs)."""

    learning_rate: PositiveFloat | Literal["auto"] = "auto"
    """Peak learning rate; auto picks by method (LoRA, full, classification head) and model size."""

    learning_rate_multiplier: PositiveFloat = 1.0
    """The learning rate (auto or given) times this; OpenAI's fine-tuning API calls it learning_rate_multiplier."""

    batch_size: PositiveInt | Literal["auto"] = "auto"
    """Examples per optimizer step on one device; auto picks from sequence lengths."""

    grad_accum: int = Field(1, gt=0)
    """Micro-batches accumulated per optimizer step."""

    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0)
    """Fraction of steps spent warming up the learning rate."""

    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "cosine"
    """Learning-rate schedule after warm-up."""

    weight_decay: float = Field(0.0, ge=0.0)
    """AdamW weight decay."""

    max_grad_norm: float = Field(1.0, gt=0.0)
    """Gradient clipping norm."""

    eval_every: int | None = Field(None, gt=0)
    """Evaluate on the validation split every N steps; empty means once per epoch."""

    save_every: int | None = Field(None, gt=0)
    """Save a checkpoint every N steps; empty means at every evaluation."""

    keep_checkpoints: int = Field(2, gt=0)
    """How many periodic checkpoints to keep (the best one is always kept)."""

    monitor: Literal["loss", "accuracy", "token_f1", "rouge_l", "exact_match", "numeric_accuracy"] = "loss"
    """What picks the best checkpoint and drives early stopping: validation loss, validation accuracy
    (classification), or a generation task's metric on generated answers (token_f1, rouge_l, exact_match,
    numeric_accuracy for `#### N` answers)."""

    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    """Early stopping on validation loss."""

    group_by_length: bool | Literal["auto"] = "auto"
    """Batch rows of similar length together, so padded batches waste less compute on padding. auto: on for
    padded batches, off with packing (nothing to save there, and length-sorted batches train a little worse:
    docs/benchmarks.md)."""

    seed: int = 42
    """Seed for data order, splits, initialisation and dropout: the same seed gives the same run."""

    threads: int | None = Field(None, gt=0)
    """CPU threads for torch; empty uses every core."""

    report_to: list[Literal["tensorboard", "mlflow", "wandb"]] = []
    """Extra experiment trackers (installed separately); metrics.jsonl is always written."""

    label_only_logits: bool = True
    """Compute LM-head logits only where there is a label (same loss, far less memory); off uses the plain path."""

    loss_chunk_tokens: int = Field(512, ge=0)
    """With label_only_logits: LM head and cross-entropy this many label tokens at a time, so the
    [tokens x vocabulary] logits never exist whole (same loss and gradients); 0 computes them in one piece."""

    max_batch_tokens: PositiveInt | Literal["auto"] | None = "auto"
    """Run a batch bigger than this many tokens (rows x padded length) in pieces whose gradients add up to the
    same step: activation memory stays bounded (about 1.5-2 MB per token for a 135M model) whatever the batch
    size and row lengths. auto: 512, or 1,024 with compiled layers (train.compile), whose steps measured 1.3x
    faster in the larger pieces (eager ones the same speed in either). Empty runs every batch whole."""

    frozen_bf16: bool = True
    """With bf16 and LoRA: use bf16 copies of the frozen base weights while training (autocast casts them to
    bf16 at every use anyway: same result, no repeated casts); the fp32 weights are put back after training."""

    packing: bool = True
    """Padding-free batches: each batch's rows laid end to end in one row, every row attending only to itself
    (same loss as padded batches, no compute spent on padding). Off pads rows to the batch's longest."""

    compile: bool | Literal["auto"] = "auto"
    """Compile the model's decoder layers for training steps (torch.compile): their chains of small ops (norms,
    rotary embeddings, activations, LoRA's scaling, casts) run as fused loops, 1.5-1.6x faster steps measured on
    a CPU (docs/benchmarks.md), after a one-off compilation of about 40 s (seconds once cached on the machine).
    Evaluation and generation stay uncompiled. auto: on for LoRA runs with packed rows in one process on a CPU
    when the run trains on enough tokens (30,000 or more) to earn the compilation back; resolved.json records
    what it chose."""

    gradient_checkpointing: bool | Literal["auto"] = "auto"
    """Recompute each layer's activations in the backward pass instead of keeping them: much less memory for
    long rows and large batches, about a third more time per step (the same loss and gradients). auto: on when
    tunelab's memory estimate says the run would not fit the device's memory without it (CPU RAM, or the GPU's
    memory); resolved.json records what it chose."""

    liger: bool | Literal["auto"] = "auto"
    """Liger kernels (fused RMSNorm, SwiGLU and rotary embeddings in Triton) for the model's family, patched in
    before the model loads: less GPU memory and faster steps. auto: on when liger-kernel is installed
    (`pip install 'tunelab[gpu]'`) and the device is a CUDA GPU; true refuses to start without both."""

    sharding: Literal["none", "fsdp", "fsdp_offload"] = "none"
    """With several processes (`--nproc`, torchrun): none keeps a whole copy of the model in each (DDP, the
    fastest); fsdp shards weights, gradients and optimizer state between them (FSDP, full shard), for full
    fine-tuning of a model that does not fit one device; fsdp_offload also keeps the shards in CPU memory between
    uses (slowest, least GPU memory; worth it on one GPU too: a run with one process is started under torchrun
    all the same). DeepSpeed ZeRO: through `accelerate launch` and its config (docs/distributed.md)."""

    fit: Literal["auto", "off"] = "auto"
    """Before training, make sure the run fits in memory: auto estimates it (a few real steps, only when a
    quick bound says memory may be short) and, when it would not fit, applies the first change of the ladder
    that does (smaller micro-batches, gradient checkpointing, LoRA instead of full, a smaller rank); the
    report says what was changed. A run that fits nowhere stops before it starts, with the estimate. off:
    train as configured."""

    memory_limit_mib: int | None = Field(None, gt=0)
    """Memory the run may use, in MiB, for train.fit and `tunelab estimate`; empty: what the machine has
    available (RAM on a CPU, the GPU's memory on a GPU)."""

    log_every: int = Field(1, gt=0)
    """Log training loss every N steps."""


def liger_problems(liger: bool | str) -> list[tuple[str, str]]:
    """train.liger: true needs the package (the GPU is checked when the run starts: a config may be written
    on another machine)."""
    import importlib.util

    if liger is True and importlib.util.find_spec("liger_kernel") is None:
        return [("train.liger", "train.liger=true needs liger-kernel, which is not installed: "
                 "pip install 'tunelab[gpu]' (on a machine with a CUDA GPU), or set train.liger: auto")]
    return []
