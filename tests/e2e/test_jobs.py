"""The files and fine_tuning.jobs API on a real server (in this process, its worker training in processes of its
own) and a real database, driven by the official openai client: jobs that succeed and are served at once,
validation failures with line numbers, cancel, pause and resume, and one project's objects hidden from another."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.helpers import tunelab_cli, write_chat, write_jsonl
from tunelab.serve.server import BackgroundServer, build
from tunelab.serve.state import ServeSettings

QUICK = {"train.threads": 1, "eval.probes.enabled": False, "data.val_fraction": 0.2}
FINISHED = ("succeeded", "failed", "cancelled")


@pytest.fixture(scope="module")
def server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data = tmp_path_factory.mktemp("jobs-server")
    settings = ServeSettings(api_keys=["acme:key-a", "beta:key-b"], max_file_bytes=200_000, worker_jobs=1)
    app = build(str(tiny_model), name="tiny", data=str(data), settings=settings)
    with BackgroundServer(app) as url:
        yield url


def client(url: str, key: str = "key-a") -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=60)


def upload(c: openai.OpenAI, path: Path) -> Any:
    with path.open("rb") as f:
        return c.files.create(file=f, purpose="fine-tune")


def wait(c: openai.OpenAI, job_id: str, timeout: float = 240, until: tuple[str, ...] = FINISHED) -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = c.fine_tuning.jobs.retrieve(job_id)
        if job.status in until:
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} still {job.status} after {timeout} s")


def answer(c: openai.OpenAI, model: str, timeout: float = 30) -> str:
    deadline = time.time() + timeout
    while True:
        try:
            r = c.chat.completions.create(model=model, messages=[{"role": "user", "content": "hello"}], max_tokens=4)
            return r.choices[0].message.content or ""
        except openai.NotFoundError:
            if time.time() > deadline:
                raise
            time.sleep(0.1)


def test_supervised_job_from_upload_to_the_served_model(server: str, tmp_path: Path) -> None:
    c = client(server)
    f = upload(c, write_chat(tmp_path / "support.jsonl", 20))
    assert f.id.startswith("file-") and f.filename == "support.jsonl" and f.purpose == "fine-tune" and f.bytes > 0
    job = c.fine_tuning.jobs.create(model="tiny", training_file=f.id, suffix="support", seed=7,
                                    metadata={"team": "support"},
                                    method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}},
                                    extra_body={"tunelab": {"config": QUICK | {"train.batch_size": 4}}})
    assert job.id.startswith("ftjob-") and job.status == "validating_files" and job.seed == 7
    job = wait(c, job.id)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model == f"ft:tiny:acme:support:{job.id.removeprefix('ftjob-')}"
    assert job.trained_tokens and job.finished_at >= job.created_at and job.result_files
    assert job.method.supervised.hyperparameters.n_epochs == 2 and job.metadata == {"team": "support"}

    events = list(reversed(c.fine_tuning.jobs.list_events(job.id, limit=100).data))
    messages = [e.message for e in events]
    assert messages[0].startswith("Validating training file") and "moving job to queued state" in messages[1]
    assert messages[-1] == "The job has successfully completed"
    steps = [e.data for e in events if e.type == "metrics" and "train_loss" in e.data]
    assert steps and steps[-1]["step"] == steps[-1]["total_steps"] and all(s["train_loss"] > 0 for s in steps)
    assert any("valid_loss" in e.data for e in events if e.type == "metrics")
    page = c.fine_tuning.jobs.list_events(job.id, limit=2)
    assert len(page.data) == 2 and page.has_more
    after = c.fine_tuning.jobs.list_events(job.id, limit=2, after=page.data[-1].id)
    assert after.data[0].id not in {e.id for e in page.data}

    ckpts = c.fine_tuning.jobs.checkpoints.list(job.id).data
    assert ckpts and ckpts[0].step_number >= ckpts[-1].step_number
    assert ckpts[0].fine_tuned_model_checkpoint == f"{job.fine_tuned_model}:ckpt-step-{ckpts[0].step_number}"
    assert ckpts[0].metrics.train_loss is not None

    t0 = time.perf_counter()
    assert isinstance(answer(c, job.fine_tuned_model), str)
    assert time.perf_counter() - t0 < 30  # the timing goal is measured in bench/jobs_service.py, not here
    assert job.fine_tuned_model in [m.id for m in c.models.list().data]
    assert isinstance(answer(c, ckpts[-1].fine_tuned_model_checkpoint), str)  # checkpoints serve too

    csv_text = c.files.content(job.result_files[0]).text
    assert csv_text.startswith("step,train_loss,valid_loss")
    with urllib.request.urlopen(urllib.request.Request(
            f"{server}/v1/fine_tuning/jobs/{job.id}/report", headers={"authorization": "Bearer key-a"})) as r:
        assert b"Run report" in r.read()
    assert [j.id for j in c.fine_tuning.jobs.list(metadata={"team": "support"}).data] == [job.id]
    assert c.fine_tuning.jobs.list(metadata={"team": "other"}).data == []

    assert c.models.delete(job.fine_tuned_model).deleted
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model=job.fine_tuned_model, messages=[{"role": "user", "content": "hi"}])


def test_dpo_job_on_preference_pairs(server: str, tmp_path: Path) -> None:
    c = client(server)
    pairs = [{"input": {"messages": [{"role": "user", "content": q}]},
              "preferred_output": [{"role": "assistant", "content": good}],
              "non_preferred_output": [{"role": "assistant", "content": bad}]}
             for q, good, bad in [("where is my card", "my card has not arrived yet", "no"),
                                  ("hello", "hello how can I help", "what")] * 8]
    f = upload(c, write_jsonl(tmp_path / "pairs.jsonl", pairs))
    job = c.fine_tuning.jobs.create(model="tiny", training_file=f.id, suffix="prefs",
                                    method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 1}}},
                                    extra_body={"tunelab": {"config": QUICK}})
    job = wait(c, job.id)
    assert job.status == "succeeded", job.error
    assert job.method.dpo.hyperparameters.beta == 0.2
    assert isinstance(answer(c, job.fine_tuned_model), str)


def test_a_bad_file_fails_in_validation_with_its_lines(server: str, tmp_path: Path) -> None:
    c = client(server)
    rows = [json.loads(x) for x in write_chat(tmp_path / "ok.jsonl", 6).read_text().splitlines()]
    rows[2] = {"messages": [{"role": "user", "content": "no answer here"}]}
    rows.append("{not json")
    f = upload(c, write_jsonl(tmp_path / "tickets.jsonl", rows))
    job = wait(c, c.fine_tuning.jobs.create(model="tiny", training_file=f.id).id)
    assert job.status == "failed" and job.error.code == "invalid_training_file"
    assert job.error.param == "training_file"
    msg = job.error.message
    assert f"tickets.jsonl ({f.id}):3" in msg and f"tickets.jsonl ({f.id}):7" in msg, msg
    assert str(tmp_path) not in msg  # the server's own paths stay private
    # the same check before any job, as the web UI shows it (a tunelab extension of the files API)
    report = c.post(f"/files/{f.id}/check", body={"max_length": 256}, cast_to=object)
    assert report["file_id"] == f.id and report["ok"] is False and report["rows"] == 7
    assert [p["where"] for p in report["errors"]] == ["tickets.jsonl:3", "tickets.jsonl:7"]
    assert report["formats"] == {"tickets.jsonl": "chat"} and report["length_histogram"]
    with pytest.raises(openai.NotFoundError):
        client(server, "key-b").post(f"/files/{f.id}/check", body={}, cast_to=object)
    odd = upload(c, write_jsonl(tmp_path / 'odd"name\\x.jsonl', rows[:2]))  # quotes and backslashes in the name
    report = c.post(f"/files/{odd.id}/check", body={}, cast_to=object)
    assert report["errors"] == [] and report["formats"] == {odd.filename: "chat"}


def test_bad_requests_say_which_parameter(server: str, tmp_path: Path) -> None:
    c = client(server)
    f = upload(c, write_chat(tmp_path / "a.jsonl", 4))
    cases = [(dict(model="gpt-4o", training_file=f.id), "model"),
             (dict(model="tiny", training_file="file-nope"), "training_file"),
             (dict(model="tiny", training_file=f.id,
                   method={"type": "supervised", "supervised": {"hyperparameters": {"beta": 0.1}}}), "beta"),
             (dict(model="tiny", training_file=f.id, extra_body={"tunelab": {"config": {"train.packing": "x"}}}),
              "train.packing"),
             (dict(model="tiny", training_file=f.id, extra_body={"tunelab": {"config": {"data.train": "/etc"}}}),
              "data.train")]
    for kwargs, said in cases:
        with pytest.raises((openai.BadRequestError, openai.NotFoundError)) as err:
            c.fine_tuning.jobs.create(**kwargs)
        text = str(err.value) + json.dumps(err.value.body)  # the message, and the parameter it names
        assert said in text, (kwargs, text)


def test_a_sweep_job_pauses_resumes_and_serves_its_best_trial(server: str, tmp_path: Path) -> None:
    c = client(server)
    f = upload(c, write_chat(tmp_path / "sweep.jsonl", 40))
    with pytest.raises(openai.BadRequestError) as bad:
        c.fine_tuning.jobs.create(model="tiny", training_file=f.id, extra_body={"tunelab": {"sweep": {"trials": 0}}})
    assert bad.value.body["param"] == "tunelab.sweep.trials"  # type: ignore[index]
    sweep = {"trials": 2, "space": {"train.learning_rate": [0.02, 0.005]}}
    # 128 steps a trial (seconds): the pause, a SIGINT at the worker's next heartbeat (2 s), lands while trial 0 trains
    job = c.fine_tuning.jobs.create(model="tiny", training_file=f.id, suffix="swept", extra_body={"tunelab": {
        "config": QUICK | {"train.epochs": 8, "train.batch_size": 2}, "sweep": sweep}})
    # paused once trial 0 has logged a step: its run's own Ctrl-C handler then finishes the step and stops it; a
    # SIGINT that lands while the trial still loads (Python's KeyboardInterrupt) can be lost in a finalizer
    deadline = time.time() + 120
    while not any(e.type == "metrics" and (e.data or {}).get("trial") == 0
                  for e in c.fine_tuning.jobs.list_events(job.id, limit=100).data):
        assert time.time() < deadline, "the sweep's first trial never trained"
        time.sleep(0.2)
    assert wait(c, c.fine_tuning.jobs.pause(job.id).id, until=("paused",)).status == "paused"
    c.fine_tuning.jobs.resume(job.id)
    job = wait(c, job.id, timeout=300)
    assert job.status == "succeeded", job.error
    events = list(reversed(list(c.fine_tuning.jobs.list_events(job.id, limit=100))))  # every page
    messages = [e.message for e in events]
    assert "Sweep continues: finished trials are kept, an interrupted one runs again" in messages
    assert len([m for m in messages if m.startswith("Trial") and " finished: eval_loss" in m]) == 2
    assert any(e.type == "metrics" and "trial" in e.data for e in events)  # the trials' steps, marked
    best = next(e.data["best"] for e in events if e.message.startswith("Best: trial"))
    assert job.model_extra["tunelab"]["run_dir"] == best["run_dir"]  # type: ignore[index]
    assert isinstance(answer(c, job.fine_tuned_model), str)
    auth = {"authorization": "Bearer key-a"}
    with urllib.request.urlopen(urllib.request.Request(server + job.model_extra["tunelab"]["sweep_report"],  # type: ignore[index]
                                                       headers=auth)) as r:
        page = r.read().decode()
    assert "Best: trial" in page and 'href="trial-' in page
    trial = page.split('href="', 1)[1].split('"', 1)[0]
    with urllib.request.urlopen(urllib.request.Request(
            f"{server}/v1/fine_tuning/jobs/{job.id}/sweep/{trial}", headers=auth)) as r:
        assert b"Run report" in r.read()
    # the web UI's job page links the same pages, for a signed-in browser
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
    browser.open(urllib.request.Request(f"{server}/sign-in", data=b"key=key-a&next=/", method="POST"))
    assert "Best: trial" in browser.open(f"{server}/jobs/{job.id}/sweep/").read().decode()
    assert b"Run report" in browser.open(f"{server}/jobs/{job.id}/sweep/{trial}").read()


def test_cancel_pause_and_resume(server: str, tmp_path: Path) -> None:
    c = client(server)
    f = upload(c, write_chat(tmp_path / "long.jsonl", 40))
    slow = QUICK | {"train.max_steps": 400, "train.batch_size": 2, "train.save_every": 10, "data.val_fraction": 0}
    job = c.fine_tuning.jobs.create(model="tiny", training_file=f.id, extra_body={"tunelab": {"config": slow}})
    wait(c, job.id, until=("running",))
    deadline = time.time() + 120
    while not c.fine_tuning.jobs.checkpoints.list(job.id).data and time.time() < deadline:
        time.sleep(0.3)
    paused = wait(c, c.fine_tuning.jobs.pause(job.id).id, until=("paused",))
    assert paused.status == "paused"
    step = c.fine_tuning.jobs.checkpoints.list(job.id).data[0].step_number
    assert c.fine_tuning.jobs.resume(job.id).status == "queued"
    wait(c, job.id, until=("running",))
    continues = [e.message for e in c.fine_tuning.jobs.list_events(job.id, limit=100).data]
    assert any("continues from its last checkpoint" in m for m in continues)
    t0 = time.time()
    c.fine_tuning.jobs.cancel(job.id)
    job = wait(c, job.id)
    assert job.status == "cancelled" and time.time() - t0 < 30 and step >= 10
    with pytest.raises(openai.BadRequestError, match="nothing to cancel"):
        c.fine_tuning.jobs.cancel(job.id)


def test_projects_see_only_their_own(server: str, tmp_path: Path) -> None:
    a, b = client(server, "key-a"), client(server, "key-b")
    f = upload(a, write_chat(tmp_path / "mine.jsonl", 4))
    job = a.fine_tuning.jobs.create(model="tiny", training_file=f.id, extra_body={"tunelab": {"config": QUICK}})
    for call in (lambda: b.files.retrieve(f.id), lambda: b.files.content(f.id), lambda: b.files.delete(f.id),
                 lambda: b.fine_tuning.jobs.retrieve(job.id), lambda: b.fine_tuning.jobs.cancel(job.id),
                 lambda: b.fine_tuning.jobs.list_events(job.id)):
        with pytest.raises(openai.NotFoundError):
            call()
    with pytest.raises(openai.NotFoundError):
        b.files.retrieve("file-doesnotexist")
    assert f.id not in [x.id for x in b.files.list().data] and f.id in [x.id for x in a.files.list().data]
    done = wait(a, job.id)
    assert done.status == "succeeded", done.error
    answer(a, done.fine_tuned_model)
    assert done.fine_tuned_model not in [m.id for m in b.models.list().data]
    with pytest.raises(openai.NotFoundError):
        b.chat.completions.create(model=done.fine_tuned_model, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.NotFoundError):
        b.models.delete(done.fine_tuned_model)
    reply = a.chat.completions.create(model=done.fine_tuned_model, messages=[{"role": "user", "content": "hi"}],
                                      max_tokens=2)
    for key, code in (("key-b", 404), ("key-a", 201)):  # feedback on another project's answer: unknown
        req = urllib.request.Request(f"{server}/v1/feedback", method="POST",
                                     data=json.dumps({"request_id": reply.id, "rating": "up"}).encode(),
                                     headers={"authorization": f"Bearer {key}", "content-type": "application/json"})
        try:
            status = urllib.request.urlopen(req).status
        except urllib.error.HTTPError as exc:
            status = exc.code
        assert status == code, key
    # the model's monitor and review queue are its project's only; feedback without the conversations' text
    # (this server keeps none) can't make a next round, and the error says how to change that
    monitor = a.get(f"/tunelab/models/{done.fine_tuned_model}/monitor?since=1h&buckets=4", cast_to=object)
    assert monitor["summary"]["requests"] >= 2 and len(monitor["series"]) == 4 and monitor["logs_content"] is False
    queue = a.get(f"/tunelab/models/{done.fine_tuned_model}/requests", cast_to=object)["data"]
    assert queue[0]["id"] == reply.id and queue[0]["feedback"][0]["rating"] == "up" and queue[0]["completion"] is None
    for path in ("monitor", "requests"):
        with pytest.raises(openai.NotFoundError):
            b.get(f"/tunelab/models/{done.fine_tuned_model}/{path}", cast_to=object)
    with pytest.raises(openai.NotFoundError):  # a shared model's log holds every project's conversations
        a.get("/tunelab/models/tiny/requests", cast_to=object)
    with pytest.raises(openai.BadRequestError, match="suffix"):
        a.post(f"/fine_tuning/jobs/{job.id}/next_round", body={"suffix": "my model"}, cast_to=object)
    with pytest.raises(openai.BadRequestError, match="--log-content"):
        a.post(f"/fine_tuning/jobs/{job.id}/next_round", body={}, cast_to=object)
    with pytest.raises(openai.NotFoundError):
        b.post(f"/fine_tuning/jobs/{job.id}/next_round", body={}, cast_to=object)
    with pytest.raises(openai.AuthenticationError):
        client(server, "wrong").files.list()
    req = urllib.request.Request(f"{server}/v1/fine_tuning/jobs")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req)
    assert err.value.code == 401


def test_uploads_over_the_limit_and_hostile_names(server: str, tmp_path: Path) -> None:
    c = client(server)
    big = tmp_path / "big.jsonl"
    big.write_text("x" * 300_000)
    with pytest.raises(openai.APIStatusError) as err:
        upload(c, big)
    assert err.value.status_code == 413
    evil = c.files.create(file=("../../etc/passwd", b'{"text": "hi"}\n'), purpose="fine-tune")
    assert evil.filename == "passwd"  # kept as metadata, without its folders (jobs/files.py clean_filename)
    assert c.files.content(evil.id).text == '{"text": "hi"}\n'
    with pytest.raises(openai.BadRequestError, match="purpose"):
        c.files.create(file=("x.jsonl", b"{}\n"), purpose="assistants")
    assert c.files.delete(evil.id).deleted
    with pytest.raises(openai.NotFoundError):
        c.files.retrieve(evil.id)


def test_reinforcement_job_with_a_grader(server: str, tmp_path: Path) -> None:
    c = client(server)
    rows = [{"messages": [{"role": "user", "content": f"what is {i} + 1"}], "answer": str(i + 1)} for i in range(8)]
    f = upload(c, write_jsonl(tmp_path / "rft.jsonl", rows))
    grader = {"type": "string_check", "name": "right", "input": "{{sample.output_text}}",
              "reference": "{{item.answer}}", "operation": "like"}
    job = c.fine_tuning.jobs.create(
        model="tiny", training_file=f.id, method={"type": "reinforcement", "reinforcement": {"grader": grader}},
        extra_body={"tunelab": {"config": QUICK | {"train.max_steps": 2, "rl.num_generations": 2,
                                                   "rl.max_completion_tokens": 8}}})
    job = wait(c, job.id)
    assert job.status == "succeeded", job.error
    assert job.method.type == "reinforcement" and job.method.reinforcement.grader.reference == "{{item.answer}}"
    assert isinstance(answer(c, job.fine_tuned_model), str)


def test_a_score_model_grader_asks_this_servers_model(server: str, tmp_path: Path) -> None:
    """A job's score_model grader names a model this server serves: the job's graders reach it with a key of
    the job's project, and the server logs their requests."""
    c = client(server)

    def asked() -> float:
        req = urllib.request.Request(f"{server}/metrics", headers={"authorization": "Bearer key-a"})
        text = urllib.request.urlopen(req).read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("tunelab_requests_total{") and 'model="tiny"' in line
                   and 'endpoint="chat"' in line and 'status="200"' in line)

    before = asked()
    rows = [{"messages": [{"role": "user", "content": f"say {i}"}], "answer": str(i)} for i in range(4)]
    f = upload(c, write_jsonl(tmp_path / "scored.jsonl", rows))
    grader = {"type": "score_model", "name": "judge", "model": "tiny", "range": [0, 1],
              "sampling_params": {"max_completions_tokens": 4},
              "input": [{"role": "user", "content": "Score 0 to 1: {{sample.output_text}} vs {{item.answer}}"}]}
    job = c.fine_tuning.jobs.create(
        model="tiny", training_file=f.id, method={"type": "reinforcement", "reinforcement": {"grader": grader}},
        extra_body={"tunelab": {"config": QUICK | {"train.max_steps": 1, "rl.num_generations": 2,
                                                   "rl.max_completion_tokens": 4, "data.val_fraction": 0}}})
    job = wait(c, job.id)
    assert job.status == "succeeded", job.error
    assert asked() - before >= 4  # every answer of the step was sent to the judge on this server


def test_graders_can_be_tried_before_a_job(server: str) -> None:
    c = client(server)
    grader = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
              "reference": "{{item.city}}", "operation": "eq"}
    run = c.fine_tuning.alpha.graders.run(grader=grader, model_sample="Paris", item={"city": "Paris"})
    assert run.reward == 1.0 and run.metadata.name == "exact"
    assert c.fine_tuning.alpha.graders.run(grader=grader, model_sample="Rome", item={"city": "Paris"}).reward == 0.0
    multi = {"type": "multi", "name": "both", "calculate_output": "0.5 * a + 0.5 * b",
             "graders": {"a": grader, "b": grader | {"operation": "ne"}}}
    both = c.fine_tuning.alpha.graders.run(grader=multi, model_sample="Paris", item={"city": "Paris"})
    assert both.reward == 0.5 and set(both.sub_rewards) == {"a", "b"}
    assert c.fine_tuning.alpha.graders.validate(grader=grader).grader.name == "exact"
    with pytest.raises(openai.BadRequestError, match="operation"):
        c.fine_tuning.alpha.graders.validate(grader=grader | {"operation": "almost"})


def test_the_shell_commands(server: str, tmp_path: Path) -> None:
    env = {"TUNELAB_URL": server + "/v1", "TUNELAB_API_KEY": "key-a"}
    data = write_chat(tmp_path / "cli.jsonl", 12)
    r = tunelab_cli("jobs", "create", data, "--model", "tiny", "--suffix", "cli", "--epochs", "1", "--set",
                    "train.threads=1", "--set", "eval.probes.enabled=false", "--set", "data.val_fraction=0", "--wait",
                    cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    job_id = r.stdout.split()[0]
    assert job_id.startswith("ftjob-") and "succeeded" in r.stderr and "ft:tiny:acme:cli:" in r.stderr
    assert "Fine-tuning job started" in r.stderr  # the events, as they came
    assert job_id in tunelab_cli("jobs", "list", cwd=tmp_path, env=env).stderr
    shown = json.loads(tunelab_cli("jobs", "show", job_id, "--json", cwd=tmp_path, env=env).stdout)
    assert shown["status"] == "succeeded" and shown["method"]["supervised"]["hyperparameters"]["n_epochs"] == 1
    assert "The job has successfully completed" in tunelab_cli("jobs", "events", job_id, cwd=tmp_path, env=env).stderr
    r = tunelab_cli("jobs", "cancel", job_id, cwd=tmp_path, env=env)
    assert r.returncode == 2 and "nothing to cancel" in r.stderr
    r = tunelab_cli("jobs", "show", "ftjob-nope", cwd=tmp_path, env=env)
    assert r.returncode == 2 and "No such fine-tuning job" in r.stderr and "Traceback" not in r.stderr
    r = tunelab_cli("jobs", "list", cwd=tmp_path, env=env | {"TUNELAB_API_KEY": "wrong"})
    assert r.returncode == 2 and "401" in r.stderr
