"""Shared fixtures: a tiny random-weight llama with a tokenizer built here (no downloads, seconds); the
tests under e2e/ and slow/ are marked so, for the fast tier (`make test-fast`). Under pytest-xdist (`make test`:
`-n 2 --dist loadfile`) each worker is its own session with one torch thread, and the longest files start first."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.helpers import CLI_ENV, build_tiny_model

# The CLI runs in this process in most tests: its console gets the wide, plain output a subprocess would.
os.environ.setdefault("COLUMNS", CLI_ENV["COLUMNS"])
if os.environ.get("PYTEST_XDIST_WORKER"):
    # the workers share the cores: torch's default of a thread per core in each (and in the processes they start)
    # oversubscribes them, which slows training several times over
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

DURATIONS = "tunelab/test-seconds"  # pytest's cache (.pytest_cache): each test's seconds in the run that last ran it
# where a file has no recorded time yet: a guess by its folder, so that a fresh checkout also starts the long ones first
GUESS = {"slow": 120.0, "e2e": 20.0}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests under e2e/ and slow/ carry those marks: `make test-fast` leaves them out."""
    for item in items:
        parts = Path(str(item.path)).parts
        for mark in ("e2e", "slow"):
            if mark in parts:
                item.add_marker(getattr(pytest.mark, mark))
    _longest_files_first(config, items)


def _longest_files_first(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Whole files in order of their time in the last run, longest first, each file's tests in their own order.

    `--dist loadfile` hands out whole files in this order: one started last and long would leave the other worker
    idle until it ends. Both workers read the same cache, so they collect the same order, as xdist requires."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):  # one process runs them all: the order makes no difference
        return
    cache = getattr(config, "cache", None)  # None with -p no:cacheprovider
    known: dict[str, float] = cache.get(DURATIONS, {}) if cache is not None else {}
    seconds: dict[str, float] = {}
    first: dict[str, int] = {}
    for i, item in enumerate(items):
        file = item.nodeid.split("::", 1)[0]
        first.setdefault(file, i)
        folder = Path(file).parent.name
        seconds[file] = seconds.get(file, 0.0) + known.get(item.nodeid, GUESS.get(folder, 1.0))
    items.sort(key=lambda item: (-seconds[f := item.nodeid.split("::", 1)[0]], first[f]))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Each test's setup, call and teardown seconds, for the next run's order (on xdist's controller: it sees every
    worker's reports)."""
    _ran[report.nodeid] = _ran.get(report.nodeid, 0.0) + report.duration


_ran: dict[str, float] = {}


def pytest_sessionfinish(session: pytest.Session) -> None:
    cache = getattr(session.config, "cache", None)
    if cache is None or hasattr(session.config, "workerinput") or not _ran:  # workerinput: an xdist worker
        return
    known: dict[str, float] = cache.get(DURATIONS, {})
    cache.set(DURATIONS, known | {k: round(v, 2) for k, v in _ran.items()})


@pytest.fixture(scope="session", autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Each test session (each xdist worker) gets its own tunelab cache unless TUNELAB_HOME is set (slow tests reuse
    it); the workers share its converted models, so that the default model is converted once, not once in each (the
    conversion holds a file lock: one worker waits for the other's)."""
    if "TUNELAB_HOME" not in os.environ:
        home = tmp_path_factory.mktemp("tunelab-home")
        if os.environ.get("PYTEST_XDIST_WORKER"):
            shared = tmp_path_factory.getbasetemp().parent / "tunelab-models"  # the run's folder, above the worker's
            shared.mkdir(exist_ok=True)
            (home / "models").symlink_to(shared, target_is_directory=True)
        os.environ["TUNELAB_HOME"] = str(home)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TUNELAB_JOB_ESTIMATE", "0")  # a job's estimate is tested once, in test_jobs.py


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model: Path):  # noqa: ANN201
    from tunelab.models.load import load_tokenizer

    return load_tokenizer(str(tiny_model))
