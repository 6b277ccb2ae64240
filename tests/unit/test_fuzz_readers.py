"""Fuzzed data files: whatever bytes a file holds, reading it gives rows, or tunelab's own error naming the place;
never another exception. Hypothesis keeps each failing example as a regression (in .hypothesis/)."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunelab.config.curate import CurateConfig
from tunelab.data.curate.run import curate_files
from tunelab.data.load import load_records
from tunelab.data.preference import load_pairs_report
from tunelab.errors import TunelabError

SUFFIXES = [".jsonl", ".json", ".csv", ".jsonl.gz", ".json.gz", ".csv.gz", ".parquet"]  # any bytes: broken parquet too
FUZZ = settings(max_examples=int(os.environ.get("TUNELAB_FUZZ_EXAMPLES", "60")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])  # CI: bounded; a longer search sets the variable

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
keys = st.sampled_from(["messages", "role", "content", "text", "label", "prompt", "completion", "chosen",
                        "rejected", "instruction", "input", "output", "conversations", "from", "value", "weight",
                        "tool_calls", "tools", "preferred_output", "non_preferred_output"])
rows = st.lists(st.dictionaries(keys, json_values, max_size=4), max_size=5)


def _write(dir: Path, suffix: str, payload: bytes) -> Path:
    path = dir / f"data{suffix}"
    path.write_bytes(gzip.compress(payload) if suffix.endswith(".gz") else payload)
    return path


def _read_all(path: Path) -> None:
    """Every reader a user's file meets: training rows, preference pairs, curation."""
    for read in (lambda: load_records(path), lambda: load_pairs_report(str(path)),
                 lambda: curate_files([str(path)], CurateConfig(labels="off"))):
        with contextlib.suppress(TunelabError):  # a user error naming the place: allowed
            read()


@FUZZ
@given(suffix=st.sampled_from(SUFFIXES), payload=st.binary(max_size=300))
def test_any_bytes(suffix: str, payload: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        _read_all(_write(Path(d), suffix, payload))


@FUZZ
@given(suffix=st.sampled_from([".jsonl", ".json", ".jsonl.gz"]), data=rows)
def test_json_rows_of_any_shape(suffix: str, data: list[dict[str, Any]]) -> None:
    text = ("\n".join(json.dumps(r) for r in data) if suffix != ".json" else json.dumps(data)).encode()
    with tempfile.TemporaryDirectory() as d:
        _read_all(_write(Path(d), suffix, text))


@FUZZ
@given(header=st.lists(keys, min_size=1, max_size=4, unique=True),
       cells=st.lists(st.lists(st.text(max_size=15), min_size=0, max_size=5), max_size=5))
def test_csv_of_any_shape(header: list[str], cells: list[list[str]]) -> None:
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(cells)
    with tempfile.TemporaryDirectory() as d:
        _read_all(_write(Path(d), ".csv", buf.getvalue().encode()))
