"""`tunelab sweep CONFIG`: search settings that train better than the defaults, with optuna.

Each trial is an ordinary run (its own run directory under <output_dir>/<name>-sweep/) of the config with the
trial's settings; TPE picks the next settings from the finished ones; a trial whose validation metric, part way
through, is worse than the median of the trials before it at the same point is stopped (pruned). The study is
kept in SQLite (or PostgreSQL) beside the trials, so an interrupted sweep resumes where it was, and several
`tunelab sweep` processes on the same storage share the work.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from transformers import TrainerCallback

from ..config import TunelabConfig
from ..config.schema import PAIR_METHODS, RL_METHODS
from ..config.sweep import Range
from ..errors import TunelabError
from ..training import auto
from .fit import apply

TRIALS = "trials.jsonl"


class SweepError(TunelabError):
    """A sweep's settings can't be searched (the message says which and why)."""


class Pruned(KeyboardInterrupt):
    """Raised inside a trial's training to stop it: the run ends as interrupted, the trial as pruned."""


@dataclass
class Objective:
    """What a sweep optimises: the run's final number (from its summary), and the evaluation metric seen part
    way through (None: nothing to prune on)."""

    final: str
    during: str | None
    direction: str  # maximize | minimize

    @property
    def words(self) -> str:
        return f"{'highest' if self.direction == 'maximize' else 'lowest'} {self.final.replace('_', ' ')}"


def objective_for(cfg: TunelabConfig) -> Objective:
    if cfg.method in RL_METHODS:
        return Objective("tuned_reward", None, "maximize")
    if cfg.method == "reward":
        return Objective("pairwise_accuracy", "eval_accuracy", "maximize")
    if cfg.method in PAIR_METHODS:
        return Objective("eval_loss", "eval_loss", "minimize")
    if cfg.task == "classification":
        return Objective("tuned_accuracy", "eval_accuracy" if cfg.eval.during_training else None, "maximize")
    return Objective("eval_loss", "eval_loss", "minimize")


def default_space(cfg: TunelabConfig, n_params: int, n_rows: int) -> dict[str, Range | list[Any]]:
    """Around what `auto` would pick for this run: learning rate, LoRA rank and alpha, epochs, batch, warm-up.
    Under a time budget no trial trains more epochs than `auto` (epochs are what a trial's time grows with: up
    to twice auto's, a CPU budget of half an hour held two trials), so the budget buys more trials."""
    head = cfg.task == "classification" and cfg.classification.mode == "head"
    lr = auto.learning_rate(cfg.method, cfg.peft.method, n_params, head)
    space: dict[str, Range | list[Any]] = {"train.learning_rate": Range(low=lr / 5, high=lr * 3, log=True)}
    if cfg.peft.method != "full":
        space |= {"peft.r": [8, 16, 32], "peft.alpha": [16, 32, 64]}
    if cfg.method not in RL_METHODS:
        epochs = auto.epochs(cfg.method, n_rows)
        high = epochs if cfg.sweep.minutes else max(2, epochs * 2)
        if max(1, epochs // 2) < high:
            space["train.epochs"] = Range(low=max(1, epochs // 2), high=high, integer=True)
        space["train.batch_size"] = [8, 16, 32]
    space["train.warmup_ratio"] = Range(low=0.0, high=0.1)
    return space


def _suggest(trial: Any, key: str, spec: Range | list[Any]) -> Any:
    if isinstance(spec, list):
        return trial.suggest_categorical(key, spec)
    if spec.integer:
        return trial.suggest_int(key, int(spec.low), int(spec.high), log=spec.log)
    return trial.suggest_float(key, spec.low, spec.high, log=spec.log)


class Pruning(TrainerCallback):
    """Evaluates a trial at `evaluations` evenly spaced points (a quarter of its steps each, by default), reports
    the metric there to optuna as point 1, 2, ... and stops a trial optuna prunes. Trials of other lengths
    (epochs, batch sizes) thus compare at the same share of their training; the run's own evaluations between
    those points are not reported (they would shift the numbering)."""

    def __init__(self, trial: Any, metric: str | None, evaluations: int, enabled: bool) -> None:
        self.trial, self.metric, self.evaluations, self.enabled = trial, metric, evaluations, enabled
        self.points: dict[int, int] = {}  # step -> its point number
        self.reported = 0
        self.pruned = False

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        n = self.evaluations
        self.points = {math.ceil(k * state.max_steps / n): k for k in range(1, n + 1)}

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
        if self.metric and args.eval_strategy != "no" and state.global_step in self.points:
            control.should_evaluate = True
        return control

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None,
                    **kw: Any) -> None:
        value = (metrics or {}).get(self.metric or "")
        point = self.points.get(state.global_step)
        if value is None or not math.isfinite(value) or point is None:
            return
        self.reported += 1
        self.trial.report(float(value), point)
        # a run already stopping (Ctrl-C, its last step) ends as it is: a user's Ctrl-C must stop the sweep
        if self.enabled and not control.should_training_stop and self.trial.should_prune():
            self.pruned = True
            raise Pruned


def sweep_dir(cfg: TunelabConfig) -> Path:
    return Path(cfg.output_dir) / f"{cfg.name}-sweep"


def storage_url(cfg: TunelabConfig) -> str:
    if cfg.sweep.storage:
        return cfg.sweep.storage
    return f"sqlite:///{(sweep_dir(cfg) / 'study.db').resolve()}"


def open_study(cfg: TunelabConfig, objective: Objective) -> Any:
    import optuna
    from optuna.storages import RDBStorage, RetryFailedTrialCallback

    sweep_dir(cfg).mkdir(parents=True, exist_ok=True)
    # a trial whose process died (kill -9, power) stops beating: the next sweep fails it and runs it again
    storage = RDBStorage(storage_url(cfg), heartbeat_interval=30, grace_period=120,
                         failed_trial_callback=RetryFailedTrialCallback(max_retry=1))
    sampler = optuna.samplers.TPESampler(seed=cfg.sweep.seed, n_startup_trials=min(4, cfg.sweep.trials or 4))
    # not at the first point: early on a slow starter (a low learning rate) looks worse than it ends
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    return optuna.create_study(storage=storage, study_name=str(cfg.name), direction=objective.direction,
                               sampler=sampler, pruner=pruner, load_if_exists=True)


def trial_config(cfg: TunelabConfig, params: dict[str, Any], number: int) -> TunelabConfig:
    """The config of one trial: the user's with the trial's settings, in the sweep's directory. The probes and
    the base model's score are the same for every trial: the sweep leaves them to the best config's run."""
    fixed = {"eval.probes.enabled": False, "eval.compare_base": False}
    try:
        out = apply(cfg, fixed | params)
    except TunelabError as exc:
        raise SweepError(f"sweep.space gives a config that does not validate: {exc}") from None
    out.output_dir, out.name = str(sweep_dir(cfg)), f"trial-{number:03d}"
    return out


def best_config(cfg: TunelabConfig, params: dict[str, Any]) -> TunelabConfig:
    out = apply(cfg, params)
    out.name = f"{cfg.name}-best"
    return out


def _requeue_interrupted(study: Any) -> None:
    """Trials stopped by Ctrl-C run again (once) when the sweep resumes."""
    import optuna

    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,)):
        key = f"requeued_{t.number}"
        if t.user_attrs.get("interrupted") and not study.user_attrs.get(key):
            study.enqueue_trial(t.params)
            study.set_user_attr(key, True)


def run_sweep(cfg: TunelabConfig, console: Console | None = None, *, n_params: int | None = None,
              n_rows: int | None = None) -> Any:
    """Run (or resume) the sweep; returns the optuna study. Writes the report and the best config at the end."""
    import optuna
    from optuna.study import MaxTrialsCallback

    from .fit import run as train

    console = console or Console(stderr=True)
    s = cfg.sweep
    if not s.trials and not s.minutes:
        raise SweepError("sweep.trials and sweep.minutes are both empty: give a trial count, a time budget, or both")
    obj = objective_for(cfg)
    if not s.space:
        if n_rows is None:
            from ..recipes.dispatch import check

            report = check(cfg, console)
            n_rows = int(report.get("train_rows") or report.get("train_pairs") or report.get("train_prompts") or 0)
        if n_params is None:
            from ..models.load import param_count, resolve

            n_params = param_count(resolve(cfg.model.base).path)
    space = s.space or default_space(cfg, n_params or 0, n_rows or 0)
    trial_config(cfg, {k: (v[0] if isinstance(v, list) else v.low) for k, v in space.items()}, 0)  # keys valid?
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(cfg, obj)
    _requeue_interrupted(study)
    study.set_user_attr("objective", obj.final)
    study.set_user_attr("direction", obj.direction)
    study.set_user_attr("space", {k: v if isinstance(v, list) else v.model_dump() for k, v in space.items()})
    done = len([t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE,
                                                       optuna.trial.TrialState.PRUNED)])
    console.print(f"[bold]Sweep[/] {sweep_dir(cfg)}: {obj.words}; {done} trial(s) done"
                  + (f" of {s.trials}" if s.trials else "") + (f", {s.minutes:g} min budget" if s.minutes else ""))

    def objective(trial: Any) -> float:
        params = {k: _suggest(trial, k, v) for k, v in space.items()}
        tcfg = trial_config(cfg, params, trial.number)
        console.rule(f"trial {trial.number}: {shown(params)}")
        record(cfg, trial.number, "started", params=params)
        pruning = Pruning(trial, obj.during, s.evaluations, s.pruning)
        t0 = time.perf_counter()
        result = train(tcfg, console=console, callbacks=[pruning])
        seconds = round(time.perf_counter() - t0, 1)
        trial.set_user_attr("run_dir", str(result.run_dir))
        trial.set_user_attr("seconds", seconds)
        if pruning.pruned:
            console.print(f"[yellow]trial {trial.number} pruned after {pruning.reported} evaluation(s)[/]")
            record(cfg, trial.number, "pruned", params=params, seconds=seconds, evaluations=pruning.reported)
            raise optuna.TrialPruned
        if result.status != "completed":
            trial.set_user_attr("interrupted", True)
            record(cfg, trial.number, "interrupted", params=params, seconds=seconds)
            raise KeyboardInterrupt
        value = result.summary.get(obj.final)
        if value is None or not math.isfinite(float(value)):
            record(cfg, trial.number, "failed", params=params, seconds=seconds)
            raise SweepError(f"trial {trial.number} finished without {obj.final} in its summary: the sweep needs "
                             "validation data (data.validation or data.val_fraction > 0)")
        console.print(f"trial {trial.number}: {obj.final} [bold]{float(value):.4f}[/]")
        record(cfg, trial.number, "complete", params=params, seconds=seconds, **{obj.final: float(value)})
        return float(value)

    callbacks = [MaxTrialsCallback(s.trials, states=(optuna.trial.TrialState.COMPLETE,
                                                     optuna.trial.TrialState.PRUNED))] if s.trials else []
    try:
        study.optimize(objective, timeout=s.minutes * 60 if s.minutes else None, callbacks=callbacks,
                       catch=(), gc_after_trial=True)
    finally:
        finish(cfg, study, console)
    return study


def record(cfg: TunelabConfig, number: int, state: str, **facts: Any) -> None:
    """One line in <sweep>/trials.jsonl as a trial starts and ends: what a job's worker (or a user's `tail -f`)
    follows while the sweep runs."""
    line = {"trial": number, "state": state, "time": round(time.time(), 1),
            "run_dir": str(sweep_dir(cfg) / f"trial-{number:03d}")} | facts
    with (sweep_dir(cfg) / TRIALS).open("a") as f:
        f.write(json.dumps(line) + "\n")


def finish(cfg: TunelabConfig, study: Any, console: Console) -> Path | None:
    """The sweep's report and the best trial's settings as a config file (best.yaml)."""
    from ..config.load import dump_config
    from .sweep_report import write_sweep_report

    best = _best(study)
    if best is not None:
        (sweep_dir(cfg) / "best.yaml").write_text(dump_config(best_config(cfg, best.params)))
    page = write_sweep_report(cfg, study, sweep_dir(cfg))
    if best is not None:
        console.print(f"Best: trial {best.number}, {study.user_attrs.get('objective')} {best.value:.4f} with "
                      + shown(best.params) + f"\nBest config: {sweep_dir(cfg) / 'best.yaml'}  "
                      f"(train it: tunelab train {sweep_dir(cfg) / 'best.yaml'})")
    console.print(f"Sweep report: {page}")
    return page


def _best(study: Any) -> Any:
    try:
        return study.best_trial
    except ValueError:  # no trial completed yet
        return None


def shown(params: dict[str, Any]) -> str:
    """A trial's settings on one line: key=value, floats to 3 significant digits."""
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
