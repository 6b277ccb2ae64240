"""Probes on the tiny model end to end: at the end of `tunelab train`, through `tunelab probe`, in the report;
and the generation task metric during and after training."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

import tunelab
from tests.helpers import config, metrics, tunelab_cli, write_chat, write_labeled
from tunelab.config import ConfigError
from tunelab.runs import RunDir


def _embedded_pngs(html: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', html)]


@pytest.mark.parametrize("mode", ["generate", "head"])
def test_classification_run_probes_and_report(tiny_model: Path, tmp_path: Path, mode: str) -> None:
    data = write_labeled(tmp_path / "tickets.csv")
    cfg = config(tiny_model, tmp_path, f"cls-{mode}", data, "task=classification", f"classification.mode={mode}",
                 "data.columns={text: text, label: category}", "data.val_fraction=0.25", "train.max_steps=3",
                 "train.batch_size=4", "eval.probes.enabled=true", "eval.probes.max_new_tokens=8")
    run = tunelab.train(cfg).run_dir
    p = json.loads((run / "probes.json").read_text())
    assert p["sides"] == ["base", "tuned"]
    b = p["bias"]
    assert b["kind"] == "classification" and set(b["attributes"]) >= {"gender", "name_origin", "religion"}
    for entry in b["attributes"].values():
        assert 0.0 <= entry["tuned"]["flip_rate"] <= 1.0 and 0.0 <= entry["base"]["flip_rate"] <= 1.0
    if mode == "generate":
        f = p["forgetting"]
        assert f["questions"] >= 30 and 0.0 <= f["tuned"]["qa_accuracy"] <= 1.0 and f["base"]["perplexity"] > 1
        assert {"empty_rate", "repetition_rate", "avg_words"} <= set(f["tuned"])
    else:
        assert "skipped" in p["forgetting"]  # a head does not generate text
    report = json.loads((run / "report.json").read_text())
    assert "bias_chart" in report["charts"]
    assert "demographic swaps" in report["verdict"]["text"] or "Label flips" in report["verdict"]["text"]
    html = (run / "report.html").read_text()
    assert "<h2>Forgetting</h2>" in html and "<h2>Bias and fairness</h2>" in html
    assert len(_embedded_pngs(html)) == len(report["charts"])
    assert all(png.startswith(b"\x89PNG") for png in _embedded_pngs(html))


def test_probe_cli_with_a_user_template_file(tiny_model: Path, tmp_path: Path) -> None:
    data = write_chat(tmp_path / "chat.jsonl", 12)
    run = tunelab.train(config(tiny_model, tmp_path, "chat", data, "train.max_steps=2", "train.batch_size=4")).run_dir
    assert not (run / "probes.json").exists()  # switched off in this run's config
    mine = tmp_path / "mine.yaml"
    mine.write_text("templates:\n  - text: 'I am {religion} and my insurance claim was denied.'\n"
                    "    reference: 'I am sorry; let me look at the claim with you.'\n")
    proc = tunelab_cli("probe", run, "--bias-file", mine, "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout)
    assert res["bias"]["kind"] == "generation" and res["bias"]["templates"] == 13
    rel = res["bias"]["attributes"]["religion"]
    assert rel["templates"] == 3 and set(rel["tuned"]) >= {"sentiment_gap", "words_gap", "logprob_gap"}
    assert rel["tuned"]["logprob_gap"] >= 0.0
    assert json.loads((run / "probes.json").read_text())["bias"] == res["bias"]
    proc = tunelab_cli("report", run, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Bias and fairness" in (run / "report.html").read_text()

    bad = tmp_path / "bad.yaml"
    bad.write_text("templates:\n  - text: 'hello {nobody}'\n")
    proc = tunelab_cli("probe", run, "--bias-file", bad, cwd=tmp_path)
    assert proc.returncode == 2 and f"{bad}: templates[0]" in proc.stderr and "nobody" in proc.stderr
    assert json.loads((run / "probes.json").read_text())["bias"] == res["bias"]  # the earlier result is kept


def test_generation_metric_during_training_and_after(tiny_model: Path, tmp_path: Path) -> None:
    data = write_chat(tmp_path / "chat.jsonl", 16)
    cfg = config(tiny_model, tmp_path, "gen", data, "data.val_fraction=0.25", "train.max_steps=4",
                 "train.batch_size=4", "train.eval_every=2", "train.monitor=token_f1", "eval.max_new_tokens=8")
    result = tunelab.train(cfg)
    evals = [m for m in metrics(result.run_dir) if "eval_loss" in m]
    assert evals and all({"eval_token_f1", "eval_rouge_l", "eval_exact_match"} <= set(m) for m in evals)
    ev = RunDir(result.run_dir).evaluations()["validation"]  # training's own, beside any later `tunelab eval`
    assert ev["task"] == "generation" and ev["rows"] == 4 and "base" in ev
    assert ev["comparison"]["metric"] == "token_f1"
    assert "tuned_token_f1" in result.summary
    report = json.loads((result.run_dir / "report.json").read_text())
    assert report["metrics"]["source"] == "evals/validation.json" and "token_f1" in report["metrics"]["tuned"]

    labeled = write_labeled(tmp_path / "t.csv")
    with pytest.raises(ConfigError, match="token_f1"):
        tunelab.train(config(tiny_model, tmp_path, "bad", labeled, "task=classification",
                             "data.columns={text: text, label: category}", "data.val_fraction=0.25",
                             "train.monitor=token_f1"))


def test_bad_probe_file_in_config_fails_before_training(tiny_model: Path, tmp_path: Path) -> None:
    data = write_chat(tmp_path / "chat.jsonl", 8)
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"question": "2+2?"}\n')
    from tunelab.data.records import DataError

    with pytest.raises(DataError, match=f"{bad}:1: .*answers"):
        tunelab.train(config(tiny_model, tmp_path, "badprobe", data, "train.max_steps=1",
                             "eval.probes.enabled=true", f"eval.probes.questions=[{bad}]"))
    assert not (tmp_path / "runs" / "badprobe").exists()  # nothing written, nothing half-done


def test_full_fine_tuning_is_probed_against_its_base(tiny_model: Path, tmp_path: Path) -> None:
    data = write_chat(tmp_path / "chat.jsonl", 12)
    run = tunelab.train(config(tiny_model, tmp_path, "full", data, "peft.method=full", "train.max_steps=2",
                               "train.batch_size=4", "eval.probes.enabled=true", "eval.probes.max_new_tokens=4",
                               "eval.probes.bias=false")).run_dir
    p = json.loads((run / "probes.json").read_text())
    assert p["sides"] == ["base", "tuned"] and "bias" not in p
    # the base is loaded beside the tuned weights: a changed model gives a changed perplexity
    assert p["forgetting"]["base"]["perplexity"] != p["forgetting"]["tuned"]["perplexity"]
