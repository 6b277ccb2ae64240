"""Shared fixtures: a tiny random-weight llama with a tokenizer built here (no downloads, seconds); the
tests under e2e/ and slow/ are marked so, for the fast tier (`make test-fast`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import CLI_ENV, build_tiny_model

# The CLI runs in this process in most tests: its console gets the wide, plain output a subprocess would.
os.environ.setdefault("COLUMNS", CLI_ENV["COLUMNS"])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests under e2e/ and slow/ carry those marks: `make test-fast` leaves them out."""
    for item in items:
        parts = Path(str(item.path)).parts
        for mark in ("e2e", "slow"):
            if mark in parts:
                item.add_marker(getattr(pytest.mark, mark))


@pytest.fixture(scope="session", autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Each test session gets its own tunelab cache unless TUNELAB_HOME is set (slow tests reuse it)."""
    os.environ.setdefault("TUNELAB_HOME", str(tmp_path_factory.mktemp("tunelab-home")))
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
