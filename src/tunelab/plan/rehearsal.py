"""A rehearsal: a few real steps of a run, on a sample of its own rows, on this machine, timed.

It is the run itself, scaled down: the same life cycle (model, base score, trainer, evaluation, checkpoint,
save, tuned score, probes, report) on the whole run's batch size, with the training sample chosen so that the
first step is the run's heaviest batch (its longest rows) and the next ones are ordinary rows drawn at random.
It runs in a process of its own (`python -m tunelab.plan.rehearsal CONFIG.json OUT.json`), so that its peak
memory is what the run's process will reach. estimate.py scales what it measured to the whole run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from ..config import TunelabConfig
from ..config.schema import PAIR_METHODS
from ..device import peak_rss_mib
from ..recipes.lifecycle import Prepared
from ..training import auto
from ..training.auto import Hyperparams
from ..training.callbacks import TokenCounter
from ..training.trl_common import pair_lengths

STEPS = 4  # the heaviest batch, then three ordinary ones: enough for a steady step time, a few seconds on a CPU


def row_length(row: Any) -> int:
    """A row's size as the run's automatic batch size counts it: tokens (SFT), a pair's rough tokens, or 0 for
    RL prompts (their cost is in the sampled answers)."""
    if hasattr(row, "input_ids"):
        return len(row.input_ids)
    if hasattr(row, "chosen"):
        return pair_lengths([row])[0]
    return 0


class StepTimer(TrainerCallback):
    """Each training step's time and tokens, each evaluation's and checkpoint's time."""

    def __init__(self, counter: TokenCounter) -> None:
        self.counter = counter
        self.steps: list[dict[str, float]] = []
        self.evals: list[dict[str, float]] = []
        self.saves: list[float] = []
        self._t = self._tok = 0.0

    def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self._t, self._tok = time.perf_counter(), self.counter.tokens

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        now = time.perf_counter()
        self.steps.append({"seconds": now - self._t, "tokens": self.counter.tokens - self._tok, "rss_mib": _rss()})
        self._t = now  # an evaluation or a checkpoint that follows is timed from here

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None,
                    **kw: Any) -> None:
        now = time.perf_counter()
        task = float((metrics or {}).get("eval_task_metric_runtime", 0.0))
        self.evals.append({"seconds": now - self._t, "task_metric_seconds": task})
        self._t = now

    def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        now = time.perf_counter()
        self.saves.append(now - self._t)
        self._t = now


def _rss() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


class MemoryWatch:
    """Each phase's resident memory where it began and at its peak (sampled every 20 ms in a thread)."""

    def __init__(self) -> None:
        self.phase = "starting"
        self.seen: dict[str, dict[str, float]] = {}
        self._stop = False
        import threading

        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def enter(self, name: str) -> None:
        self.phase = name
        now = _rss()
        got = self.seen.setdefault(name, {"start": now, "peak": now})
        got["peak"] = max(got["peak"], now)

    def _run(self) -> None:
        while not self._stop:
            got = self.seen.setdefault(self.phase, {"start": _rss(), "peak": 0.0})
            got["peak"] = max(got["peak"], _rss())
            time.sleep(0.02)

    def stop(self) -> dict[str, dict[str, float]]:
        self._stop = True
        self._thread.join()
        return {k: {kk: round(vv, 1) for kk, vv in v.items()} for k, v in self.seen.items()}


class Rehearsing:
    """The life cycle's Rehearsal: picks the sample, gives the scaled-down run the whole run's batch, records
    the phases. `full` holds what the whole run would have (rows, lengths, hyperparameters)."""

    def __init__(self, user_cfg: TunelabConfig, steps: int = STEPS) -> None:
        self.user_cfg, self.steps = user_cfg, steps
        self.marks: list[tuple[str, float]] = []
        self.full: dict[str, Any] = {}
        self.sample: dict[str, Any] = {}
        self.timer: StepTimer | None = None
        self.memory = MemoryWatch()
        self._lengths: list[int] = []
        self._auto_lengths: list[int] = []

    def callback(self, counter: TokenCounter) -> StepTimer:
        self.timer = StepTimer(counter)
        return self.timer

    def on_phase(self, name: str) -> None:
        self.marks.append((name, time.perf_counter()))
        self.memory.enter(name)

    def trim(self, prepared: Prepared) -> Prepared:
        self.on_phase("opened")
        data, cfg = prepared.data, self.user_cfg
        train, val = list(data.train), list(data.val)
        lengths = [row_length(r) for r in train]
        self._auto_lengths = list(lengths)  # what the method's recipe gives `auto` (its batch size, its epochs)
        if cfg.method in PAIR_METHODS or cfg.method == "reward":
            side = cfg.model.max_length
            if cfg.method == "reward":  # TRL leaves out pairs with an answer over max_length: the run trains fewer
                kept = [i for i, n in enumerate(lengths) if n // 2 <= side] or list(range(len(train)))
                train, lengths = [train[i] for i in kept], [lengths[i] for i in kept]
            lengths = [min(n, 2 * side) for n in lengths]  # the others truncate each side to max_length
        self._lengths = lengths  # what the run trains on, as long as it is trained: timing and the heaviest batch
        hp = auto.hyperparams(cfg, n_params=0, lengths=self._auto_lengths)
        per_step = hp.batch_size * cfg.train.grad_accum  # rows, pairs, or RL prompts (each answered G times)
        rng = random.Random(cfg.train.seed)
        by_length = sorted(range(len(train)), key=lambda i: -self._lengths[i])
        heaviest = by_length[:per_step]  # the first step: the run's longest rows, its peak memory
        rest = [i for i in range(len(train)) if i not in set(heaviest)]
        ordinary = rng.sample(rest, min(len(rest), (self.steps - 1) * per_step))
        head = cfg.task == "classification" and cfg.classification.mode == "head"
        if cfg.method == "sft" and auto.group_by_length(cfg, packed=cfg.train.packing and not head):
            ordinary.sort(key=lambda i: self._lengths[i])  # the run batches rows of similar length together
        picked = heaviest + ordinary
        val_keep = self._val_sample(val, hp.batch_size, rng)
        self.full = {"train_rows": len(train), "validation_rows": len(val), "lengths_mean": _mean(self._lengths),
                     "per_step": per_step}
        self.sample = {"train_rows": len(picked), "validation_rows": len(val_keep),
                       "ordinary_lengths_mean": _mean([self._lengths[i] for i in ordinary]),
                       "ordinary_steps": math.ceil(len(ordinary) / per_step)}
        trimmed = dataclasses.replace(data, train=[train[i] for i in picked], val=[val[i] for i in val_keep])
        return dataclasses.replace(prepared, data=trimmed)

    def _val_sample(self, val: list[Any], batch: int, rng: random.Random) -> list[int]:
        """The longest validation row (an evaluation's peak) and enough others for a batch of each kind."""
        if not val:
            return []
        lengths = [row_length(r) for r in val]
        longest = max(range(len(val)), key=lambda i: lengths[i])
        want = min(len(val), max(batch, self.user_cfg.eval.batch_size, 2))
        others = rng.sample([i for i in range(len(val)) if i != longest], want - 1)
        return [longest, *others]

    def hyperparams(self, *, n_params: int, head: bool) -> Hyperparams:
        whole = auto.hyperparams(self.user_cfg, n_params=n_params, lengths=self._auto_lengths, head=head)
        if len(self._lengths) < len(self._auto_lengths):  # TRL left pairs out: its epochs have fewer steps
            t = self.user_cfg.train
            per_epoch = max(1, math.ceil(len(self._lengths) / (whole.batch_size * t.grad_accum)))
            whole = dataclasses.replace(whole, steps_per_epoch=per_epoch,
                                        total_steps=t.max_steps or per_epoch * whole.epochs)
        self.full["hyperparams"] = whole.to_dict()
        steps = math.ceil(self.sample["train_rows"] / self.full["per_step"])
        return Hyperparams(1, whole.learning_rate, whole.batch_size, steps, steps, 0, order="sequential")


def rehearsal_config(cfg: TunelabConfig, output_dir: str, probes: bool = True) -> TunelabConfig:
    """The run's config for its rehearsal: one pass over the sample (evaluated and saved once at its end), in a
    scratch directory; scoring one batch of rows."""
    d = cfg.model_dump(mode="json")
    d.update(name="rehearsal", output_dir=output_dir)
    d["train"].update(max_steps=None, eval_every=None, save_every=None, report_to=[], fit="off")
    d["train"]["early_stopping"]["patience"] = None
    if cfg.method not in PAIR_METHODS and cfg.method != "reward":  # preference runs score every held-out pair
        d["eval"]["limit"] = cfg.eval.batch_size
    if cfg.method != "sft" or cfg.task == "classification":
        # the base model's score costs what the tuned one's does: timed once (generated answers are kept: the
        # base model's and the tuned one's can differ much in length)
        d["eval"]["compare_base"] = False
    if not probes:
        d["eval"]["probes"]["enabled"] = False  # their time is known from an earlier rehearsal
    return TunelabConfig.model_validate(d, context={"rules": False})


def _mean(xs: list[int]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def rehearse(cfg: TunelabConfig, workdir: Path, probes: bool = True) -> dict[str, Any]:
    """Run the rehearsal in this process; what it measured (times in seconds, memory in MiB)."""

    import psutil
    import torch
    from rich.console import Console

    from ..recipes.dispatch import recipe_for
    from ..recipes.lifecycle import execute

    started = psutil.Process().create_time()
    t_begin = time.perf_counter() - (time.time() - started)  # the interpreter's start, on the perf clock
    rehearsal = Rehearsing(cfg)
    small = rehearsal_config(cfg, str(workdir), probes)
    quiet = Console(file=open(workdir / "console.log", "w"), width=120)  # noqa: SIM115 (lives as long as the run)
    result = execute(small, recipe_for(small), console=quiet, rehearsal=rehearsal)
    rehearsal.on_phase("end")
    memory = rehearsal.memory.stop()
    timer = rehearsal.timer
    cuda = torch.cuda.is_available()
    out = {
        "status": result.status,
        "started": t_begin, "marks": rehearsal.marks, "full": rehearsal.full, "sample": rehearsal.sample,
        "steps": timer.steps if timer else [], "evals": timer.evals if timer else [],
        "saves": timer.saves if timer else [],
        "summary": {k: v for k, v in result.summary.items() if isinstance(v, int | float | str)},
        "peak_rss_mib": peak_rss_mib(), "memory": memory,
        "threads": torch.get_num_threads(),
    }
    if cuda:
        out |= {"gpu_allocated_mib": torch.cuda.max_memory_allocated() / 2**20,
                "gpu_reserved_mib": torch.cuda.max_memory_reserved() / 2**20}
    return out


def main(argv: list[str]) -> int:
    """CONFIG.json OUT.json [--no-probes]: rehearse the config; OUT.json gets the measurements or {"error": ...}."""
    import os
    import warnings

    from ..errors import TunelabError

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")
    cfg_file, out_file = Path(argv[0]), Path(argv[1])
    cfg = TunelabConfig.model_validate(json.loads(cfg_file.read_text()), context={"rules": False})
    try:
        got = rehearse(cfg, out_file.parent, probes="--no-probes" not in argv)
    except (TunelabError, FileNotFoundError) as exc:  # the user's to fix: said as training would say it
        got = {"error": str(exc), "user_error": True}
    except Exception as exc:
        got = {"error": f"{type(exc).__name__}: {exc}", "user_error": False}
    out_file.write_text(json.dumps(got))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
