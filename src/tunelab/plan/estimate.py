"""`tunelab estimate`: how much memory and time a run will take, from a rehearsal on this machine and the run's
own rows (rehearsal.py), scaled to the whole run: every training step, every evaluation and checkpoint, the
base and tuned scoring passes, the probes and the report.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
import threading
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import distributed
from ..config import TunelabConfig
from ..config.schema import PAIR_METHODS, REFERENCE_FREE, RL_METHODS
from ..errors import TunelabError
from ..training import auto

MEMORY_MARGIN = 1.10  # a run is said to fit when its measured peak, plus this margin, is within the limit


CANCEL: ContextVar[threading.Event | None] = ContextVar("tunelab_rehearsal_cancel", default=None)
"""Set around a call (asyncio.to_thread carries it into the thread): the rehearsal stops when the event is set,
e.g. a server's request whose client went away, or a server shutting down."""


class EstimateCancelled(Exception):
    """The rehearsal was stopped by its CANCEL event."""


class EstimateError(TunelabError):
    """The rehearsal could not run (the message says why, as training would)."""


@dataclass
class Estimate:
    peak_memory_mib: float
    total_seconds: float
    limit_mib: int
    phases: dict[str, float]  # seconds: startup, model, base_scoring, training, evaluation, checkpoints, ...
    train: dict[str, Any]  # rows, epochs, steps, batch, seconds per step and epoch, tokens, tokens/s
    measured: dict[str, Any]  # what the rehearsal ran: steps, rows, seconds, peak memory of each kind
    machine: dict[str, Any]
    change: str | None = None  # a ladder rung: what it changes, in words
    overrides: dict[str, Any] = field(default_factory=dict)
    ladder: list[Estimate] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return self.peak_memory_mib * MEMORY_MARGIN <= self.limit_mib

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["fits"] = self.fits
        d["ladder"] = [r.to_dict() for r in self.ladder]
        return d


def memory_limit(cfg: TunelabConfig) -> tuple[int, str]:
    """The memory the run may use (MiB) and where that figure comes from."""
    from ..device import memory_mib

    if cfg.train.memory_limit_mib:
        return cfg.train.memory_limit_mib, "train.memory_limit_mib"
    mem = memory_mib()
    if "gpu_available" in mem:
        return mem["gpu_available"], "the GPU's free memory"
    return mem["available"], "this machine's available memory"


def machine() -> dict[str, Any]:
    import os

    import torch

    from ..device import cpu_name, device, memory_mib

    out: dict[str, Any] = {"cpu": cpu_name(), "cores": os.cpu_count(), "device": device(),
                           "torch_threads": torch.get_num_threads()} | {f"memory_{k}_mib": v
                                                                         for k, v in memory_mib().items()}
    if device() == "cuda":
        out["gpu"] = torch.cuda.get_device_name()
    return out


# --- the rehearsal, in its own process --------------------------------------------------------------

def _probes_key(cfg: TunelabConfig) -> str | None:
    """What the probes' time depends on: the model, its precision, the probe settings, this machine's boot and
    threads. None when the run has no probes."""
    import hashlib

    import torch

    from ..device import boot_id
    from ..recipes.lifecycle import probed

    kind = probed(cfg)
    if kind is None:
        return None
    what = json.dumps([cfg.model.base, cfg.model.precision, cfg.eval.probes.model_dump(mode="json"), kind,
                       cfg.eval.batch_size, torch.get_num_threads()], sort_keys=True)
    return f"{boot_id()}-{hashlib.sha256(what.encode()).hexdigest()[:16]}"


def _known_probes() -> dict[str, float]:
    from ..home import home

    try:
        return json.loads((home() / "probe_seconds.json").read_text())
    except (OSError, ValueError):
        return {}


def _remember_probes(key: str, seconds: float) -> None:
    from ..atomic import write_json
    from ..device import boot_id
    from ..home import home

    known = {k: v for k, v in _known_probes().items() if k.startswith(boot_id())} | {key: round(seconds, 1)}
    (home()).mkdir(parents=True, exist_ok=True)
    write_json(home() / "probe_seconds.json", known)


def rehearse(cfg: TunelabConfig) -> dict[str, Any]:
    """Run the rehearsal in a child process (its peak memory is the run's); its measurements. The probes take
    the same time whatever was trained: they run in the first rehearsal of a model on this machine, and their
    time is reused after."""
    key = _probes_key(cfg)
    known = _known_probes().get(key) if key else None
    with tempfile.TemporaryDirectory(prefix="tunelab-rehearsal-") as tmp:
        cfg_file, out_file = Path(tmp) / "config.json", Path(tmp) / "measured.json"
        cfg_file.write_text(json.dumps(cfg.model_dump(mode="json")))
        flags = ["--no-probes"] if known is not None else []
        proc = subprocess.Popen([sys.executable, "-m", "tunelab.plan.rehearsal", str(cfg_file), str(out_file),
                                 *flags], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=distributed.alone_env())  # one process, also when started by one of several
        try:
            output = _wait(proc, CANCEL.get())
        except BaseException:  # Ctrl-C (or cancelled): the rehearsal ends with the command
            proc.kill()
            proc.wait()
            raise
        if not out_file.is_file():
            tail = output.decode(errors="replace").strip().splitlines()[-15:]
            what = "ran out of memory" if proc.returncode in (-9, 137) else f"ended with status {proc.returncode}"
            raise EstimateError(f"the rehearsal (a few real training steps) {what}:\n" + "\n".join(tail))
        got = json.loads(out_file.read_text())
    if "error" in got:
        raise EstimateError(got["error"] if got.get("user_error") else f"the rehearsal failed: {got['error']}")
    if key and known is None:
        measured = _phase_seconds(got).get("probing")
        if measured:
            _remember_probes(key, measured)
    got["probes_seconds"] = known
    return got


def _wait(proc: subprocess.Popen[bytes], cancel: threading.Event | None) -> bytes:
    """The rehearsal's output once it ends; EstimateCancelled as soon as `cancel` is set."""
    while True:
        try:
            return proc.communicate(timeout=0.25 if cancel is not None else None)[0]
        except subprocess.TimeoutExpired:
            if cancel is not None and cancel.is_set():
                raise EstimateCancelled from None


# --- scaling to the whole run -------------------------------------------------------------------------

def _batches(rows: int, batch: int) -> int:
    return math.ceil(rows / max(batch, 1))


def _phase_seconds(m: dict[str, Any]) -> dict[str, float]:
    """Seconds in each phase of the rehearsal, from its marks ("opened" -> the model's load and setup)."""
    out: dict[str, float] = {"startup": m["marks"][0][1] - m["started"]}
    for (name, t), (_, t_next) in zip(m["marks"], m["marks"][1:], strict=False):
        key = "model" if name == "opened" else name
        out[key] = out.get(key, 0.0) + t_next - t
    return out


GROWTH_STEPS_CAP = 256  # resident memory was seen to grow with sqrt(steps) over ~20-100 steps; assumed flat after


def peak_rss(m: dict[str, Any], total_steps: int) -> float:
    """The whole run's peak resident memory. On a CPU it grows as training goes (the allocator's and oneDNN's
    caches keep what each new batch shape needed), roughly with the square root of the steps: the rehearsal's
    growth over its steps is extrapolated to the run's, and what the phases after training add on top (the
    generation of the tuned score, the probes) is added to where training ends."""
    steps, measured = m["steps"], m["peak_rss_mib"]
    if len(steps) < 2 or "rss_mib" not in steps[0]:
        return measured
    k, first, last = len(steps), steps[0]["rss_mib"], steps[-1]["rss_mib"]
    per_sqrt = max(0.0, last - first) / math.sqrt(k - 1)
    n = min(max(total_steps, k), GROWTH_STEPS_CAP)
    grown = per_sqrt * (math.sqrt(n - 1) - math.sqrt(k - 1))
    after = [v["peak"] - v["start"] for name, v in m.get("memory", {}).items()
             if name in ("saving", "scoring tuned model", "probing", "reporting", "done")]
    return max(measured + grown, last + grown + max(after, default=0.0))


def scale(cfg: TunelabConfig, m: dict[str, Any], limit_mib: int, info: dict[str, Any]) -> Estimate:
    """The whole run's time and memory from a rehearsal's measurements."""
    full, sample = m["full"], m["sample"]
    hp = full["hyperparams"]
    phases = _phase_seconds(m)
    steps, evals, saves = m["steps"], m["evals"], m["saves"]
    bs, ebs = hp["batch_size"], cfg.eval.batch_size
    n_val, n_val_s = full["validation_rows"], sample["validation_rows"]
    val_ratio = _batches(n_val, bs) / max(1, _batches(n_val_s, bs))
    scored_full = 0
    if cfg.method not in PAIR_METHODS and cfg.method != "reward":
        limit = auto.scored_rows(cfg, classification=cfg.task == "classification")
        scored_full = min(n_val, limit) if limit else n_val
    scored_s = min(n_val_s, ebs)
    score_ratio = _batches(scored_full, ebs) / max(1, _batches(scored_s, ebs)) if scored_s else 0.0
    # a base score is a scoring pass (SFT, RL), or an evaluation of the held-out pairs (reward, ORPO...)
    base_ratio = val_ratio if cfg.method in PAIR_METHODS or cfg.method == "reward" else score_ratio

    ordinary = steps[1:] or steps
    length_ratio = (full["lengths_mean"] / sample["ordinary_lengths_mean"]
                    if full["lengths_mean"] and sample["ordinary_lengths_mean"] else 1.0)
    step_s = sum(s["seconds"] for s in ordinary) / max(len(ordinary), 1) * length_ratio
    step_tokens = sum(s["tokens"] for s in ordinary) / max(len(ordinary), 1) * length_ratio
    total_steps = hp["total_steps"]
    train_steps_s = (steps[0]["seconds"] + (total_steps - 1) * step_s) if steps else 0.0

    epochs_run = math.ceil(total_steps / max(hp["steps_per_epoch"], 1))
    t = cfg.train
    if n_val and cfg.method not in RL_METHODS:
        n_evals = total_steps // t.eval_every if t.eval_every else epochs_run
        n_saves = n_evals
    else:
        n_evals, n_saves = 0, (total_steps // t.save_every if t.save_every else epochs_run)
    eval_each = sum((e["seconds"] - e["task_metric_seconds"]) * val_ratio + e["task_metric_seconds"] * score_ratio
                    for e in evals) / max(len(evals), 1)
    save_each = sum(saves) / max(len(saves), 1)
    in_trainer = sum(s["seconds"] for s in steps) + sum(e["seconds"] for e in evals) + sum(saves)
    trainer_overhead = max(0.0, phases.get("training", 0.0) - in_trainer)  # setup, loading the best checkpoint

    tuned_scoring = phases.get("scoring tuned model", 0.0) * score_ratio
    base_scoring = phases.get("scoring base model", 0.0) * base_ratio  # RL scores the base model always
    if cfg.eval.compare_base and cfg.method not in RL_METHODS:  # the rehearsal left the base model's score out
        if cfg.method == "sft" and cfg.task != "classification":
            pass  # generated answers: the rehearsal scored the base model too, in the same pass
        elif cfg.method == "sft" and n_val:
            base_scoring = tuned_scoring  # the same rows, the same model size
        elif (cfg.method == "reward" or cfg.method in REFERENCE_FREE) and n_val:
            base_scoring = eval_each  # an evaluation of the held-out pairs before training
    out = {
        "startup": phases.get("startup", 0.0),
        "model": phases.get("model", 0.0),
        "base_scoring": base_scoring,
        "training": train_steps_s + trainer_overhead,
        "evaluation": eval_each * n_evals,
        "checkpoints": save_each * n_saves,
        "saving": phases.get("saving", 0.0),
        "tuned_scoring": tuned_scoring,
        "probes": m.get("probes_seconds") or phases.get("probing", 0.0),
        "report": phases.get("reporting", 0.0) + phases.get("done", 0.0),
    }
    total = sum(out.values())
    tokens = step_tokens * total_steps
    per_epoch = (train_steps_s + out["evaluation"] + out["checkpoints"]) / max(hp["epochs"], 1)
    train = {"rows": full["train_rows"], "validation_rows": n_val, "scored_rows": scored_full,
             "epochs": hp["epochs"], "steps": total_steps, "steps_per_epoch": hp["steps_per_epoch"],
             "batch_size": bs, "grad_accum": t.grad_accum, "seconds_per_step": round(step_s, 3),
             "seconds_per_epoch": round(per_epoch, 1), "tokens": round(tokens),
             "tokens_per_s": round(step_tokens / step_s, 1) if step_s and step_tokens else None,
             "evaluations": n_evals, "checkpoints": n_saves}
    peak = m["gpu_reserved_mib"] if "gpu_reserved_mib" in m else peak_rss(m, total_steps)
    measured = {"steps": len(steps), "train_rows": sample["train_rows"], "validation_rows": n_val_s,
                "seconds": round(sum(phases.values()), 1), "peak_rss_mib": round(m["peak_rss_mib"], 1)}
    for k in ("gpu_allocated_mib", "gpu_reserved_mib"):
        if k in m:
            measured[k] = round(m[k], 1)
    return Estimate(round(peak, 1), round(total, 1), limit_mib, {k: round(v, 1) for k, v in out.items()}, train,
                    measured, info)


def estimate(cfg: TunelabConfig) -> Estimate:
    """Rehearse the run and scale it (no ladder)."""
    limit, source = memory_limit(cfg)
    info = machine() | {"memory_limit_source": source}
    return scale(cfg, rehearse(cfg), limit, info)


# --- in plain words ------------------------------------------------------------------------------------

def duration(seconds: float) -> str:
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def mib(x: float) -> str:
    return f"{x / 1024:.1f} GiB" if x >= 1024 else f"{x:.0f} MiB"


PHASE_WORDS = {"startup": "start and data", "model": "model", "base_scoring": "base scoring",
               "training": "training", "evaluation": "evaluations", "checkpoints": "checkpoints", "saving": "saving",
               "tuned_scoring": "tuned scoring", "probes": "probes", "report": "report"}


def describe(est: Estimate) -> list[str]:
    """The estimate in plain words, a line each."""
    t, m = est.train, est.measured
    where = "GPU memory" if "gpu_reserved_mib" in m else "memory"
    verdict = "fits" if est.fits else "does NOT fit"
    lines = [f"Measured {m['steps']} real training steps on {m['train_rows']} of your {t['rows']} rows "
             f"({duration(m['seconds'])}) on {est.machine.get('gpu') or est.machine.get('cpu')}.",
             f"Memory: peak {mib(est.peak_memory_mib)} of {where}; {mib(est.limit_mib)} available "
             f"({est.machine.get('memory_limit_source', 'limit')}): {verdict}.",
             f"Time: {duration(est.total_seconds)} in all; {t['steps']} steps over {t['epochs']} epoch(s) of "
             f"batch {t['batch_size']}x{t['grad_accum']}, {duration(t['seconds_per_epoch'])} per epoch."]
    if t.get("tokens_per_s"):
        lines.append(f"Speed: about {t['tokens_per_s']:.0f} tokens/s while training "
                     f"({t['seconds_per_step']:.2f} s a step, {t['tokens']:,} tokens in all).")
    parts = [f"{PHASE_WORDS[k]} {duration(v)}" for k, v in est.phases.items() if v >= 0.5]
    lines.append("Where the time goes: " + ", ".join(parts) + ".")
    return lines
