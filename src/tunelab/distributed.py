"""Several training processes (torchrun, `accelerate launch`, `tunelab train --nproc N`): which one this is, and
the few collective steps a run needs beyond the trainer's own.

One process writes (rank 0, "main"); the others train beside it and write nothing of the run's own. Work that
should happen once (the data check, the tokenisation cache, a model conversion, the run directory) runs on main
first; the others follow once it succeeded, or stop quietly when it failed (main says why).
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import os
import signal
from collections.abc import Iterator
from typing import Any

from .errors import TunelabError

# generous: main alone scores the base model before training, while the others wait at the trainer's first step
TIMEOUT = datetime.timedelta(hours=2)


class StoppedElsewhere(SystemExit):
    """Main failed at a step the others wait for: they end quietly (status 0, so that the launcher waits for main
    and leaves with its status), and main reports the error."""

    def __init__(self) -> None:
        super().__init__(0)


class PeerLost(TunelabError):
    """Another training process stopped (killed, out of memory, its machine gone): this one can't go on alone."""


def lost_peer(exc: BaseException) -> PeerLost | None:
    """The error a collective step raises when another process is gone, said plainly; None for anything else."""
    if not active() or not isinstance(exc, RuntimeError):
        return None
    import torch.distributed as dist

    words = ("gloo", "nccl", "connection reset", "connection closed", "broken pipe")
    if isinstance(exc, getattr(dist, "DistError", ())) or any(w in str(exc).lower() for w in words):
        said = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        said = said.rsplit("] ", 1)[-1].split(". ")[0][:160]  # gloo: "[file:line] Read error ...: Connection reset"
        return PeerLost(f"another training process stopped, so this one stopped too ({said}). The run "
                        f"is left as it was at its last checkpoint: continue it with --resume and the same number "
                        f"of processes")
    return None


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def launched() -> bool:
    """Whether a launcher (torchrun, accelerate) started this process, even as its only one."""
    return "WORLD_SIZE" in os.environ


def active() -> bool:
    """Whether this process is one of several (launched by torchrun or accelerate)."""
    return world_size() > 1


def end_with_parent() -> None:
    """Linux: this process is killed when the one that started it dies (kill -9 included)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                 "ROLE_RANK", "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR", "MASTER_PORT")


def alone_env() -> dict[str, str]:
    """This process's environment without the launcher's variables: for a helper process (the memory estimate's
    rehearsal) that must run on its own, not join the training processes."""
    return {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS and not k.startswith("TORCHELASTIC_")}


def init() -> None:
    """Join the process group (gloo on CPU, nccl on GPU) through accelerate, as the trainer will; no-op alone.
    Under torchrun's agent, a process that outlives it would train on alone (a job's worker killing its launcher
    after a cancel's grace): it ends with the agent."""
    if not active():
        return
    if os.environ.get("TORCHELASTIC_RUN_ID"):
        end_with_parent()
    from accelerate import PartialState

    PartialState(timeout=TIMEOUT)


def _dist() -> Any:
    import torch.distributed as dist

    return dist if active() and dist.is_available() and dist.is_initialized() else None


def _device(dist: Any) -> Any:
    """Where a collective's tensors live: nccl exchanges CUDA tensors only."""
    import torch

    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"


@contextlib.contextmanager
def _said_plainly() -> Iterator[None]:
    """A collective step that fails because another process is gone raises PeerLost, which says so."""
    try:
        yield
    except RuntimeError as exc:
        lost = lost_peer(exc)
        if lost is None:
            raise
        raise lost from exc


def broadcast(value: Any) -> Any:
    """Main's value, on every process (a picklable object)."""
    dist = _dist()
    if dist is None:
        return value
    box = [value]
    with _said_plainly():
        dist.broadcast_object_list(box, src=0)
    return box[0]


def any_true(flag: bool) -> bool:
    """Whether any process says so (e.g. a Ctrl-C that reached one of them)."""
    dist = _dist()
    if dist is None:
        return flag
    import torch

    t = torch.tensor([int(flag)], device=_device(dist))
    with _said_plainly():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier() -> None:
    dist = _dist()
    if dist is not None:
        with _said_plainly():
            dist.barrier()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Main runs the block first; the others run it after main got through it, or stop (StoppedElsewhere) if it
    failed there."""
    if _dist() is None:
        yield
        return
    if not is_main():
        if not broadcast(None):
            raise StoppedElsewhere
        yield
        return
    try:
        yield
    except BaseException:
        broadcast(False)
        raise
    broadcast(True)


def on_main(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """fn(...) on main only, its result on every process; the others stop quietly if it raised."""
    if _dist() is None:
        return fn(*args, **kwargs)
    if not is_main():
        ok, value = broadcast(None)
        if not ok:
            raise StoppedElsewhere
        return value
    try:
        value = fn(*args, **kwargs)
    except BaseException:
        broadcast((False, None))
        raise
    broadcast((True, value))
    return value


def close() -> None:
    dist = _dist()
    if dist is not None:
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
