"""`tunelab data synth` through the CLI: against fake teachers that answer well, time out or talk nonsense
(tests/data/synth/fake_teacher.py), and against a real one: `tunelab serve` on the default model, with a run
killed half way and resumed from its cache."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import CLI_ENV, config, fake_teacher, free_port, teacher_calls, tunelab_cli, wait_up

pytestmark = pytest.mark.e2e
DATA = Path(__file__).parents[1] / "data" / "synth"
SEEDS = DATA / "seeds_chat.jsonl"




def _no_traceback(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr


def test_synth_from_documents_then_data_check(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "synth"
    with fake_teacher("good") as url:
        r = tunelab_cli("data", "synth", "--documents", DATA / "docs", "--out", out, "--base-url", url,
                        "--chunk-words", "40", "--overlap", "10", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "rows kept" in r.stderr and "dropped: ungrounded" in r.stderr and "OK" in r.stderr
    summary = json.loads((out / "synth.json").read_text())
    assert summary["kept"] == len((out / "synthetic.jsonl").read_text().splitlines()) > 5
    check = tunelab_cli("data", "check", out / "synthetic.jsonl", "--model", tiny_model, "--json", cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    assert json.loads(check.stdout)["valid_rows"] == summary["kept"]


@pytest.mark.parametrize(("mode", "args", "message"), [
    ("garbage", (), "gave no usable rows: 4 requests, 4 answered (0 from the cache); 0 parsed; 4 dropped as "
                    "unparsable (e.g. 'Lorem ipsum"),
    ("slow", ("--timeout", "0.5", "--max-retries", "0", "--concurrency", "2"),
     "the first 3 requests all failed, the last with: timed out after 0.5 s (0 retries)"),
    ("badshape", (), "a reply without a message (not a chat completion)"),
])
def test_a_bad_teacher_is_a_clear_error_and_leaves_nothing_half_written(mode: str, args: tuple[str, ...],
                                                                       message: str, tmp_path: Path) -> None:
    out = tmp_path / "synth"
    with fake_teacher(mode, "--delay", "3") as url:
        r = tunelab_cli("data", "synth", SEEDS, "--out", out, "--n", "4", "--base-url", url, *args, cwd=tmp_path)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    _no_traceback(r.stderr)
    assert not (out / "synthetic.jsonl").exists() and not (out / "synth.json").exists()
    assert [p.name for p in out.iterdir()] == ["teacher-cache.sqlite"]


def test_no_teacher_there(tmp_path: Path) -> None:
    r = tunelab_cli("data", "synth", SEEDS, "--out", tmp_path / "o", "--base-url",
                    f"http://127.0.0.1:{free_port()}/v1", "--max-retries", "0", cwd=tmp_path)
    assert r.returncode == 2 and "unreachable: start one with `tunelab serve` or give --base-url" in r.stderr
    _no_traceback(r.stderr)
    r = tunelab_cli("data", "synth", "--out", tmp_path / "o", cwd=tmp_path)
    assert r.returncode == 2 and "one of the two" in r.stderr


@pytest.mark.parametrize("mode", ["head", "generate"])
def test_a_trained_classifier_relabels_the_new_rows(mode: str, tiny_model: Path, tmp_path: Path) -> None:
    import tunelab
    from tunelab.eval.classifier import load_classifier

    seeds = DATA / "seeds_labels.jsonl"
    run = tunelab.train(config(tiny_model, tmp_path, f"cls-{mode}", seeds, "task=classification",
                               f"classification.mode={mode}", "train.max_steps=2", "train.batch_size=4")).run_dir
    out = tmp_path / "synth"
    with fake_teacher("good") as url:
        r = tunelab_cli("data", "synth", seeds, "--out", out, "--per-label", "5", "--base-url", url,
                        "--relabel-with", run, "--teacher-check", "6", "--json", cwd=tmp_path)
        assert teacher_calls(url) == 3 + 6  # the utterances, then the sampled check; the model relabelled the rest
    _no_traceback(r.stderr)
    if r.returncode == 2:  # a two-step tiny model may well disagree with every new row
        assert "dropped as relabel_disagrees" in r.stderr, r.stderr
        return
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["relabel"]["by"] == {"kind": "model", "model": str(run), "mode": mode, "labels": 3}
    assert s["relabel"]["rows"] == 15 and s["relabel"]["teacher_check"]["rows"] == 6
    assert "relabel" not in s["phases"] and s["phases"]["teacher_check"]["requested"] == 6
    rows = [json.loads(line) for line in (out / "synthetic.jsonl").read_text().splitlines()]
    clf = load_classifier(str(run))
    assert clf([row["text"] for row in rows]) == [row["label"] for row in rows]  # kept: the model agrees


def test_relabel_with_a_model_that_is_no_classifier(tiny_model: Path, tmp_path: Path) -> None:
    r = tunelab_cli("data", "synth", DATA / "seeds_labels.jsonl", "--out", tmp_path / "o", "--relabel-with",
                    tiny_model, cwd=tmp_path)
    assert r.returncode == 2 and "is not a tunelab run: a classifier is a run trained with task: classification" in \
        r.stderr, r.stderr
    _no_traceback(r.stderr)
    r = tunelab_cli("data", "synth", DATA / "seeds_labels.jsonl", "--out", tmp_path / "o", "--teacher-check", "3",
                    cwd=tmp_path)
    assert r.returncode == 2 and "give --relabel-with too" in r.stderr


def _cached(out: Path) -> int:
    try:
        with contextlib.closing(sqlite3.connect(out / "teacher-cache.sqlite", timeout=5)) as db:
            return int(db.execute("SELECT COUNT(*) FROM replies").fetchone()[0])
    except sqlite3.OperationalError:  # not created yet
        return 0




def _kill_once_cached(args: list[str], out: Path, cwd: Path, at_least: int) -> int:
    """Start `tunelab ARGS` as a process, SIGKILL it once at_least replies are cached; the replies cached."""
    proc = subprocess.Popen([sys.executable, "-m", "tunelab.cli.main", *map(str, args)], cwd=cwd,
                            env=os.environ | CLI_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while _cached(out) < at_least and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    proc.kill()
    proc.communicate(timeout=30)
    return _cached(out)


def test_a_killed_run_resumes_without_asking_again(tmp_path: Path) -> None:
    out = tmp_path / "synth"
    with fake_teacher("slow", "--delay", "0.5") as url:
        done = _kill_once_cached(["data", "synth", SEEDS, "--out", out, "--n", "8", "--base-url", url,
                                  "--concurrency", "2"], out, tmp_path, 2)
    assert 2 <= done < 8 and [p.name for p in out.iterdir()] == ["teacher-cache.sqlite"]
    with fake_teacher("good") as url:  # the same model name: the cached replies are its own
        r = tunelab_cli("data", "synth", SEEDS, "--out", out, "--n", "8", "--base-url", url, "--json", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert teacher_calls(url) == 8 - done and json.loads(r.stdout)["cache_hits"] == done
    assert (out / "synth.json").exists() and (out / "synthetic.jsonl").exists()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_synth_with_the_default_model_as_teacher_resumes_from_its_cache(tmp_path: Path) -> None:
    """A real teacher over HTTP: a run killed once some replies are cached leaves no output; the next run asks
    only for the rest; with the teacher gone, a third run still finishes, from the cache alone."""
    port, out = free_port(), tmp_path / "synth"
    env = os.environ | CLI_ENV
    serve = subprocess.Popen([sys.executable, "-m", "tunelab.cli.main", "serve", "--port", str(port), "--data",
                              str(tmp_path / "serve")], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    base_url = f"http://127.0.0.1:{port}/v1"
    # settings measured on SmolLM2-135M: at 0.7 it copies seeds less and writes JSON more often than at 0.9
    args = ["data", "synth", SEEDS, "--out", out, "--n", "12", "--base-url", base_url, "--examples", "2",
            "--temperature", "0.7", "--max-tokens", "96", "--concurrency", "6", "--json"]
    try:
        wait_up(f"http://127.0.0.1:{port}", serve, timeout=180)
        done = _kill_once_cached(args, out, tmp_path, 3)
        assert 3 <= done < 12, done
        assert not (out / "synthetic.jsonl").exists() and not (out / "synth.json").exists()

        t0 = time.perf_counter()
        r = tunelab_cli(*args, cwd=tmp_path)
        seconds = time.perf_counter() - t0
        assert r.returncode == 0, r.stderr
        s = json.loads(r.stdout)
        assert s["requests"] == s["answered"] == 12 and s["cache_hits"] == done  # nothing finished was asked again
        assert s["teacher"]["model"] == "smollm2-135m-instruct" and s["check"]["ok"]
        rows = [json.loads(line) for line in (out / "synthetic.jsonl").read_text().splitlines()]
        assert 1 <= len(rows) == s["kept"]
        assert all(row["tunelab_synth"]["teacher"]["base_url"] == base_url for row in rows)
        print(f"\nteacher smollm2-135m-instruct: {12 - done} requests in {seconds:.0f} s, {len(rows)} of 12 rows kept, "
              f"dropped {s['dropped']}")
    finally:
        serve.send_signal(signal.SIGINT)
        serve.communicate(timeout=60)
    again = tunelab_cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["cache_hits"] == 12
    assert [json.loads(line) for line in (out / "synthetic.jsonl").read_text().splitlines()] == rows
