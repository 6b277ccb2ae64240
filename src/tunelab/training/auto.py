"""Every `auto` setting, resolved in one place from the method, the data and the model (as OpenAI's API does).

Epochs, learning rate and batch size depend on the method: preference and RL updates want gentler rates than
supervised tuning. Precision is measured on the machine (device.use_bf16). Rows scored for a generation metric
and length-grouped batches are decided here too.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from ..config import ConfigError
from ..config.schema import PAIR_METHODS, RL_METHODS
from ..device import use_bf16
from ..distributed import world_size

if TYPE_CHECKING:
    from ..config import TunelabConfig

GENERATION_ROWS = 64  # generated answers are slow on a CPU: score a sample unless eval.limit says otherwise
COMPLETIONS_PER_STEP = 8  # RL: about this many sampled answers per micro-step


@dataclass
class Hyperparams:
    epochs: int
    learning_rate: float
    batch_size: int  # rows (pairs, prompts) per micro-step
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    order: str | None = None  # how rows are drawn, when not the method's own way (a rehearsal: "sequential")
    gradient_checkpointing: bool | None = None  # train.gradient_checkpointing as resolved (recorded in resolved.json)
    compile: bool | None = None  # train.compile as resolved (supervised runs)

    def to_dict(self) -> dict[str, float | int]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def sft_epochs(n_rows: int) -> int:
    """Fewer passes for more rows: 3000 rows or more -> 1 epoch, 300 or fewer -> 10."""
    return max(1, min(10, math.ceil(3000 / max(n_rows, 1))))


def sft_learning_rate(peft_method: str, n_params: int, head: bool) -> float:
    if peft_method == "full":
        return 5e-5 if n_params < 300e6 else 2e-5
    if head:
        return 1e-3
    if n_params < 300e6:
        return 1e-3
    return 5e-4 if n_params < 1.5e9 else 2e-4


def epochs(method: str, n_rows: int) -> int:
    if method == "sft":
        return sft_epochs(n_rows)
    if method in RL_METHODS:
        return 1
    return 3 if n_rows < 300 else 1  # preference pairs: few pairs need a few passes


def learning_rate(method: str, peft_method: str, n_params: int, head: bool) -> float:
    full = peft_method == "full"
    if method == "reward":
        return 1e-5 if full else 1e-4
    if method in PAIR_METHODS:
        return 5e-6 if full else 5e-5
    if method in RL_METHODS:
        # RL updates follow the model's own samples, which drift with it: LoRA at a tenth of SFT's rate, full
        # fine-tuning at TRL's GRPO default
        return 1e-6 if full else sft_learning_rate(peft_method, n_params, head=False) / 10
    return sft_learning_rate(peft_method, n_params, head)


def batch_size(lengths: list[int], token_budget: int = 4096, cap: int = 32) -> int:
    """The largest power of two whose batch of 90th-percentile rows fits the token budget."""
    if not lengths:
        return 1
    p90 = sorted(lengths)[int(0.9 * (len(lengths) - 1))]
    bs = max(1, min(cap, token_budget // max(p90, 1)))
    return 2 ** int(math.log2(bs))


def generations(cfg: TunelabConfig) -> int:
    """Answers sampled per prompt: online DPO always samples two (the better one is preferred)."""
    return 2 if cfg.method == "online_dpo" else cfg.rl.num_generations


def rl_prompts_per_step(num_generations: int) -> int:
    return max(1, COMPLETIONS_PER_STEP // num_generations)


def hyperparams(cfg: TunelabConfig, *, n_params: int, lengths: list[int], head: bool = False) -> Hyperparams:
    """The run's epochs, learning rate, batch and step counts: the config's values, `auto` ones resolved.
    `lengths` has one entry per training row (pair, prompt): its token count, or 0 where it is not known."""
    t = cfg.train
    ep = epochs(cfg.method, len(lengths)) if t.epochs == "auto" else int(t.epochs)
    lr = (learning_rate(cfg.method, cfg.peft.method, n_params, head) if t.learning_rate == "auto"
          else float(t.learning_rate)) * t.learning_rate_multiplier
    if t.batch_size != "auto":
        bs = int(t.batch_size)
    elif cfg.method in RL_METHODS:
        bs = rl_prompts_per_step(generations(cfg))
    else:
        bs = batch_size(lengths)
    bs = _split_between_processes(bs, auto=t.batch_size == "auto", rl=cfg.method in RL_METHODS)
    per_epoch = max(1, math.ceil(len(lengths) / (bs * t.grad_accum)))
    total = t.max_steps or per_epoch * ep
    tokens = total * bs * t.grad_accum * sum(lengths) // max(len(lengths), 1)
    return Hyperparams(ep, lr, bs, per_epoch, total, math.ceil(t.warmup_ratio * total),
                       gradient_checkpointing=gradient_checkpointing(cfg),
                       compile=compile_layers(cfg, tokens=tokens, head=head) if cfg.method == "sft" else None)


def _split_between_processes(bs: int, *, auto: bool, rl: bool) -> int:
    """The global batch, split evenly between the processes (torchrun, --nproc): `auto` rounds it up to a
    multiple of their number; a set batch that does not split is an error that says what would."""
    n = world_size()
    if bs % n == 0:
        return bs
    if auto:
        return -(-bs // n) * n
    what = "prompts a step" if rl else "rows a step"
    raise ConfigError(f"train.batch_size={bs} ({what}, for all processes together) can't be split evenly between "
                      f"{n} processes: set it to a multiple of {n} (e.g. {-(-bs // n) * n}), or to auto")


def bf16(cfg: TunelabConfig) -> bool:
    """model.precision: auto measures bf16 against fp32 on this machine (device.use_bf16)."""
    return use_bf16(cfg.model.precision)


def group_by_length(cfg: TunelabConfig, packed: bool) -> bool:
    """auto: on for padded batches, off with packing (nothing to save there)."""
    g = cfg.train.group_by_length
    return g is True or (g == "auto" and not packed)


def scored_rows(cfg: TunelabConfig, classification: bool) -> int | None:
    """How many validation rows a task metric scores: eval.limit, else all for classification and
    GENERATION_ROWS for generated answers."""
    return cfg.eval.limit or (None if classification else GENERATION_ROWS)


MEMORY_MARGIN = 1.10  # as plan/estimate.py: a run fits when its estimated peak plus this margin is within the limit


def gradient_checkpointing(cfg: TunelabConfig, need_mib: float | None = None, limit_mib: float | None = None) -> bool:
    """train.gradient_checkpointing: true/false as set; auto turns it on when the memory estimate without it
    (need_mib, from plan/: the quick bound or a rehearsal) does not fit the device's limit_mib. With no estimate
    (a run started without plan.fit, a rehearsal measuring the run as configured) auto stays off."""
    setting = cfg.train.gradient_checkpointing
    if setting != "auto":
        return bool(setting)
    return need_mib is not None and limit_mib is not None and need_mib * MEMORY_MARGIN > limit_mib


COMPILE_MIN_TOKENS = 30_000  # compiling costs ~40 s cold and saves ~1.45 ms a token: paid back after ~27k tokens


def compile_layers(cfg: TunelabConfig, *, tokens: int, head: bool) -> bool:
    """train.compile: auto compiles where it was measured to pay: LoRA on packed rows (whose attention keeps one
    graph for every batch), one process on a CPU, no gradient checkpointing, and a run long enough (tokens: the
    tokens it will train on) to earn the compilation back."""
    from ..device import device
    from .compiled import cxx_compiler

    setting = cfg.train.compile
    if setting is True and not cxx_compiler():
        raise ConfigError("train.compile=true needs a C++ compiler, which torch.compile builds its CPU kernels with, "
                          "and none was found (g++, c++, clang++ or $CXX): install one (e.g. apt-get install g++), "
                          "or set train.compile: auto (it trains uncompiled where there is none)")
    if setting != "auto":
        return bool(setting)
    return (device() == "cpu" and cfg.train.packing and not head and cfg.peft.method == "lora"
            and world_size() == 1 and not gradient_checkpointing(cfg) and tokens >= COMPILE_MIN_TOKENS
            and cxx_compiler() is not None)


def max_batch_tokens(cfg: TunelabConfig, compiled: bool) -> int | None:
    """train.max_batch_tokens: auto is 512 tokens a piece, 1,024 for compiled layers (fewer, larger pieces pay
    there: each compiled call has a fixed cost; eager pieces ran as fast at 512, in less memory)."""
    setting = cfg.train.max_batch_tokens
    return (1024 if compiled else 512) if setting == "auto" else setting


def liger(cfg: TunelabConfig) -> bool:
    """train.liger: auto is on when liger-kernel is installed and the device is a CUDA GPU; true without either is
    a ConfigError that says what to install."""
    import importlib.util

    from ..config import ConfigError
    from ..device import device

    setting = cfg.train.liger
    installed = importlib.util.find_spec("liger_kernel") is not None
    if setting is False:
        return False
    if setting == "auto":
        return installed and device() == "cuda"
    if not installed:
        raise ConfigError("train.liger=true needs liger-kernel, which is not installed: pip install 'tunelab[gpu]'")
    if device() != "cuda":
        raise ConfigError("train.liger=true needs a CUDA GPU (Liger's kernels are written in Triton for GPUs), and "
                          "this machine has none: set train.liger to auto or false")
    return True


def loading(cfg: TunelabConfig) -> dict[str, Any]:
    """models.load.starting_model's options for this run: the quantized base (model.quantize) and Liger's kernels."""
    return {"quantize": cfg.model.quantize, "liger": liger(cfg)}
