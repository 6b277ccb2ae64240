"""A trainer checkpoint cut short or garbled is told from a whole one, naming the file, with its manifest (sizes
and SHA-256) or, without one, by the files' own structure; a resume passes over it (runs/checkpoint.py)."""

from __future__ import annotations

import io
import json
import random
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tunelab.runs import RunDir, layout
from tunelab.runs.checkpoint import problem, set_aside, write_manifest

FILES = ("adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json")


def checkpoint(d: Path, *, manifest: bool = True) -> Path:
    """What the trainer writes into checkpoint-<step>/ for a LoRA run, in small."""
    d.mkdir(parents=True)
    torch.manual_seed(0)
    save_file({"lora_A": torch.randn(64, 8), "lora_B": torch.randn(8, 64)}, str(d / FILES[0]))
    torch.save({"state": {0: {"exp_avg": torch.randn(64, 8), "step": torch.tensor(4.0)}}}, d / FILES[1])
    torch.save({"last_epoch": 4, "_last_lr": [0.01]}, d / FILES[2])
    torch.save({"python": random.getstate(), "cpu": torch.random.get_rng_state()}, d / FILES[3])
    (d / FILES[4]).write_text(json.dumps({"global_step": 4, "log_history": [{"loss": 5.5, "step": 4}]}, indent=2))
    (d / "adapter_config.json").write_text('{"r": 8}')
    if manifest:
        write_manifest(d)
    return d


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def garble(path: Path) -> None:
    """16 bytes in the middle of the file overwritten; its length unchanged."""
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 16] = b"\xff\x00garbled\xfe\x01garbl"
    path.write_bytes(bytes(data))


def members(data: bytes) -> dict[str, bytes]:
    """What torch.load reads of a torch file (a zip): its members' bytes."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return {i.filename: z.read(i) for i in z.infolist()}


@pytest.mark.parametrize("manifest", [True, False])
def test_a_whole_checkpoint_passes(tmp_path: Path, manifest: bool) -> None:
    assert problem(checkpoint(tmp_path / "checkpoint-4", manifest=manifest)) is None


@pytest.mark.parametrize("manifest", [True, False], ids=["manifest", "structure"])
@pytest.mark.parametrize("damage", [truncate, garble])
@pytest.mark.parametrize("name", FILES)
def test_a_damaged_file_is_found_and_named(tmp_path: Path, name: str, damage: object, manifest: bool) -> None:
    d = checkpoint(tmp_path / "checkpoint-4", manifest=manifest)
    before = (d / name).read_bytes()
    damage(d / name)  # type: ignore[operator]
    found = problem(d)
    if found is None and not manifest and damage is garble:
        # without a manifest only a safetensors file's header and length are checked, not its tensors' bytes; in a
        # torch file, bytes nothing reads (alignment padding) may change unnoticed, harmlessly: the manifest is what
        # catches any change
        assert name == FILES[0] or members(before) == members((d / name).read_bytes())
        return
    assert found is not None and found.startswith(name), found
    if manifest:
        assert ("bytes" if damage is truncate else "garbled") in found


@pytest.mark.parametrize("manifest", [True, False])
def test_a_missing_file_is_named(tmp_path: Path, manifest: bool) -> None:
    d = checkpoint(tmp_path / "checkpoint-4", manifest=manifest)
    (d / "rng_state.pth").unlink()  # transformers would resume without it, quietly, with another RNG
    assert problem(d) == "rng_state.pth is missing"


def test_an_unfinished_save_and_a_garbled_manifest(tmp_path: Path) -> None:
    d = checkpoint(tmp_path / "checkpoint-4", manifest=False)
    (d / "trainer_state.json").unlink()
    assert problem(d) == "trainer_state.json is missing: the save did not finish"
    d = checkpoint(tmp_path / "checkpoint-6")
    (d / layout.CHECKPOINT_MANIFEST).write_text('{"files": ')
    assert problem(d) == f"{layout.CHECKPOINT_MANIFEST} is garbled"


def test_resume_takes_the_newest_whole_checkpoint_and_sets_damaged_ones_aside(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    checkpoint(run.checkpoint(2))
    checkpoint(run.checkpoint(4))
    shutil.copytree(run.checkpoint(4), run.checkpoint(6))
    truncate(run.checkpoint(4) / "optimizer.pt")
    garble(run.checkpoint(6) / "adapter_model.safetensors")
    passed: list[tuple[Path, str]] = []
    assert run.last_checkpoint(passed) == run.checkpoint(2)
    assert [(p.name, why.split()[0]) for p, why in passed] == [("checkpoint-6", "adapter_model.safetensors"),
                                                                ("checkpoint-4", "optimizer.pt")]
    assert set_aside(run.checkpoint(6)).name == "damaged-checkpoint-6"
    checkpoint(run.checkpoint(6), manifest=False)
    truncate(run.checkpoint(6) / "trainer_state.json")
    assert set_aside(run.checkpoint(6)).name == "damaged-checkpoint-6-2"
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["checkpoint-2", "checkpoint-4",
                                                                 "damaged-checkpoint-6", "damaged-checkpoint-6-2"]


def test_a_final_checkpoint_is_final_unless_more_steps_or_epochs_are_asked(tmp_path: Path) -> None:
    from tunelab.recipes.lifecycle import _final

    (tmp_path / "trainer_state.json").write_text(json.dumps({"global_step": 12, "max_steps": 12,
                                                             "num_train_epochs": 2}))
    assert _final(tmp_path, -1, 2.0)  # epochs as trained: nothing more to train
    assert not _final(tmp_path, -1, 3.0)  # train.epochs raised on resume: the trainer goes on
    assert _final(tmp_path, 12, 2.0) and not _final(tmp_path, 20, 2.0)
