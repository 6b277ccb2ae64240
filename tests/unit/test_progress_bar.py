"""The training progress bar: validation loss for supervised runs, the sampled answers' mean reward for RL runs."""

from __future__ import annotations

import io
from types import SimpleNamespace

from rich.console import Console

from tunelab.training.callbacks import RichProgress, TokenCounter


def _bar_after(logs: list[dict[str, float]]) -> str:
    out = io.StringIO()
    bar = RichProgress(TokenCounter(), Console(file=out, width=200, force_terminal=False))
    state = SimpleNamespace(max_steps=4, global_step=0)
    bar.on_train_begin(None, state, None)
    for i, row in enumerate(logs, 1):
        state.global_step = i
        bar.on_log(None, state, None, logs=row)
        bar.on_step_end(None, state, None)
    bar.on_train_end(None, state, None)
    return out.getvalue()


def test_supervised_runs_show_the_validation_loss() -> None:
    shown = _bar_after([{"loss": 2.5}, {"loss": 2.0, "eval_loss": 1.75}])
    assert "val 1.7500" in shown and "reward" not in shown


def test_rl_runs_show_the_mean_reward_instead_of_an_empty_validation_loss() -> None:
    shown = _bar_after([{"loss": 0.1, "reward": 0.25}, {"loss": 0.2, "reward": 0.625}])
    assert "reward 0.625" in shown and "val nan" not in shown
