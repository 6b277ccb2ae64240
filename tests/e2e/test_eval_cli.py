"""`tunelab eval` on the tiny model through the real CLI: metrics as JSON, base vs tuned, bad rows."""

from __future__ import annotations

import json
from pathlib import Path

import tunelab
from tests.helpers import LABELED, config, tunelab_cli, write_chat, write_labeled
from tunelab.runs import RunDir


def _classification_run(tiny_model: Path, tmp_path: Path) -> tuple[Path, Path]:
    data = write_labeled(tmp_path / "tickets.csv")
    cfg = config(tiny_model, tmp_path, "cls", data, "task=classification", "data.columns={text: text, label: category}",
                 "data.val_fraction=0.25", "train.max_steps=3", "train.batch_size=4")
    return tunelab.train(cfg).run_dir, data


def test_eval_classification_compare_base_json(tiny_model: Path, tmp_path: Path) -> None:
    run, data = _classification_run(tiny_model, tmp_path)
    proc = tunelab_cli("eval", run, "--data", data, "--text-column", "text", "--label-column", "category",
                       "--compare-base", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout)
    assert res["task"] == "classification" and res["rows"] == len(LABELED)
    for side in ("model", "base"):
        assert {"loss", "perplexity", "accuracy", "macro_f1", "per_class"} <= set(res[side])
    c = res["comparison"]
    assert c["metric"] == "accuracy" and c["wins"] + c["losses"] + c["ties"] == len(LABELED)
    assert c["ci95"][0] <= c["diff"] <= c["ci95"][1]
    assert len(res["confusion"]["matrix"]) == len(res["confusion"]["labels"])
    kept = RunDir(run).evaluations()  # kept beside the run's own scores, named after the data
    assert kept["tickets"]["comparison"] == c and kept["tickets"]["data"] == str(data)


def test_eval_generation_on_chat_data_and_bad_rows(tiny_model: Path, tmp_path: Path) -> None:
    data = write_chat(tmp_path / "chat.jsonl", n=6)
    with data.open("a") as f:
        f.write("{broken\n")
    proc = tunelab_cli("eval", tiny_model, "--data", data, "--max-new-tokens", "4", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout)
    assert res["task"] == "generation" and res["rows"] == 6
    assert {"exact_match", "token_f1", "rouge_l", "chrf", "bleu", "loss"} <= set(res["model"])
    assert [p["where"] for p in res["skipped_rows"]] == [f"{data}:7"]
    assert f"{data}:7" in proc.stderr


def test_compare_base_needs_a_run(tiny_model: Path, tmp_path: Path) -> None:
    data = write_chat(tmp_path / "chat.jsonl", n=2)
    proc = tunelab_cli("eval", tiny_model, "--data", data, "--compare-base", cwd=tmp_path)
    assert proc.returncode == 2 and "needs a tunelab run directory" in proc.stderr
