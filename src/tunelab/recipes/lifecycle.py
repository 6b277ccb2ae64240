"""A training run's life, in one place, for every method:

    threads -> start (base model, tokenizer, precision) -> the method's inputs, checked -> probe files checked
    -> open the run directory -> train (the method's own code, which saves through the session)
    -> probes -> completed -> report

Whatever happens after the run directory exists is written into it: a failure marks the run failed with the
error, Ctrl-C saves a checkpoint and marks it interrupted (resumable), and progress.json / events.jsonl say
what the run is doing to any other process watching it. A method's module keeps only what is its own:
`prepare` (its inputs, before anything is written) and `train` (model, trainer, scores).
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from rich.console import Console

from .. import atomic, distributed
from ..config import ConfigError, TunelabConfig
from ..data.records import DataError, Problem
from ..device import peak_rss_mib
from ..errors import DiskFullError
from ..models.integrity import record_adapter
from ..models.load import LoadedModel, ModelRef, load_tokenizer, resolve, tokenizer_path
from ..runs import Reporter, RunDir, RunDirError, RunResult, SilentReporter, checkpoint_step, open_run
from ..runs.checkpoint import TRAINER_STATE, set_aside
from ..runs.disk import stopped_by_full_disk
from ..training import auto
from ..training.auto import Hyperparams
from ..training.callbacks import (
    CheckpointManifest,
    GracefulInterrupt,
    MetricsLogger,
    RichProgress,
    RunProgress,
    SeenTokens,
    TokenCounter,
)


@dataclass
class Start:
    """What every run starts from, settled before its directory exists."""

    cfg: TunelabConfig
    base: ModelRef
    tokenizer: Any
    bf16: bool
    console: Console


@dataclass
class Prepared:
    """A method's inputs, loaded and checked before the run directory opens."""

    data: Any  # the method's own: rows, pairs or prompts, its task...
    report: dict[str, Any]  # data_report.json
    skipped: list[Problem] = field(default_factory=list)  # bad rows left out (data.on_error: skip)
    curation: dict[str, Any] | None = None  # data.curate: what was removed, changed, flagged (curation.json)


class Rehearsal(Protocol):
    """A few real steps of a run on a sample of its rows, timed (plan/rehearsal.py): it picks the sample and
    the hyperparameters of the scaled-down run, and listens to the phases."""

    def trim(self, prepared: Prepared) -> Prepared: ...

    def hyperparams(self, *, n_params: int, head: bool) -> Hyperparams: ...

    def on_phase(self, name: str) -> None: ...

    def callback(self, counter: TokenCounter) -> Any:
        """A trainer callback that times steps, evaluations and checkpoints."""


BeforeOpen = Callable[[TunelabConfig, Prepared], tuple[TunelabConfig, dict[str, Any]]]


class Recipe(Protocol):
    """A method's module (recipes/sft.py, dpo.py, reward.py, grpo.py). It may also define check(cfg): cheap
    checks of its own settings, run before any model or data is loaded."""

    def prepare(self, start: Start) -> Prepared: ...

    def train(self, session: Session, prepared: Prepared) -> Any:
        """Train and save (session.save); returns the trained model to probe, or None."""


class Interrupted(Exception):
    """Ctrl-C during training: a checkpoint is saved and the run can be resumed."""


@dataclass
class Session:
    """An open run, as a method's training code sees it."""

    run: RunDir
    start: Start
    resume: bool
    reporter: Reporter
    extra_callbacks: list[Any] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)  # the headline numbers so far; summary.json at the end
    labels: list[str] | None = None  # a head's outputs, once saved
    counter: TokenCounter = field(default_factory=TokenCounter)
    rehearsal: Rehearsal | None = None
    _interrupt: GracefulInterrupt | None = None

    @property
    def cfg(self) -> TunelabConfig:
        return self.start.cfg

    @property
    def console(self) -> Console:
        return self.start.console

    @property
    def tokenizer(self) -> Any:
        return self.start.tokenizer

    @property
    def bf16(self) -> bool:
        return self.start.bf16

    @property
    def precision(self) -> str:
        return "bf16" if self.bf16 else "fp32"

    @property
    def main(self) -> bool:
        """Whether this process writes the run (the only one, or rank 0 of several): the others train beside it
        and leave scoring, saving and every file of the run to it."""
        return distributed.is_main()

    def phase(self, name: str, total: int | None = None) -> None:
        self.reporter.phase(name, done=0 if total is not None else None, total=total)

    def event(self, message: str, **data: Any) -> None:
        self.reporter.event(message, **data)

    def callbacks(self, *extra: Any) -> list[Any]:
        """Tokens seen, metrics.jsonl, the console bar, progress.json and a clean Ctrl-C, plus the method's own.
        Beside main, a process keeps only what takes part in the training's decisions."""
        self._interrupt = GracefulInterrupt(self.console)
        written = ([MetricsLogger(self.run, self.counter), RichProgress(self.counter, self.console),
                    RunProgress(self.reporter, self.counter)] if self.main else [])
        return [SeenTokens(self.counter), *extra, *written[:2], CheckpointManifest(self.run), *written[2:],
                self._interrupt, *self.extra_callbacks]

    def hyperparams(self, *, n_params: int, lengths: list[int], head: bool = False) -> Hyperparams:
        if self.rehearsal is not None:  # the whole run's batch, for a few steps
            return self.rehearsal.hyperparams(n_params=n_params, head=head)
        return auto.hyperparams(self.cfg, n_params=n_params, lengths=lengths, head=head)

    def announce(self, hp: Hyperparams, *, n_params: int, trainable: int, what: str, batch: str | None = None,
                 **resolved: Any) -> None:
        """resolved.json (what `auto` became) and the run's one-line description on the console."""
        if not self.main:
            return
        world = distributed.world_size()
        processes = {"processes": world} if world > 1 else {}
        self.run.write_resolved(hp.to_dict() | {"trainable_params": trainable, "total_params": n_params,
                                                "bf16": self.bf16, **processes, **resolved})
        batch = batch or f"batch {hp.batch_size}x{self.cfg.train.grad_accum}"
        if world > 1:
            batch += f" ({hp.batch_size // world} a process x {world} processes)"
        self.console.print(f"[bold]Run[/] {self.run.path}  {what}  epochs {hp.epochs}  lr {hp.learning_rate:g}  "
                           f"{batch}  steps {hp.total_steps}  trainable {trainable / 1e6:.2f}M of "
                           f"{n_params / 1e6:.0f}M  {self.precision}")

    def fit(self, trainer: Any) -> Any:
        """trainer.train(), from the last checkpoint when resuming; the training numbers go into the summary.
        Raises Interrupted after Ctrl-C (the checkpoint is saved)."""
        checkpoint = distributed.on_main(self._resume_from)  # every process resumes from main's choice
        t0 = time.perf_counter()
        if checkpoint is not None and _final(checkpoint, trainer.args.max_steps, trainer.args.num_train_epochs):
            out = _trained_already(trainer, checkpoint)
        else:
            out = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        seconds = time.perf_counter() - t0
        trained = self.counter.tokens - self.counter.at_start  # in this process: a resumed run's rate is its own
        self.summary.update(steps=trainer.state.global_step, train_loss=out.training_loss,
                            train_seconds=round(seconds, 1), tokens_seen=self.counter.tokens,
                            tokens_per_s=round(trained / max(seconds, 1e-9), 1))
        if self._interrupt is not None and self._interrupt.requested:
            raise Interrupted(trainer.state.global_step)
        return out

    def _resume_from(self) -> Path | None:
        """The checkpoint to resume from, damaged ones set aside; metrics.jsonl trimmed to it."""
        passed_over: list[tuple[Path, str]] = []
        checkpoint = self.run.last_checkpoint(passed_over) if self.resume else None
        for damaged, why in passed_over:
            self._set_aside(damaged, why, checkpoint)
        if self.resume and checkpoint is None and not passed_over:
            self.console.print("[yellow]No checkpoint in this run yet: starting it from the beginning[/]")
        self.run.trim_metrics(checkpoint_step(checkpoint) if checkpoint else 0)
        return checkpoint

    def _set_aside(self, damaged: Path, why: str, instead: Path | None) -> None:
        """A checkpoint a resume must not load (cut short by a killed process, or damaged since): said, and moved
        out of the trainer's way, which would save that step into it again."""
        try:
            kept = set_aside(damaged)
        except OSError as exc:
            raise RunDirError(f"{damaged} is damaged ({why}) and can't be moved aside ({exc}): delete it, then "
                              f"resume again") from None
        where = f"from {instead.name}" if instead else "from the beginning"
        message = (f"{damaged.name} is damaged ({why}): resuming {where} instead; it is kept as "
                   f"{kept.relative_to(self.run.path)} (delete it when you no longer need it)")
        self.console.print(f"[yellow]{message}[/]", highlight=False)
        self.event(message, level="warn")

    def save(self, model: Any, *, labels: list[str] | None = None) -> None:
        """The adapter in standard PEFT format (or the whole model), the tokenizer, a head's labels (main only)."""
        if not self.main:
            return
        self.phase("saving")
        final = self.run.full_model if self.cfg.peft.method == "full" else self.run.adapter
        model.save_pretrained(str(final))
        if final == self.run.adapter:  # its hash: a byte changed later is found when it is loaded
            self.summary.update(record_adapter(final))
        self.tokenizer.save_pretrained(str(self.run.tokenizer))
        if labels is not None:
            self.run.write_labels(labels)
            self.labels = labels
        self.event(f"Saved the trained {'model' if self.cfg.peft.method == 'full' else 'adapter'}", kind="saved")

    @contextlib.contextmanager
    def scoring(self, what: str, total: int) -> Iterator[Callable[[int], None]]:
        """A transient console bar and progress.json while scoring `total` rows; yields advance(n)."""
        from rich.progress import Progress

        self.phase(f"scoring {what}", total)
        done = 0
        with Progress(console=self.console, transient=True) as bar:
            job = bar.add_task(f"scoring {what} on {total} validation rows", total=total)

            def advance(n: int) -> None:
                nonlocal done
                done += n
                bar.advance(job, n)
                self.reporter.advance(done)

            yield advance

    def model_ref(self) -> ModelRef:
        """The trained model as a reference: the base, the adapters it started from, this run's adapter."""
        base = self.start.base
        if self.cfg.peft.method == "full":
            return ModelRef("run", str(self.run.full_model), run=self.run.path)
        return ModelRef("run", base.path, [*base.adapters, self.run.adapter], self.run.path)


def _final(checkpoint: Path, max_steps: int, epochs: float) -> bool:
    """Whether `checkpoint` is its run's last step (and no override asks for more steps, or epochs, now)."""
    state = json.loads((checkpoint / TRAINER_STATE).read_text())
    step = int(state.get("global_step", 0))
    if max_steps <= 0 and epochs > float(state.get("num_train_epochs") or 0):
        return False  # resumed with train.epochs raised: the trainer goes on to the new end
    return step >= int(state.get("max_steps") or 0) > 0 and (max_steps <= 0 or max_steps <= step)


def _trained_already(trainer: Any, checkpoint: Path) -> Any:
    """The weights of a run whose training had ended (stopped afterwards: saving, probing, scoring), from its last
    checkpoint, without training: transformers, resumed from a run's final step, would train one step more."""
    from transformers.trainer_callback import TrainerState
    from transformers.trainer_utils import TrainOutput

    trainer.state = TrainerState.load_from_json(str(checkpoint / TRAINER_STATE))
    best = trainer.state.best_model_checkpoint if trainer.args.load_best_model_at_end else None
    trainer._load_from_checkpoint(best if best and Path(best).is_dir() else str(checkpoint))
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    return TrainOutput(trainer.state.global_step, sum(losses) / len(losses) if losses else float("nan"), {})


def _start(cfg: TunelabConfig, console: Console) -> Start:
    if not cfg.data.train:
        raise DataError([Problem("config", "data.train is empty: set it to your training file")])
    if cfg.train.sharding != "none" and not distributed.launched():
        raise ConfigError(f"train.sharding={cfg.train.sharding} shards the model between training processes that "
                          f"torchrun starts, and this process was not started so: use `tunelab train CONFIG "
                          f"--nproc N` (or torchrun / accelerate launch), or set train.sharding: none")
    auto.liger(cfg)  # train.liger=true on a machine without a GPU or the package: said now
    base = resolve(cfg.model.base)
    tokenizer = load_tokenizer(tokenizer_path(base))
    if cfg.method != "sft" and tokenizer.chat_template is None:
        raise ConfigError(f"method: {cfg.method} renders prompts with the model's chat template, and "
                          f"{cfg.model.base} has none: pick a chat model")
    return Start(cfg, base, tokenizer, auto.bf16(cfg), console)


def probed(cfg: TunelabConfig) -> Literal["generative", "classifier"] | None:
    """What the probes will ask of the trained model: answers, labels (a classification head), or nothing (a
    reward model writes no answers, and probes switched off)."""
    if not cfg.eval.probes.enabled or cfg.method == "reward":
        return None
    head = cfg.task == "classification" and cfg.classification.mode == "head"
    return "classifier" if head else "generative"


def _inputs(cfg: TunelabConfig, recipe: Recipe, console: Console) -> tuple[Start, Prepared]:
    """Everything checked that can be checked before the run directory opens: the recipe's own settings, probe
    files, the base model and the data (loaded, validated, tokenised)."""
    check = getattr(recipe, "check", None)
    if check is not None:  # e.g. a typo in rl.rewards: found before anything loads
        check(cfg)
    kind = probed(cfg)
    if kind:  # a bad probe file is found now, not after training
        from ..probes.run import probe_sets

        probe_sets(cfg.eval.probes, generative=kind == "generative")
    start = _start(cfg, console)
    return start, recipe.prepare(start)


def validate(cfg: TunelabConfig, recipe: Recipe, console: Console | None = None) -> dict[str, Any]:
    """What training would check before it starts, without training: the data report, or the user error (a
    DataError lists every bad row with its file:line)."""
    _, prepared = _inputs(cfg, recipe, console or Console(stderr=True))
    return prepared.report | {"skipped": len(prepared.skipped)}


def execute(cfg: TunelabConfig, recipe: Recipe, *, resume: bool = False, console: Console | None = None,
            callbacks: list[Any] | None = None, rehearsal: Rehearsal | None = None,
            before_open: BeforeOpen | None = None) -> RunResult:
    """before_open(cfg, prepared) may change the config once the inputs are known (train.fit: the rung of the
    ladder that fits) and add to the summary; it runs before the run directory exists, so a run that fits
    nowhere leaves nothing behind."""
    console = console or Console(stderr=True)
    distributed.init()  # one of several processes (torchrun): join them before anything else
    unreported = distributed.on_main(_unreported, cfg) if resume else None
    if unreported is not None:  # stopped while writing the report: the run itself is complete
        return _report_again(unreported, console) if distributed.is_main() else RunResult(unreported.path,
                                                                                           "completed", {})
    if cfg.train.threads:
        import torch

        torch.set_num_threads(cfg.train.threads)
    with distributed.main_first():  # the data check, tokenisation cache and model conversion once, by main
        start, prepared = _inputs(cfg, recipe, console)  # every problem is found before anything is written
    noted: dict[str, Any] = {}
    if before_open is not None:
        cfg, noted = distributed.on_main(before_open, cfg, prepared)
        start.cfg = cfg
    if rehearsal is not None:
        prepared = rehearsal.trim(prepared)
    kind = probed(cfg)
    run_path = distributed.on_main(_open, cfg, resume)
    run = RunDir(run_path)
    cfg.name = run_path.name  # name-2 when a completed run had the name
    reporter = Reporter(run) if distributed.is_main() else SilentReporter(run)
    session = Session(run, start, resume, reporter, list(callbacks or []), rehearsal=rehearsal)
    if not distributed.is_main():
        try:
            recipe.train(session, prepared)  # beside main: saving, probes, status and report are main's
        except (Interrupted, KeyboardInterrupt):
            return RunResult(run.path, "interrupted", {})
        except Exception as exc:  # main stopped (Ctrl-C before training, an error): it says why
            if not isinstance(exc, distributed.PeerLost) and distributed.lost_peer(exc) is None:
                raise
            raise distributed.StoppedElsewhere from None
        finally:
            distributed.close()
        return RunResult(run.path, "completed", {})
    session.summary.update(noted)
    if rehearsal is not None:
        reporter.on_phase.append(rehearsal.on_phase)
        session.extra_callbacks.append(rehearsal.callback(session.counter))
    reporter.event(f"Run {'resumed' if resume else 'started'}: method {cfg.method}, base {cfg.model.base}")
    sigint = signal.getsignal(signal.SIGINT)
    try:
        skipped_file = run.write_data_report(prepared.report, prepared.skipped, prepared.curation)
        if skipped_file:
            console.print(f"[yellow]Skipped {len(prepared.skipped)} bad row(s); see {skipped_file}[/]")
        model = recipe.train(session, prepared)
        if model is not None and kind:
            run.set_status("running", **session.summary)  # the probes read the run's labels from its summary
            _probe(session, model)
        # this process's own peak up to here (the report, written next, adds little): what the estimate predicts
        summary = run.set_status("completed", **session.summary, peak_memory_mib=round(peak_rss_mib(), 1))
    except (Interrupted, KeyboardInterrupt) as stop:  # Ctrl-C: in training a checkpoint is saved first
        summary = run.set_status("interrupted", **session.summary)
        where = f"at step {stop}" if isinstance(stop, Interrupted) else f"while {reporter.state.get('phase')}"
        reporter.event(f"Interrupted {where}: continue with --resume", level="warn", kind="interrupted")
        reporter.phase("interrupted")
        console.print(f"[yellow]Stopped {where}; continue with --resume[/]")
        return RunResult(run.path, "interrupted", summary)
    except BaseException as exc:  # whatever happens after the run directory exists, it says so
        full = stopped_by_full_disk(run, exc, reporter.state.get("phase"))  # frees a half-written checkpoint
        lost = distributed.lost_peer(exc)
        said = full or lost or exc
        with contextlib.suppress(OSError):  # a disk still full must not hide the error that says so
            run.set_status("failed", error=f"{type(said).__name__}: {said}")
            reporter.event(f"Failed: {type(said).__name__}: {said}", level="error", kind="failed")
            reporter.phase("failed")
        if full is not None or lost is not None:
            raise (full or lost) from exc
        raise
    finally:
        signal.signal(signal.SIGINT, sigint)  # the trainer's Ctrl-C handler never outlives the run
    reporter.event("Completed", kind="completed")
    distributed.close()  # the others are done: what is left (the report) is main's alone
    reporter.phase("reporting")
    _report(run, console)
    reporter.phase("done")
    return RunResult(run.path, "completed", summary)


def _open(cfg: TunelabConfig, resume: bool) -> Path:
    """The run directory, opened (main only). Resuming with another process count is refused before anything
    changes: the checkpoints hold each process's place in the data and its random state."""
    if resume:
        resolved = RunDir(Path(cfg.output_dir) / str(cfg.name)).resolved()  # none yet: no checkpoint either
        trained_with, now = int(resolved.get("processes", 1)), distributed.world_size()
        if resolved and trained_with != now:
            raise RunDirError(
                f"{Path(cfg.output_dir) / str(cfg.name)} was trained with {trained_with} process(es) and is resumed "
                f"with {now}: its checkpoints hold each process's place in the data and random state, so it can't "
                f"go on exactly. Resume it with `--nproc {trained_with}`, or train it again from the start with "
                f"{now} (name=<new-name>)")
    return open_run(cfg, resume).path


def _probe(session: Session, model: Any) -> None:
    """Forgetting and bias probes of the trained model (in memory), base vs tuned, into probes.json. A failure
    is reported, not raised: the trained model is saved already."""
    from ..probes.run import run_probes, subject_for, summary_line

    session.phase("probing")
    model.eval()
    lm = LoadedModel(model, session.tokenizer, session.model_ref(), session.labels)
    batch = session.cfg.eval.batch_size
    try:
        result = run_probes(subject_for(lm, bf16=session.bf16, batch_size=batch), session.cfg.eval.probes,
                            batch_size=batch, console=session.console)
    except (Exception, KeyboardInterrupt) as exc:  # Ctrl-C here stops the probes, not the finished run
        what = "stopped" if isinstance(exc, KeyboardInterrupt) else f"failed ({type(exc).__name__}: {exc})"
        session.console.print(f"[yellow]Probes {what}; the run is complete without them. Retry with "
                              f"`tunelab probe {session.run.path}`[/]")
        session.event(f"Probes {what}", level="warn")
        return
    session.run.write_probes(result)
    session.console.print(summary_line(result) + f" ({result['seconds']:.0f} s)", highlight=False)
    session.event(summary_line(result), kind="probes")


def _unreported(cfg: TunelabConfig) -> RunDir | None:
    """The run to resume, if it completed and has no report: its process was stopped while writing it."""
    run = RunDir(Path(cfg.output_dir) / str(cfg.name))
    try:
        completed = run.is_run() and run.status() == "completed"
    except RunDirError:
        return None  # open_run says what is wrong with it
    return run if completed and not run.report_html.is_file() else None


def _report_again(run: RunDir, console: Console) -> RunResult:
    atomic.remove_leftovers(run.path)  # the half-written report's temporary file
    reporter = Reporter(run)
    reporter.event("Resumed to write the report: the run had completed, its report was not written")
    console.print("[yellow]This run completed, but its report was not written: writing it now[/]")
    reporter.phase("reporting")
    _report(run, console)
    reporter.phase("done")
    return RunResult(run.path, "completed", run.summary())


def _report(run: RunDir, console: Console) -> None:
    """The report of a run that has just completed, written beside it. A report problem must not undo the run."""
    from ..report import write_report

    try:
        html, _ = write_report(run.path)
    except DiskFullError as exc:  # not a warning to scroll past: nothing more can be written there
        raise DiskFullError(exc.what, exc.where, f"the run itself is complete, its model saved. Free space there "
                            f"and write the report with `tunelab report {run.path}`") from exc
    except Exception as exc:
        console.print(f"[yellow]The report could not be written ({type(exc).__name__}: {exc}); the run is "
                      f"complete. Try again with `tunelab report {run.path}`[/]")
        return
    console.print(f"Report: {html}")
