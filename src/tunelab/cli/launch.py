"""`tunelab train CONFIG --nproc N`: the same command in N processes on this machine, started and watched by
torchrun's elastic agent (torch.distributed.run), as `torchrun --standalone --nproc-per-node N -m tunelab …` would.

The agent forwards a Ctrl-C to every process (each saves its part of a checkpoint after the same step), and when
one process dies it stops the others: the run is left resumable with --resume.
"""

from __future__ import annotations

import logging
import os
import signal

from .common import console

SHUTDOWN_S = 600  # after a Ctrl-C, time for every process to finish its step and save before being killed


def threads_each(nproc: int) -> int:
    """Intra-op threads per process: the machine's cores shared out, so that N processes don't oversubscribe it."""
    return max(1, len(os.sched_getaffinity(0)) // nproc)


def launch(argv: list[str], nproc: int) -> int:
    """Run `tunelab <argv>` in `nproc` processes; the exit code to leave with (130 when interrupted)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    for name in list(logging.root.manager.loggerDict):  # the agent's own warnings: the processes speak for the run
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads_each(nproc)))
    args = get_args_parser().parse_args(["--standalone", f"--nproc-per-node={nproc}",
                                         f"--shutdown-timeout={SHUTDOWN_S}", "-m", "tunelab", *argv])
    try:
        run(args)
    except SignalException as exc:
        return 128 + int(exc.sigval) if exc.sigval != signal.SIGINT else 130
    except ChildFailedError as exc:
        main = exc.failures.get(0)
        if main is not None and main.exitcode in (1, 2, 130):  # main said what happened (an error, a Ctrl-C)
            return main.exitcode
        rank, failure = exc.get_first_failure()
        code = failure.exitcode
        if code == 2:  # a user error, which that process printed
            return code
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        console.print(f"[red bold]error:[/] training process {rank} of {nproc} stopped ({how}), and the others "
                      f"were stopped with it. Continue the run with --resume (and --nproc {nproc}) once the cause "
                      f"is fixed", highlight=False)
        return 1
    return 0
