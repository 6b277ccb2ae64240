"""Fuzzed configs: any YAML text and any dotted overrides give a config or tunelab's ConfigError naming the key
(or the file:line); never another exception."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunelab.config import ConfigError, load_config

FUZZ = settings(max_examples=int(os.environ.get("TUNELAB_FUZZ_EXAMPLES", "60")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
KEYS = ["name", "task", "method", "model.base", "model.max_length", "data.train", "data.columns", "data.curate",
        "data.curate.similarity", "data.curate.personal_kinds", "train.learning_rate", "train.epochs",
        "train.batch_size", "peft.r", "peft.target_modules", "eval.limit", "sweep.space", "nonsense", "train",
        "data.curate.quality.language", "classification.labels", "preference.beta", "rl.num_generations"]
VALUES = st.one_of(st.text(max_size=12), st.integers().map(str), st.floats().map(str),
                   st.sampled_from(["auto", "null", "{}", "[]", "[a, b]", "{a: 1}", "true", "-1", "1e-4", ": :"]))


@FUZZ
@given(overrides=st.lists(st.tuples(st.sampled_from(KEYS), VALUES), max_size=4))
def test_any_overrides(overrides: list[tuple[str, str]]) -> None:
    with contextlib.suppress(ConfigError):
        load_config(None, [f"{k}={v}" for k, v in overrides])


@FUZZ
@given(text=st.text(max_size=200))
def test_any_yaml_text(text: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "c.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        with contextlib.suppress(ConfigError):
            load_config(path)
