"""`tunelab data curate`, the curation summary of `data check`, a run with data.curate and the warning of
`tunelab eval` on data the run trained on: end to end through the CLI on the shipped real rows."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import tunelab
from tests.helpers import config, tunelab_cli

pytestmark = pytest.mark.e2e
DATA = Path(__file__).parents[1] / "data" / "curate"


def test_data_curate_writes_a_curated_copy_and_its_report(tmp_path: Path) -> None:
    shutil.copy(DATA / "support.jsonl", tmp_path / "support.jsonl")
    r = tunelab_cli("data", "curate", "support.jsonl", "--out", "curated", "--language", "en", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Read 30 rows, kept 26." in r.stderr and "curation.html" in r.stderr
    out = tmp_path / "curated"
    assert len((out / "support.jsonl").read_text().splitlines()) == 26
    page = (out / "curation.html").read_text()
    for title in ("Exact and near-duplicates", "Personal data", "Quality filters"):
        assert title in page
    assert "maria.lopez@example.com" not in page and "data:image/png;base64," in page
    # the curated copy is ordinary training data: data check takes it, and finds nothing left to curate
    r = tunelab_cli("data", "check", "curated/support.jsonl", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    left = json.loads(r.stdout)["curation"]["steps"]
    assert "duplicates" not in left and "personal_data" not in left

    r = tunelab_cli("data", "curate", "support.jsonl", "--out", "c2", "--personal-data", "everything",
                    cwd=tmp_path)
    assert r.returncode == 2 and "data.curate.personal_data" in r.stderr and not (tmp_path / "c2").exists()


def test_data_check_summarises_what_curation_would_do(tmp_path: Path) -> None:
    r = tunelab_cli("data", "check", DATA / "support.jsonl", cwd=tmp_path)
    assert r.returncode == 1 and "support.jsonl:29: messages[1] (assistant) has empty content" in r.stderr
    assert "exact or near-duplicates: 2" in r.stderr and "rows with personal data: 2" in r.stderr
    assert "tunelab data curate" in r.stderr


def test_a_run_with_data_curate_trains_on_curated_rows(tiny_model: Path, tmp_path: Path) -> None:
    data = tmp_path / "support.jsonl"
    shutil.copy(DATA / "support.jsonl", data)
    cfg = config(tiny_model, tmp_path, "curated", data, "data.curate={}", "data.on_error=skip", "train.max_steps=2",
                 "train.batch_size=4", "eval.during_training=false")
    result = tunelab.train(cfg)
    run = Path(result.run_dir)
    report = json.loads((run / "data_report.json").read_text())
    assert report["train_rows"] == 27  # 30 read, 1 empty reply skipped, 2 duplicates removed
    cur = json.loads((run / "curation.json").read_text())
    assert cur["kept"]["train"] == 27 and cur["steps"]["duplicates"] == {"drop": 2}
    page = (run / "report.html").read_text()
    assert "Data curation" in page and "maria.lopez" not in page

    # evaluating on rows the run trained on: a warning that names a row
    r = tunelab_cli("eval", run, "--data", data, "--limit", "4", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "evaluation rows copy rows the run trained on" in r.stderr
