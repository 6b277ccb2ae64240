"""The planning arithmetic without a model: scaling a rehearsal to the whole run, the memory model, the ladder's
rungs, the quick bound, and what `tunelab init` decides a file holds."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.helpers import write_chat, write_jsonl
from tunelab.config import ConfigError, load_config
from tunelab.data.records import DataError
from tunelab.plan import fit
from tunelab.plan.estimate import describe, peak_rss, scale
from tunelab.plan.init import detect


def _measured(steps: int = 4, step_s: float = 2.0, rss: tuple[float, ...] = (1000, 1100, 1141, 1173)) -> dict:
    t = 100.0
    marks = [("opened", t), ("training", t + 1)]
    marks += [("saving", t + 1 + steps * step_s + 3), ("scoring tuned model", t + 2 + steps * step_s + 3),
              ("reporting", t + 12 + steps * step_s + 3), ("done", t + 13 + steps * step_s + 3),
              ("end", t + 13.5 + steps * step_s + 3)]
    return {"started": t - 5, "marks": marks,
            "full": {"train_rows": 320, "validation_rows": 32, "lengths_mean": 100.0, "per_step": 16,
                     "hyperparams": {"epochs": 2, "batch_size": 16, "steps_per_epoch": 20, "total_steps": 40}},
            "sample": {"train_rows": 64, "validation_rows": 16, "ordinary_lengths_mean": 100.0, "ordinary_steps": 3},
            "steps": [{"seconds": step_s, "tokens": 1600, "rss_mib": r} for r in rss[:steps]],
            "evals": [{"seconds": 2.0, "task_metric_seconds": 0.0}], "saves": [1.0],
            "peak_rss_mib": 1500.0,
            "memory": {"scoring tuned model": {"start": 1180.0, "peak": 1480.0}}}


def test_a_rehearsal_scales_to_the_whole_run(tmp_path: Path) -> None:
    cfg = load_config(None, ["data.train=x.jsonl", "eval.during_training=false", "eval.compare_base=false"])
    est = scale(cfg, _measured(), 20_000, {"cpu": "test"})
    assert est.train["steps"] == 40 and est.train["evaluations"] == 2 and est.train["checkpoints"] == 2
    assert est.phases["startup"] == pytest.approx(5.0)
    assert est.phases["training"] == pytest.approx(2.0 * 40, rel=0.01)  # 40 steps of 2 s, no overhead left
    assert est.phases["evaluation"] == pytest.approx(2 * 2.0 * 2)  # 2 evaluations; 32 rows are 2 batches of 16: x2
    assert est.phases["tuned_scoring"] == pytest.approx(10.0 * 2)  # 32 rows scored in batches of 16, 16 measured
    assert est.total_seconds == pytest.approx(sum(est.phases.values()), abs=0.5)
    assert est.train["tokens_per_s"] == pytest.approx(800.0)
    assert est.fits and any("Memory: peak" in line for line in describe(est))
    assert not scale(cfg, _measured(), 1000, {}).fits
    head = fit.apply(cfg, {"eval.compare_base": True, "task": "classification"})
    assert scale(head, _measured(), 20_000, {}).phases["base_scoring"] == est.phases["tuned_scoring"]


def test_memory_grows_with_the_square_root_of_the_steps() -> None:
    m = _measured()
    # +173 MiB over the 3 steps after the first: +100/sqrt-step; 40 steps -> +100*(sqrt(39)-sqrt(3))
    grown = 100 * (39 ** 0.5 - 3 ** 0.5)
    assert peak_rss(m, 40) == pytest.approx(max(1500 + grown, 1173 + grown + 300), rel=1e-3)
    assert peak_rss(m, 4) == pytest.approx(1500)  # the rehearsal was the whole run
    assert peak_rss(m, 100_000) == peak_rss(m, 256)  # assumed flat past what was measured


def test_the_ladder_steps_down_from_what_is_configured() -> None:
    full = load_config(None, ["data.train=x.jsonl", "peft.method=full", "train.max_batch_tokens=512"])
    rungs = fit.ladder(full, batch_size=16)
    assert [list(r.overrides) for r in rungs][:3] == [
        ["train.max_batch_tokens"], ["train.max_batch_tokens", "train.gradient_checkpointing"],
        ["train.max_batch_tokens", "train.gradient_checkpointing", "peft.method", "peft.r", "peft.alpha"]]
    assert rungs[-1].overrides["peft.r"] == 4 and rungs[-1].overrides["peft.method"] == "lora"
    dpo = load_config(None, ["data.train=x.jsonl", "method=dpo", "train.gradient_checkpointing=true"])
    first = fit.ladder(dpo, batch_size=8)[0]
    assert first.overrides == {"train.batch_size": 2, "train.grad_accum": 4}  # the same 8 pairs per step
    for base, rung in [(full, r) for r in rungs] + [(dpo, r) for r in fit.ladder(dpo, batch_size=8)]:
        fit.apply(base, rung.overrides)  # every rung validates
    with pytest.raises(ConfigError, match="not used by method dpo"):
        fit.apply(dpo, {"train.max_batch_tokens": 128})


def test_the_default_sweep_space_keeps_trials_short_under_a_time_budget() -> None:
    from tunelab.plan.sweep import default_space

    cfg = load_config(None, ["data.train=x.jsonl"])
    epochs = default_space(cfg, 135_000_000, 1000)["train.epochs"]
    assert (epochs.low, epochs.high) == (1, 6)  # auto picks 3 epochs for 1000 rows: half to twice that
    budget = load_config(None, ["data.train=x.jsonl", "sweep.minutes=30"])
    epochs = default_space(budget, 135_000_000, 1000)["train.epochs"]
    assert (epochs.low, epochs.high) == (1, 3)  # never longer than auto's own run
    assert "train.epochs" not in default_space(budget, 135_000_000, 5000)  # auto's 1 epoch: nothing to search
    lr = default_space(cfg, 135_000_000, 1000)["train.learning_rate"]
    assert lr.log and lr.low < lr.high and {"peft.r", "peft.alpha", "train.batch_size"} <= set(default_space(cfg, 1, 1))


def test_trials_of_any_length_report_at_the_same_share_of_their_training() -> None:
    from types import SimpleNamespace as NS

    from tunelab.plan.sweep import Pruning

    class Trial:  # what Pruning uses of an optuna trial
        def __init__(self) -> None:
            self.reports: list[tuple[int, float]] = []

        def report(self, value: float, step: int) -> None:
            self.reports.append((step, value))

        def should_prune(self) -> bool:
            return False

    for max_steps in (24, 63, 375):
        trial, args = Trial(), NS(eval_strategy="steps")
        pruning = Pruning(trial, "eval_accuracy", 4, True)
        pruning.on_train_begin(args, NS(max_steps=max_steps), NS())
        for step in range(1, max_steps + 1):
            control = NS(should_evaluate=False, should_training_stop=step == max_steps)
            pruning.on_step_end(args, NS(max_steps=max_steps, global_step=step), control)
            if control.should_evaluate or step % 50 == 0:  # the run's own evaluations come between the points
                pruning.on_evaluate(args, NS(global_step=step), control, metrics={"eval_accuracy": step / max_steps})
        assert [point for point, _ in trial.reports] == [1, 2, 3, 4], max_steps
        assert all(abs(share - point / 4) < 0.02 for point, share in trial.reports), trial.reports


def test_the_quick_bound_grows_with_the_batch_and_full_tuning() -> None:
    lora = load_config(None, ["data.train=x.jsonl", "train.max_batch_tokens=512"])
    small = fit.quick_bound_mib(lora, 135_000_000, [100] * 64)
    assert fit.quick_bound_mib(fit.apply(lora, {"train.max_batch_tokens": None}), 135_000_000, [400] * 64) > small
    assert fit.quick_bound_mib(fit.apply(lora, {"peft.method": "full"}), 135_000_000, [100] * 64) > small + 1500
    assert small < 0.5 * 16_000  # a 135M LoRA run never needs a rehearsal on a 16 GB machine
    defaults = load_config(None, ["data.train=x.jsonl"])  # compiled layers (auto), in pieces of 1,024 tokens
    assert small < fit.quick_bound_mib(defaults, 135_000_000, [100] * 640) < 0.5 * 16_000


def test_init_tells_what_the_rows_are(tmp_path: Path) -> None:
    write_chat(tmp_path / "chat.jsonl", 5)
    assert detect(str(tmp_path / "chat.jsonl"))[0] == "chat"
    with (tmp_path / "tickets.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["message", "queue"])
        w.writerows([[f"my card number {i} does not work at all", ["cards", "billing"][i % 2]] for i in range(30)])
    kind, columns, why = detect(str(tmp_path / "tickets.csv"))
    assert (kind, columns) == ("classification", {"text": "message", "label": "queue"}) and "queue" in why
    write_jsonl(tmp_path / "hh.jsonl", [{"chosen": "\n\nHuman: hi\n\nAssistant: hello",
                                         "rejected": "\n\nHuman: hi\n\nAssistant: go away"}])
    assert detect(str(tmp_path / "hh.jsonl"))[0] == "preference"
    write_jsonl(tmp_path / "qa.jsonl", [{"question": "what is rest?", "answer": "sleep"}] * 3)
    assert detect(str(tmp_path / "qa.jsonl"))[:2] == ("completion", {"prompt": "question", "completion": "answer"})
    write_jsonl(tmp_path / "rl.jsonl", [{"messages": [{"role": "user", "content": "2+2?"}], "answer": "4"}])
    assert detect(str(tmp_path / "rl.jsonl"))[0] == "prompts"
    write_jsonl(tmp_path / "odd.jsonl", [{"a": 1, "b": [1]}])
    with pytest.raises(DataError, match="can't tell what the rows are"):
        detect(str(tmp_path / "odd.jsonl"))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="no readable rows"):
        detect(str(tmp_path / "empty.jsonl"))
    assert json.dumps(detect(str(tmp_path / "chat.jsonl")))  # plain data, for the jobs API and UI


def test_the_quickstart_trains_on_the_rows_that_fit_its_minutes(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from rich.console import Console

    from tunelab import quickstart
    from tunelab.plan import estimate as estimate_module

    cfg = load_config(None, ["data.train=x.jsonl", "eval.during_training=false"])
    est = scale(cfg, _measured(), 20_000, {})
    est.train["rows"] = 3000
    est.phases.update(training=3000.0, evaluation=0.0, checkpoints=0.0)  # a second a row; the rest is fixed
    est.total_seconds = sum(est.phases.values())
    fixed = est.total_seconds - 3000
    monkeypatch.setattr(estimate_module, "estimate", lambda _cfg: est)
    monkeypatch.setenv(quickstart.STARTED_ENV, str(time.time() - 120))  # setup took 2 minutes
    rows = quickstart.sized_rows("runs", 300, 40, Console(quiet=True))
    assert abs(rows - (0.9 * (40 * 60 - 120) - fixed)) < 3  # 90% of the time left, less the fixed part
    assert quickstart.sized_rows("runs", 300, 1, Console(quiet=True)) == quickstart.MIN_ROWS  # never below
    assert quickstart.sized_rows("runs", 300, 600, Console(quiet=True)) == quickstart.MAX_ROWS
