"""Model references: HF directory, tunelab run directory (base + adapter), unfinished runs, hub ids
without a network, paths that don't exist: each loads, or fails fast with a message that says why."""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
import torch

import tunelab
from tests.helpers import tunelab_cli
from tunelab.models.load import ModelError, resolve


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    """A completed LoRA run on the tiny model."""
    d = tmp_path_factory.mktemp("load")
    data = d / "train.jsonl"
    rows = [("hello", "the quick brown fox"), ("where is my card", "my card has not arrived yet")]
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": u},
                                                     {"role": "assistant", "content": a}]}) + "\n"
                            for u, a in rows * 2))
    cfg = tunelab.load_config(None, [
        "name=tuned", f"output_dir={d / 'runs'}", f"model.base={tiny_model}", f"data.train={data}",
        "data.val_fraction=0", "train.max_steps=2", "train.batch_size=2", "train.learning_rate=1e-2",
        "data.system_prompt=You are terse.", "train.threads=1", "eval.probes.enabled=false"])
    result = tunelab.train(cfg)
    assert result.status == "completed"
    return result.run_dir


def test_hf_directory(tiny_model: Path) -> None:
    lm = tunelab.load(str(tiny_model))
    assert lm.resolved.kind == "dir" and lm.resolved.adapter is None and lm.labels is None
    assert not hasattr(lm.model, "peft_config") and not lm.model.training
    assert lm.tokenizer.pad_token is not None


@pytest.mark.parametrize("as_path", [False, True])
def test_run_directory_is_base_plus_adapter(run_dir: Path, tiny_model: Path, as_path: bool) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    lm = tunelab.load(run_dir if as_path else str(run_dir))  # type: ignore[arg-type]
    r = lm.resolved
    assert (r.kind, r.path, r.run, r.adapter) == ("run", str(tiny_model), run_dir, run_dir / "adapter")
    assert isinstance(lm.model, PeftModel) and not lm.model.training
    assert lm.tokenizer.name_or_path == str(run_dir / "tokenizer")

    # the same function as base + adapter loaded by hand with peft
    base_model = AutoModelForCausalLM.from_pretrained(str(tiny_model))
    ref = PeftModel.from_pretrained(base_model, str(run_dir / "adapter"))
    ref.eval()
    ids = lm.tokenizer("hello world", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(lm.model(input_ids=ids).logits, ref(input_ids=ids).logits)
        base = AutoModelForCausalLM.from_pretrained(str(tiny_model)).eval()(input_ids=ids).logits
    assert not torch.allclose(lm.model(input_ids=ids).logits, base)  # the adapter does something

    reply = tunelab.generate(lm, "hello", max_new_tokens=4)
    assert isinstance(reply, str)


def test_run_system_prompt_is_used(run_dir: Path) -> None:
    from tunelab.data.templates import trained_system_prompt

    assert trained_system_prompt(tunelab.load(str(run_dir)).run_config()) == "You are terse."


@pytest.mark.parametrize("status", ["running", "interrupted", "failed"])
def test_unfinished_run_is_not_a_model(run_dir: Path, tmp_path: Path, status: str) -> None:
    copy = tmp_path / "unfinished"
    shutil.copytree(run_dir, copy)
    summary = json.loads((copy / "summary.json").read_text()) | {"status": status}
    (copy / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(ModelError) as err:
        tunelab.load(str(copy))
    msg = str(err.value)
    assert str(copy) in msg and "did not finish" in msg and repr(status) in msg and "--resume" in msg


def test_run_without_summary_is_not_a_model(run_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "half"
    shutil.copytree(run_dir, copy)
    (copy / "summary.json").unlink()
    with pytest.raises(ModelError, match="not a model"):
        resolve(str(copy))


def _assert_hub_error(msg: str, ref: str) -> None:
    assert ref in msg and "Hugging Face Hub" in msg and "can't be reached" in msg
    assert "local model directory" in msg  # what to do instead


def test_hub_id_offline_env_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(ModelError) as err:
        tunelab.load("someorg/somemodel")
    assert time.perf_counter() - t0 < 15
    _assert_hub_error(str(err.value), "someorg/somemodel")


def test_hub_id_unreachable_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    """No HF_HUB_OFFLINE: the reachability probe decides (here the host can't resolve)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")
    t0 = time.perf_counter()
    with pytest.raises(ModelError) as err:
        tunelab.load("someorg/somemodel")
    assert time.perf_counter() - t0 < 15
    _assert_hub_error(str(err.value), "someorg/somemodel")


def test_hub_id_with_hanging_dns_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    """A resolver that never answers (offline with a DNS server configured): socket timeouts don't cover
    name resolution, so the probe itself must be bounded."""
    release = threading.Event()
    real = socket.getaddrinfo

    def hang(host: str, *args: object, **kw: object) -> object:
        if host == "huggingface.co":
            release.wait(60)
            raise socket.gaierror("temporary failure in name resolution")
        return real(host, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.setattr(socket, "getaddrinfo", hang)
    t0 = time.perf_counter()
    try:
        with pytest.raises(ModelError) as err:
            resolve("someorg/somemodel")
    finally:
        release.set()
    assert time.perf_counter() - t0 < 15
    _assert_hub_error(str(err.value), "someorg/somemodel")


def test_cli_generate_hub_id_without_network(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"} | {"HF_ENDPOINT": "https://hub.invalid"}
    t0 = time.perf_counter()
    r = tunelab_cli("generate", "someorg/somemodel", "hi", cwd=tmp_path, env=env)
    assert time.perf_counter() - t0 < 15
    assert r.returncode == 2 and "Traceback" not in r.stderr
    _assert_hub_error(" ".join(r.stderr.split()), "someorg/somemodel")


@pytest.mark.parametrize("ref", ["./no/such/model", "/no/such/model", "no-such-alias", "~/no/such/model"])
def test_missing_path_is_a_clear_error(ref: str) -> None:
    t0 = time.perf_counter()
    with pytest.raises(ModelError) as err:
        tunelab.load(ref)
    assert time.perf_counter() - t0 < 5
    assert ref in str(err.value) and "no such file, directory or alias" in str(err.value)


def test_existing_non_model_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("not a model")
    for p in (tmp_path / "empty", tmp_path / "notes.txt"):
        with pytest.raises(ModelError, match="not a model"):
            tunelab.load(str(p))


def test_cli_generate_missing_path(tmp_path: Path) -> None:
    r = tunelab_cli("generate", "./missing-model", "hi", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "./missing-model" in r.stderr and "no such file" in r.stderr
