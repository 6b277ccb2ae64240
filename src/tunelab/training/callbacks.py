"""Trainer callbacks: metrics.jsonl, live progress on the console and in the run directory, clean Ctrl-C."""

from __future__ import annotations

import signal
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import TrainerCallback

from .. import distributed
from ..runs import Reporter, RunDir
from ..runs.checkpoint import write_manifest


class TokenCounter:
    """Real (non-padding) tokens seen in training steps, by all processes together (the trainer's
    num_input_tokens_seen, through SeenTokens); at_start: the count when this process began training (a resumed run
    restores the count of the steps before)."""

    def __init__(self) -> None:
        self.tokens = 0
        self.at_start = 0


class MetricsLogger(TrainerCallback):
    """Appends one JSON line per log event: step, epoch, loss, lr, tokens/s, eval metrics."""

    def __init__(self, run: RunDir, counter: TokenCounter) -> None:
        self.run, self.counter = run, counter
        self._t0 = time.perf_counter()
        self._tok0 = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self._t0, self._tok0 = time.perf_counter(), self.counter.tokens

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
        if not logs:
            return
        row: dict[str, Any] = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4)}
        for k, v in logs.items():
            row[k] = float(v) if isinstance(v, int | float) else v
        elapsed = time.perf_counter() - self._t0
        if "loss" in logs and elapsed > 0:
            row["tokens_per_s"] = round((self.counter.tokens - self._tok0) / elapsed, 1)
            row["tokens_seen"] = self.counter.tokens
        self.run.append_metrics(row)


class RichProgress(TrainerCallback):
    """One progress bar: step, loss, validation loss (online RL: the mean reward of the sampled answers), real
    tokens/s, ETA."""

    def __init__(self, counter: TokenCounter, console: Console | None = None) -> None:
        self.counter, self.console = counter, console or Console(stderr=True)
        self.progress: Progress | None = None
        self.task: Any = None
        self.loss = float("nan")
        self.val = float("nan")
        self.reward: float | None = None

    def _second(self) -> str:
        return f"reward {self.reward:.3f}" if self.reward is not None else f"val {self.val:.4f}"

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.progress = Progress(
            TextColumn("[bold]train"), BarColumn(), TextColumn("step {task.completed}/{task.total}"),
            TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[second]}"),
            TextColumn("{task.fields[tps]:.0f} tok/s"), TimeElapsedColumn(), TextColumn("ETA"),
            TimeRemainingColumn(), console=self.console, transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=state.max_steps, completed=state.global_step,
                                           loss=self.loss, second=self._second(), tps=0.0)
        self._t0, self._tok0 = time.perf_counter(), self.counter.tokens

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.progress is not None:
            tps = (self.counter.tokens - self._tok0) / max(time.perf_counter() - self._t0, 1e-9)
            self.progress.update(self.task, completed=state.global_step, loss=self.loss, second=self._second(),
                                 tps=tps)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
        logs = logs or {}
        self.loss = float(logs.get("loss", self.loss))
        self.val = float(logs.get("eval_loss", self.val))
        self.reward = float(logs["reward"]) if isinstance(logs.get("reward"), int | float) else self.reward
        if self.progress is not None:
            self.progress.update(self.task, loss=self.loss, second=self._second())

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


class CheckpointManifest(TrainerCallback):
    """Once the trainer has saved a checkpoint, its manifest (runs/checkpoint.py): what lets a resume tell a whole
    checkpoint from one a killed process left half-written or a disk damaged. Before RunProgress, whose event
    tells other processes (the jobs worker) that the checkpoint is there."""

    def __init__(self, run: RunDir) -> None:
        self.run = run

    def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        distributed.barrier()  # every process has written its part (its RNG state) before the manifest lists them
        saved = self.run.checkpoint(state.global_step)
        if distributed.is_main() and saved.is_dir():
            write_manifest(saved)


class RunProgress(TrainerCallback):
    """The run's progress.json and events.jsonl as training goes: step, loss, tokens/s, ETA; evaluations and
    checkpoints as events. What another process (`tunelab status`) reads."""

    def __init__(self, reporter: Reporter, counter: TokenCounter) -> None:
        self.reporter, self.counter = reporter, counter
        self._t0, self._step0, self._tok0 = time.perf_counter(), 0, 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self._t0, self._step0, self._tok0 = time.perf_counter(), state.global_step, self.counter.tokens
        self.reporter.phase("training", done=state.global_step, total=state.max_steps)
        self.reporter.update(step=state.global_step, total_steps=state.max_steps, force=True)
        how = f"resumed at step {state.global_step}" if state.global_step else "started"
        self.reporter.event(f"Training {how}: {state.max_steps} steps")

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        elapsed = time.perf_counter() - self._t0
        done = state.global_step - self._step0
        eta = elapsed / done * (state.max_steps - state.global_step) if done > 0 else None
        self.reporter.update(step=state.global_step, total_steps=state.max_steps, done=state.global_step,
                             total=state.max_steps, epoch=round(state.epoch or 0.0, 4),
                             elapsed_seconds=round(elapsed, 1), eta_seconds=round(eta, 1) if eta is not None else None,
                             tokens_per_s=round((self.counter.tokens - self._tok0) / max(elapsed, 1e-9), 1))

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
        logs = logs or {}
        if "loss" in logs:
            self.reporter.update(loss=float(logs["loss"]))
        if "eval_loss" in logs:
            self.reporter.update(eval_loss=float(logs["eval_loss"]), force=True)
            scores = {k: float(v) for k, v in logs.items() if k.startswith("eval_") and isinstance(v, int | float)}
            self.reporter.event(f"Evaluation at step {state.global_step}: validation loss {logs['eval_loss']:.4f}",
                                kind="metrics", step=state.global_step, **scores)

    def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.reporter.event(f"Checkpoint saved at step {state.global_step}", kind="checkpoint",
                            step=state.global_step)

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.reporter.update(step=state.global_step, force=True)


class SeenTokens(TrainerCallback):
    """The trainer counts input tokens itself (`num_input_tokens_seen`, summed over processes): feed them to
    progress and logs. First among the callbacks, so that the others see this step's count."""

    def __init__(self, counter: TokenCounter) -> None:
        self.counter = counter

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.counter.tokens = self.counter.at_start = int(state.num_input_tokens_seen or 0)  # restored on resume

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.counter.tokens = int(state.num_input_tokens_seen or 0)


class GracefulInterrupt(TrainerCallback):
    """First Ctrl-C: finish the step, save a checkpoint, stop. A second one aborts at once. With several processes
    they all stop after the same step (a Ctrl-C that reached any of them counts for all)."""

    def __init__(self, console: Console | None = None) -> None:
        self.requested = False
        self.console = console or Console(stderr=True)
        self._previous: Any = None

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.console.print("\n[yellow]Interrupted: saving a checkpoint after this step "
                           "(press Ctrl-C again to abort without saving)[/]")

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self._previous = signal.signal(signal.SIGINT, self._handler)

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
        self.requested = distributed.any_true(self.requested)
        if self.requested:  # save and stop; an evaluation would only delay the stop
            control.should_save = True
            control.should_training_stop = True
            control.should_evaluate = False
        return control

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
        if self.requested:  # the checkpoint is saved at the step; no extra evaluation on the way out
            control.should_evaluate = False
        return control

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
