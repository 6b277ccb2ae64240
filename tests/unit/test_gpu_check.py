"""bench/gpu_check.py's own logic, on the CPU: paths run isolated and are recorded ok / failed / skipped with the
reason, a failure makes the exit status non-zero, and without a GPU (and without --cpu) everything is skipped."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from tests.helpers import CLI_ENV

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_without_a_gpu_every_path_is_skipped(gpu_check: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    assert gpu_check.main(["--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["paths"]) == set(gpu_check.PATHS)
    assert all(r == {"status": "skipped", "reason": "no CUDA GPU on this machine"} for r in result["paths"].values())


def test_a_failing_path_is_recorded_and_fails_the_check(gpu_check: ModuleType, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A child whose check raises writes failed with the error; the parent goes on and exits 1."""
    def boom(args: object) -> dict:
        raise RuntimeError("CUDA error: out of memory")

    monkeypatch.setitem(gpu_check.CHECKS, "dpo", boom)
    args = gpu_check.argparse.Namespace(child="dpo", out=tmp_path / "dpo.json", cpu=True)
    assert gpu_check.child_main(args) == 0
    got = json.loads((tmp_path / "dpo.json").read_text())
    assert got["status"] == "failed" and got["reason"] == "RuntimeError: CUDA error: out of memory"

    ran = []

    def fake_child(name: str, args: object, work: Path, timeout: float) -> dict:
        ran.append(name)
        return got if name == "dpo" else {"status": "ok", "tokens_per_s": 1.0}

    monkeypatch.setattr(gpu_check, "run_child", fake_child)
    monkeypatch.setattr(gpu_check, "prepare", lambda work, tiny: None)
    out = tmp_path / "r.json"
    assert gpu_check.main(["--cpu", "--paths", "dpo,grpo", "--json", str(out)]) == 1
    assert ran == ["dpo", "grpo"]  # the failure did not stop the next path
    assert json.loads(out.read_text())["paths"]["grpo"]["status"] == "ok"


def test_cpu_run_of_two_paths(tiny_model: Path, tmp_path: Path) -> None:
    """The real script on the CPU with the tiny model: LoRA trains in its own process and reports its speed;
    FSDP is recorded as skipped with the reason."""
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--cpu", "--tiny", "--paths", "lora_bf16,fsdp_full",
                           "--model", str(tiny_model), "--json", str(out)], capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, **CLI_ENV})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    paths = json.loads(out.read_text())["paths"]
    assert paths["lora_bf16"]["status"] == "ok", paths["lora_bf16"]
    assert paths["lora_bf16"]["tokens_per_s"] > 0 and paths["lora_bf16"]["steps"] == 2
    assert paths["fsdp_full"]["status"] == "skipped" and "GPU" in paths["fsdp_full"]["reason"]
