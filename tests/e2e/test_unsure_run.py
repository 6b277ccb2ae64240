"""classification.unsure_label through a run: calibrated after training, kept in the summary, and used by
`tunelab eval` (its report and confusion matrix), with the raw figures beside."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import tunelab
from tests.helpers import LABELED, config, write_labeled
from tunelab.config import ConfigError
from tunelab.eval.evaluate import evaluate
from tunelab.runs import RunDir

UNSURE = "card_arrival"  # the tiny model answers exchange_rate: its answers can turn


def test_unsure_threshold_is_calibrated_kept_and_used_by_eval(tiny_model: Path, tmp_path: Path) -> None:
    data = write_labeled(tmp_path / "tickets.csv")
    # a budget of 1: every in-scope validation row may turn, so the highest threshold (1.0) is picked
    cfg = config(tiny_model, tmp_path, "unsure", data, "task=classification",
                 "data.columns={text: text, label: category}", "data.val_fraction=0.25", "train.max_steps=2",
                 "train.batch_size=4", f"classification.unsure_label={UNSURE}", "classification.unsure_budget=1.0")
    run = tunelab.train(cfg).run_dir
    summary = RunDir(run).summary()
    kept, preds = summary["unsure"], RunDir(run).predictions()
    assert preds and all(0.0 <= p["probability"] <= 1.0 for p in preds)
    movable = any(p["label"] != UNSURE and p["raw_predicted"] != UNSURE for p in preds)
    assert movable and kept["label"] == UNSURE and kept["calibrated"] and kept["threshold"] == 1.0
    assert [p["predicted"] for p in preds] == [UNSURE if p["probability"] < kept["threshold"] else p["raw_predicted"]
                                               for p in preds]
    assert summary["tuned_accuracy"] == kept["accuracy"]

    res = evaluate(str(run), str(data), columns={"text": "text", "label": "category"})
    u = res["unsure"]
    assert u["label"] == UNSURE and u["threshold"] == kept["threshold"]
    assert {"accuracy", "macro_f1", "confusion"} <= set(u["raw"])
    col = res["confusion"]["labels"].index(UNSURE)
    answered_unsure = sum(row[col] for row in res["confusion"]["matrix"])
    raw_unsure = sum(row[col] for row in u["raw"]["confusion"]["matrix"])
    assert answered_unsure == raw_unsure + u["rows_turned"]
    assert answered_unsure == len(LABELED) and u["rows_turned"] > 0  # a random model is never certain
    assert json.loads(json.dumps(res))["unsure"] == u


def test_an_unsure_label_missing_from_the_data_is_named(tiny_model: Path, tmp_path: Path) -> None:
    data = write_labeled(tmp_path / "tickets.csv")
    cfg = config(tiny_model, tmp_path, "unsure-bad", data, "task=classification",
                 "data.columns={text: text, label: category}", "data.val_fraction=0.25", "train.max_steps=1",
                 "classification.unsure_label=oos")
    with pytest.raises(ConfigError, match=r"classification.unsure_label='oos' is not among the labels"):
        tunelab.train(cfg)
