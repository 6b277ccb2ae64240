"""The jobs service's parts without a server: the schema is what the migrations make, a claim is exclusive, an
OpenAI job request becomes the tunelab config it should, and what can't be honoured is refused by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tunelab.jobs.db import JobRow, JobsDB
from tunelab.jobs.errors import JobsError
from tunelab.jobs.files import FileStore, stored_suffix
from tunelab.jobs.schemas import JobCreate
from tunelab.jobs.service import JobsService, fine_tuned_name
from tunelab.jobs.spec import build_config
from tunelab.jobs.worker import Worker


def _config(tmp_path: Path, **request: object) -> tuple[object, dict]:
    req = JobCreate.model_validate({"model": "base", "training_file": "file-x"} | request)
    return build_config(req, base="smollm2-135m-instruct", train=tmp_path / "t.jsonl", validation=None,
                        workdir=tmp_path / "job", seed=3)


def test_the_models_match_the_migrations(tmp_path: Path) -> None:
    from alembic import command
    from alembic.config import Config

    import tunelab.jobs.db as jobs_db

    db = JobsDB(f"sqlite:///{tmp_path / 'jobs.db'}")
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(jobs_db.__file__).parent / "migrations"))
    with db.engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.check(cfg)  # raises if the models hold anything no migration makes
    JobsDB(f"sqlite:///{tmp_path / 'jobs.db'}")  # opening it again upgrades nothing and breaks nothing


def test_hyperparameters_and_the_extension_become_config_keys(tmp_path: Path) -> None:
    cfg, method = _config(tmp_path, method={"type": "dpo", "dpo": {"hyperparameters": {
        "n_epochs": 2, "batch_size": "auto", "learning_rate_multiplier": 0.5, "beta": 0.3}}},
        tunelab={"config": {"peft": {"r": 8}, "train.threads": 1}})
    assert (cfg.method, cfg.train.epochs, cfg.train.batch_size, cfg.train.learning_rate_multiplier) == (
        "dpo", 2, "auto", 0.5)
    assert cfg.preference.beta == 0.3 and cfg.peft.r == 8 and cfg.train.threads == 1 and cfg.train.seed == 3
    assert cfg.data.train == str(tmp_path / "t.jsonl") and cfg.output_dir == str(tmp_path / "job")
    assert method["type"] == "dpo" and method["dpo"]["hyperparameters"]["beta"] == 0.3
    old, _ = _config(tmp_path, hyperparameters={"n_epochs": 4})  # the older top-level form
    assert old.method == "sft" and old.train.epochs == 4


@pytest.mark.parametrize(("request_fields", "param"), [
    ({"method": {"type": "supervised", "supervised": {"hyperparameters": {"beta": 0.1}}}},
     "method.supervised.hyperparameters.beta"),
    ({"method": {"type": "reinforcement"}}, "method.reinforcement"),
    ({"method": {"type": "reinforcement", "reinforcement": {"grader": {"type": "string_check", "name": "g",
      "input": "{{sample.output_text}}", "reference": "x", "operation": "eq"},
      "hyperparameters": {"compute_multiplier": 2.0}}}}, "method.reinforcement.hyperparameters.compute_multiplier"),
    ({"integrations": [{"type": "wandb", "wandb": {"project": "p"}}]}, "integrations"),
    ({"tunelab": {"config": {"data.train": "/etc/passwd"}}}, "tunelab.config.data.train"),
    ({"tunelab": {"config": {"model": {"base": "other"}}}}, "tunelab.config.model.base"),
    ({"tunelab": {"config": {"train.packing": False}}, "method": {"type": "dpo"}}, "tunelab.config.train.packing"),
])
def test_what_cant_be_honoured_is_refused_by_name(tmp_path: Path, request_fields: dict, param: str) -> None:
    with pytest.raises(JobsError) as err:
        _config(tmp_path, **request_fields)
    assert err.value.status == 400 and err.value.param == param, (err.value.param, err.value.message)


def test_request_fields_are_checked() -> None:
    from pydantic import ValidationError

    for bad in ({"suffix": "../x"}, {"suffix": "x" * 65}, {"metadata": {str(i): "v" for i in range(17)}},
                {"seed": -1}, {"unknown_field": 1}):
        with pytest.raises(ValidationError):
            JobCreate.model_validate({"model": "m", "training_file": "f"} | bad)


def test_names_and_suffixes() -> None:
    assert fine_tuned_name("base", "acme", "bot", "ftjob-abc") == "ft:base:acme:bot:abc"
    assert fine_tuned_name("base", "acme", None, "ftjob-abc") == "ft:base:acme::abc"
    assert [stored_suffix(n) for n in ("a.JSONL", "../../etc/passwd", "x.csv.gz", "t.parquet", "noext")] == [
        ".jsonl", ".jsonl", ".csv.gz", ".parquet", ".jsonl"]


def test_a_claim_is_exclusive_and_a_dead_workers_job_is_taken_back(tmp_path: Path, tiny_model: Path) -> None:
    db = JobsDB(f"sqlite:///{tmp_path / 'jobs.db'}")
    files = FileStore(db, tmp_path / "files", 1 << 20)
    service = JobsService(db, files, tmp_path / "jobs")
    (tmp_path / "t.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}, '
                                      '{"role": "assistant", "content": "hello"}]}\n')
    with (tmp_path / "t.jsonl").open("rb") as f:
        upload = files.add("p", "t.jsonl", "fine-tune", f)
    job = service.create("p", JobCreate(model="m", training_file=upload.id), str(tiny_model))
    one, two = Worker(db, files, tmp_path / "jobs"), Worker(db, files, tmp_path / "jobs")
    assert one.claim().id == job.id and two.claim() is None  # validating_files, claimed once
    with db.session() as s:
        row = s.get(JobRow, job.id)
        row.status, row.worker, row.heartbeat = "running", "elsewhere:1:x", 0.0  # a worker that stopped beating
    two.recover()
    taken = service.get("p", job.id)
    assert (taken.status, taken.worker, taken.resume, taken.attempts) == ("queued", None, 1, 1)
    assert two.claim().status == "running" and one.claim() is None


@pytest.mark.parametrize(("trained_with", "worker_nproc", "expected"), [
    (None, 2, ["--nproc", "2"]),  # a new job: as many as this worker runs
    (2, 1, ["--nproc", "2"]),     # resumed elsewhere: as many as its checkpoints were written by
    (1, 4, []),
])
def test_a_job_resumes_with_the_processes_it_was_trained_with(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              trained_with: int | None, worker_nproc: int,
                                                              expected: list[str]) -> None:
    from types import SimpleNamespace

    from tunelab.config import load_config
    from tunelab.runs import RunDir

    db = JobsDB(f"sqlite:///{tmp_path / 'jobs.db'}")
    worker = Worker(db, FileStore(db, tmp_path / "files", 1 << 20), tmp_path / "jobs", nproc=worker_nproc)
    run = RunDir(tmp_path / "jobs" / "ftjob-1" / "run")
    if trained_with is not None:  # an earlier attempt's run, interrupted after writing what `auto` became
        run.path.mkdir(parents=True)
        run.write_config(load_config(None, ["data.train=t.jsonl"]))
        run.set_status("interrupted", name="run")
        run.write_resolved({"batch_size": 4} | ({"processes": trained_with} if trained_with > 1 else {}))
    seen: list[list[str]] = []
    monkeypatch.setattr(Worker, "_drive", lambda self, job, args, log, tail: (seen.append(args), (None, 0))[1])
    monkeypatch.setattr(Worker, "_finish", lambda *a, **k: None)
    monkeypatch.setattr("tunelab.jobs.worker.add_event", lambda *a, **k: None)
    worker._train(SimpleNamespace(id="ftjob-1", sweep=None, run_dir=str(run.path), resume=int(bool(trained_with))))
    assert seen[0][seen[0].index("--nproc"):] == expected if expected else "--nproc" not in seen[0]


def test_a_sweep_that_finished_before_its_pause_landed_is_done(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pause reached the sweep after its last trial (exit 0): the job is finished, with the best trial's model,
    not paused with nothing left to resume."""
    from types import SimpleNamespace

    from tunelab.jobs import worker as worker_module

    db = JobsDB(f"sqlite:///{tmp_path / 'jobs.db'}")
    worker = Worker(db, FileStore(db, tmp_path / "files", 1 << 20), tmp_path / "jobs")
    best = {"run_dir": str(tmp_path / "trial-1"), "number": 1, "objective": "eval_loss", "value": 0.5,
            "shown": "train.learning_rate=0.005"}
    finished: list[tuple[Any, ...]] = []
    monkeypatch.setattr(Worker, "_drive", lambda self, job, args, log, tail: ("pause", 0))
    monkeypatch.setattr(Worker, "_finish", lambda self, job, run, work, asked, code, sweep=None:
                        finished.append((run.path, asked, code)))
    monkeypatch.setattr(Worker, "_update", lambda self, jid, **fields: None)
    monkeypatch.setattr(worker_module, "add_event", lambda *a, **k: None)
    monkeypatch.setattr(worker_module, "_best_trial", lambda sweep: best)
    job = SimpleNamespace(id="ftjob-2", sweep={"trials": 2}, run_dir=None, resume=0)
    worker._sweep(job)
    assert finished == [(Path(best["run_dir"]), "pause", 0)] and job.run_dir == best["run_dir"]
