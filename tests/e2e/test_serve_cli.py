"""`tunelab serve` as a user starts it (a subprocess), with a trained run as its adapter; then
`tunelab monitor` and `tunelab feedback export` on what it logged."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import openai
import torch

from tests.helpers import build_tiny_model, config, free_port, tunelab_cli, wait_up, write_chat
from tunelab.recipes import dispatch

SYSTEM = "You answer bank customers."


def test_serve_monitor_feedback_through_the_cli(tmp_path: Path) -> None:
    base = build_tiny_model(tmp_path / "chatty", init_std=0.2)
    data = write_chat(tmp_path / "data" / "train.jsonl", 40)
    run = dispatch.run(config(base, tmp_path, "bot", data, "train.max_steps=2", f"data.system_prompt={SYSTEM}",
                         "eval.compare_base=false")).run_dir
    port, serve_data = free_port(), tmp_path / "serve"
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tunelab.cli.main", "serve", "--model", str(base), "--name", "base",
         "--adapter", f"bot={run}", "--port", str(port), "--data", str(serve_data), "--log-content",
         "--api-key", "secret"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_up(url, proc)
        c = openai.OpenAI(base_url=url + "/v1", api_key="secret", max_retries=0)
        assert [m.id for m in c.models.list().data] == ["base", "bot"]
        off_topic = ["please summarise this contract clause about indemnity and liability " * 6 + str(i)
                     for i in range(24)]
        for p in off_topic:
            c.chat.completions.create(model="bot", messages=[{"role": "user", "content": p}], max_tokens=6,
                                      temperature=0)
        # the run's system prompt is applied, as in training
        r = c.chat.completions.create(model="bot", messages=[{"role": "user", "content": "hello"}], max_tokens=4)
        with_system = c.chat.completions.create(
            model="bot", messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hello"}],
            max_tokens=4, temperature=0)
        assert r.usage.prompt_tokens == with_system.usage.prompt_tokens
        # two sampled answers to one prompt, one liked and one not: a preference pair
        liked, disliked = (c.chat.completions.create(model="bot", messages=[{"role": "user", "content": "hi"}],
                                                     max_tokens=6, temperature=1.0, seed=s).id for s in (1, 2))
        for request_id, rating in ((liked, "up"), (disliked, "down")):
            body = json.dumps({"request_id": request_id, "rating": rating}).encode()
            req = urllib.request.Request(url + "/v1/feedback", data=body, method="POST", headers={
                "content-type": "application/json", "authorization": "Bearer secret"})
            with urllib.request.urlopen(req) as resp:
                assert resp.status == 201
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "bot" in err and "API keys required" in err

    mon = tunelab_cli("monitor", "--data", serve_data, "--json", cwd=tmp_path)
    assert mon.returncode == 0, mon.stderr
    rep = json.loads(mon.stdout)
    bot = next(m for m in rep["models"] if m["model"] == "bot")
    assert bot["requests"] == 28 and bot["errors"] == 0 and bot["latency_ms"]["p50"] > 0
    drift = next(d for d in rep["drift"] if d["adapter"] == "bot")
    assert drift["training"] == 40 and drift["recent"] == 28
    assert drift["drifted"] and "longer than in training" in drift["message"]
    text = tunelab_cli("monitor", "--data", serve_data, "--since", "2h", cwd=tmp_path)
    assert text.returncode == 0 and "has drifted" in text.stdout, text.stdout + text.stderr
    assert tunelab_cli("monitor", "--data", serve_data, "--since", "soon", cwd=tmp_path).returncode == 2

    exp = tunelab_cli("feedback", "export", "--adapter", "bot", "--out", tmp_path / "next", "--data", serve_data,
                      cwd=tmp_path)
    assert exp.returncode == 0, exp.stderr
    assert "2 feedback -> 1 SFT rows" in exp.stdout and "1 preference pairs" in exp.stdout
    sft_rows = [json.loads(x) for x in (tmp_path / "next" / "sft.jsonl").read_text().splitlines()]
    assert sft_rows[0]["messages"][0] == {"role": "system", "content": SYSTEM}
    # the next round trains on it as it is
    check = tunelab_cli("data", "check", tmp_path / "next" / "sft.jsonl", "--model", base, cwd=tmp_path)
    assert check.returncode == 0, check.stderr


def test_serve_refuses_a_bad_adapter_before_listening(tiny_model: Path, tmp_path: Path) -> None:
    # without --strict-adapters it serves the others (tests/e2e/test_serve_faults.py)
    r = tunelab_cli("serve", "--model", tiny_model, "--adapter", f"x={tmp_path}", "--port", str(free_port()),
                    "--data", tmp_path / "d", "--strict-adapters", cwd=tmp_path)
    assert r.returncode == 2 and "--adapter x=" in r.stderr and "not an adapter" in r.stderr
    r = tunelab_cli("serve", "--model", tiny_model, "--adapter", "nonsense", cwd=tmp_path)
    assert r.returncode == 2 and "NAME=PATH" in r.stderr


def test_monitor_drift_signal_against_its_own_noise() -> None:
    """Prompts drawn like the training prompts: no drift; shifted ones: drift, in words."""
    from tunelab.serve.monitor import drift
    from tunelab.serve.store import RequestLog, pack

    g = torch.Generator().manual_seed(0)
    train = torch.randn(200, 16, generator=g) + 3.0
    lengths = torch.randint(20, 60, (200,), generator=g).tolist()

    def logs(vectors: torch.Tensor, lens: list[int]) -> list[RequestLog]:
        return [RequestLog(id=str(i), created=0.0, endpoint="chat", model="a", status=200, prompt_tokens=n,
                           embedding=pack(v.tolist())) for i, (v, n) in enumerate(zip(vectors, lens, strict=True))]

    same = drift("a", logs(torch.randn(40, 16, generator=g) + 3.0, lengths[:40]), lengths, train.tolist())
    assert not same.drifted and "looks like its training data" in same.message
    moved = torch.randn(40, 16, generator=g) + 3.0
    moved[:, :4] += 2.0
    shifted = drift("a", logs(moved, [n * 3 for n in lengths[:40]]), lengths, train.tolist())
    assert shifted.drifted and shifted.embedding_ratio > 3 and "longer" in shifted.message
    # many recent prompts from the training distribution (half as many as the profile): still no drift
    many = drift("a", logs(torch.randn(100, 16, generator=g) + 3.0, lengths[:100]), lengths, train.tolist())
    assert not many.drifted and many.embedding_ratio < 2, many
    few = drift("a", logs(moved[:5], lengths[:5]), lengths, train.tolist())
    assert not few.drifted and "not enough traffic" in few.message
