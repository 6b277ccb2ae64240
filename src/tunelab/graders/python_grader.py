"""python graders: the user's grade(sample, item) run in a separate Python process, with limits on its memory,
CPU time and written files, without this process's environment (API keys), and a timeout per answer."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time

from ..config.graders import PythonGrader
from .results import GradeFailure, GradeResult, Pair, failed, result

PYTHON_TIMEOUT = 5.0  # seconds per answer (rl.grader_timeout)
PYTHON_MEMORY_MB = 2048  # address space of the grader's process, OpenAI's sandbox limit

_CHILD = r"""
import json, math, numbers, os, sys, traceback
proto = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)  # the grader's own prints must not reach the results
payload = json.loads(sys.stdin.read())
try:
    import resource
    for name, value in payload["limits"].items():
        try:
            resource.setrlimit(getattr(resource, name), (value, value))
        except (ValueError, OSError):
            pass
except ImportError:
    pass

import linecache
linecache.cache["<grader>"] = (len(payload["source"]), None, payload["source"].splitlines(True), "<grader>")

def tail():
    # the grader's own frames only: this harness is no part of the user's error
    te = traceback.TracebackException(*sys.exc_info())
    te.stack = traceback.StackSummary.from_list([f for f in te.stack if f.filename == "<grader>"])
    return "".join(list(te.format())[-12:])

ns = {"__name__": "grader"}
try:
    exec(compile(payload["source"], "<grader>", "exec"), ns)
    grade = ns["grade"]
except BaseException:
    grade, setup = None, tail()
for task in payload["tasks"]:
    if grade is None:
        out = {"error": setup}
    else:
        try:
            value = grade(task["sample"], task["item"])
            if not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
                out = {"error": f"grade() returned {type(value).__name__} {value!r:.80}, not a finite number"}
            else:
                out = {"reward": float(value)}
        except BaseException:
            out = {"error": tail()}
    proto.write(json.dumps(out) + "\n")
    proto.flush()
"""


def grade_python(g: PythonGrader, pairs: list[Pair], timeout: float) -> list[GradeResult]:
    """Answers are graded one after another in one process; one that runs past `timeout` (or kills the process)
    scores 0 and the rest go on in a fresh process."""
    out: list[GradeResult] = []
    while len(out) < len(pairs):
        out += _python_process(g, pairs[len(out):], timeout)
    return out


def _child_env(home: str) -> dict[str, str]:
    # nothing of this process's environment (API keys included) but what Python and numeric libraries need
    return {"PATH": os.environ.get("PATH", ""), "HOME": home, "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _python_process(g: PythonGrader, pairs: list[Pair], timeout: float) -> list[GradeResult]:
    """Grades pairs until the process finishes, times out or dies; returns at least one result."""
    memory = PYTHON_MEMORY_MB * 2**20
    limits = {"RLIMIT_AS": memory, "RLIMIT_CPU": int(timeout * (len(pairs) + 1)) + 1, "RLIMIT_FSIZE": 256 * 2**20}
    payload = json.dumps({"source": g.source, "limits": limits,
                          "tasks": [{"sample": s, "item": i} for s, i in pairs]}, default=str)
    out: list[GradeResult] = []
    with tempfile.TemporaryDirectory(prefix="tunelab-grader-") as home:
        proc = subprocess.Popen([sys.executable, "-I", "-c", _CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, cwd=home, env=_child_env(home), text=True,
                                start_new_session=True)  # its own process group: whatever it starts ends with it
        lines: queue.Queue[str | None] = queue.Queue()

        def feed() -> None:
            try:
                assert proc.stdin is not None
                proc.stdin.write(payload)
                proc.stdin.close()
            except OSError:  # the process died before reading: its exit is reported below
                pass

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=feed, daemon=True).start()
        threading.Thread(target=read, daemon=True).start()
        # starting Python and running the source's top level get one more timeout on top of the first answer's
        deadline = time.monotonic() + 2 * timeout + 2
        try:
            for _ in pairs:
                t0 = time.monotonic()
                try:
                    line = lines.get(timeout=max(deadline - t0, 0.01))
                except queue.Empty:
                    out.append(failed(g, GradeFailure("python_grader_server_error", f"grade() ran past the limit of "
                                                   f"{timeout:g} s (rl.grader_timeout)"), time.monotonic() - t0))
                    out[-1].metadata["errors"]["python_grader_server_error_type"] = "timeout"
                    break
                if line is None:
                    code = proc.wait()
                    out.append(failed(g, GradeFailure("python_grader_server_error", f"the grader's process ended "
                                                   f"(exit code {code}); it may have run out of memory "
                                                   f"({PYTHON_MEMORY_MB} MiB) or CPU time"), time.monotonic() - t0))
                    out[-1].metadata["errors"]["python_grader_server_error_type"] = "crashed"
                    break
                got = json.loads(line)
                if "error" in got:
                    error = GradeFailure("python_grader_runtime_error", got["error"])
                    out.append(failed(g, error, time.monotonic() - t0))
                else:
                    out.append(result(g, got["reward"], time.monotonic() - t0))
                deadline = time.monotonic() + timeout
        finally:
            _kill(proc)
    return out


def _kill(proc: subprocess.Popen[str]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # also any process the grader started
    except (OSError, AttributeError):  # gone already, or no process groups (Windows)
        if proc.poll() is None:
            proc.kill()
    proc.wait()
