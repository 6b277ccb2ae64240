"""`tunelab report`: a self-contained HTML page and report.json from fake run directories (no model), the CLI's
exit codes, and one report of a real tiny training run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from tests.helpers import IMG, images, png_size, self_contained, write_json
from tunelab.cli.main import app
from tunelab.report import plots, write_report
from tunelab.runs import RunDirError

LABELS = ["card_arrival", "exchange_rate", "lost_or_stolen_card", "password_reset"]
EVAL_COMPARISON = {"metric": "accuracy", "tuned": 0.75, "base": 0.03, "diff": 0.72, "ci95": [0.68, 0.76],
                   "wins": 290, "losses": 2, "ties": 108}
def fake_run(root: Path, name: str = "run", *, task: str = "classification", status: str = "completed",
             predictions: bool = True, base: bool = True, eval_json: dict[str, Any] | None = None,
             metrics: bool = True) -> Path:
    """A run directory as `tunelab train` writes it, without training anything."""
    run = root / "runs" / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({
        "name": name, "task": task, "model": {"base": "smollm2-135m-instruct", "max_length": 512},
        "peft": {"method": "lora", "r": 16, "alpha": 32, "target_modules": "all-linear"},
        "train": {"grad_accum": 2, "lr_scheduler": "cosine"}, "classification": {"mode": "generate"}}))
    write_json(run / "resolved.json", {"epochs": 3, "learning_rate": 2e-4, "batch_size": 8, "steps_per_epoch": 50,
                                       "total_steps": 150, "warmup_steps": 5, "trainable_params": 4_884_480,
                                       "total_params": 139_400_000, "bf16": True})
    write_json(run / "data_report.json", {
        "source": "data/train.csv", "formats": {"data/train.csv": "classification"}, "rows": 420, "valid_rows": 418,
        "errors": [{"where": "data/train.csv:7", "message": "empty text"}] * 2,
        "warnings": [{"where": "data/train.csv:9", "message": "exact duplicate of data/train.csv:8"}],
        "duplicates": 1, "truncated": 0, "dropped_too_long": 0, "max_length": 512,
        "length_histogram": [[20, 29, 40], [30, 39, 200], [40, 49, 150], [50, 59, 28]],
        "labels": dict.fromkeys(LABELS, 100), "est_tokens_per_epoch": 15000,
        "train_rows": 400, "validation_rows": 18, "train_validation_overlap": 1})
    if metrics:
        lines = [{"step": s, "epoch": s / 50, "loss": 3.0 / s ** 0.5, "learning_rate": 2e-4, "grad_norm": 1.0,
                  "tokens_per_s": 900.0} for s in range(1, 151)]
        lines += [{"step": s, "epoch": s / 50, "eval_loss": 2.5 / s ** 0.4} for s in (50, 100, 150)]
        lines.sort(key=lambda r: r["step"])
        (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    summary: dict[str, Any] = {"name": name, "status": status, "task": task, "base_model": "smollm2-135m-instruct",
                               "train_rows": 400, "validation_rows": 18, "eval_rows": 18, "precision": "bf16",
                               "steps": 150, "train_loss": 0.41, "train_seconds": 312.5, "tokens_per_s": 912.3,
                               "eval_loss": 0.52}
    if task == "classification":
        summary |= {"tuned_accuracy": 14 / 18, "labels": LABELS}
        if base:
            summary["base_accuracy"] = 1 / 18
    write_json(run / "summary.json", summary)
    if predictions and task == "classification":
        rows = []
        for i in range(18):
            label = LABELS[i % 4]
            predicted = label if i < 14 else LABELS[(i + 1) % 4]
            row = {"where": f"data/train.csv:{i + 2}", "text": f"question <b>{i}</b> & more", "label": label,
                   "predicted": predicted}
            if base:
                row["base_predicted"] = label if i == 0 else "exchange_rate" if label != "exchange_rate" else LABELS[0]
            rows.append(row)
        write_json(run / "predictions.json", rows)
    if eval_json is not None:
        write_json(run / "eval.json", eval_json)
    return run


def classification_eval(n_labels: int = 4, comparison: dict[str, Any] | None = None) -> dict[str, Any]:
    labels = LABELS if n_labels == 4 else [f"label_number_{i}" for i in range(n_labels)]
    matrix = [[(30 if i == j else 1 if (i + 1) % n_labels == j else 0) for j in range(n_labels)]
              for i in range(n_labels)]
    per_class = {lab: {"precision": 0.9, "recall": 0.8 - i / (10 * n_labels), "f1": 0.85 - i / (10 * n_labels),
                       "support": 31} for i, lab in enumerate(labels)}
    return {"task": "classification", "data": "data/test.csv", "rows": 400,
            "model": {"accuracy": 0.75, "macro_f1": 0.74, "per_class": per_class},
            "base": {"accuracy": 0.03, "macro_f1": 0.02},
            "comparison": comparison or EVAL_COMPARISON,
            "confusion": {"labels": labels, "matrix": matrix},
            "examples": [{"input": "where is <script>alert(1)</script> my card", "reference": labels[0],
                          "tuned": labels[0], "base": labels[1]}]}


# --- the page and its facts ------------------------------------------------------------------------

def test_classification_run_with_eval_json(tmp_path: Path) -> None:
    run = fake_run(tmp_path, eval_json=classification_eval())
    html_path, json_path = write_report(run)
    assert html_path == run / "report.html" and json_path == run / "report.json"
    page = html_path.read_text()
    verdict = "Tuned model is better on your task: accuracy 3% → 75% (+72 points, 95% CI +68 to +76)"
    assert verdict in page
    assert page.index(verdict) < page.index("Task metrics")  # the verdict comes first
    imgs = images(page)
    assert len(imgs) >= 2 and all(png_size(i)[0] > 100 for i in imgs)  # loss curve, confusion, length histogram
    self_contained(page)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # example text is escaped
    assert "smollm2-135m-instruct" in page and "LoRA r=16" in page and "912" in page
    assert "validation rows also in training" in page

    rep = json.loads(json_path.read_text())
    assert rep["verdict"]["kind"] == "better" and rep["verdict"]["text"].startswith(verdict)
    assert rep["verdict"]["ci95"] == [0.68, 0.76] and rep["verdict"]["source"] == "eval.json"
    assert rep["metrics"]["tuned"]["accuracy"] == 0.75 and rep["metrics"]["base"]["macro_f1"] == 0.02
    assert rep["metrics"]["weakest_classes"][0]["label"] == LABELS[-1]
    assert rep["confusion"]["source"] == "eval.json" and rep["confusion"]["labels"] == LABELS
    assert rep["data"]["errors"] == 2 and rep["data"]["warnings"] == 1 and rep["data"]["train_validation_overlap"] == 1
    assert rep["loss"]["train_points"] == 150 and len(rep["loss"]["eval"]) == 3
    assert {"loss_curve", "confusion_matrix", "length_histogram"} <= set(rep["charts"])
    assert rep["warnings"] == [] and set(rep["missing"]) == {"probes"}  # only the probes were not run


def test_classification_from_predictions_only(tmp_path: Path) -> None:
    """No eval.json: the confusion matrix and an interval come from predictions.json."""
    run = fake_run(tmp_path)
    html_path, json_path = write_report(run)
    page = html_path.read_text()
    rep = json.loads(json_path.read_text())
    assert len(images(page)) >= 2
    self_contained(page)
    v = rep["verdict"]
    assert v["kind"] == "better" and v["source"] == "predictions.json"
    assert v["text"].startswith("Tuned model is better on your task: accuracy 6% → 78% (+72 points, 95% CI +")
    assert "tunelab eval" in v["text"]  # points to the fuller comparison
    lo, hi = v["ci95"]
    assert 0 < lo < v["diff"] < hi <= 1
    assert rep["comparison"]["wins"] == 13 and rep["comparison"]["losses"] == 0
    assert rep["confusion"]["source"] == "predictions.json" and rep["confusion"]["labels"] == LABELS
    assert sum(map(sum, rep["confusion"]["matrix"])) == 18
    assert 0 < rep["metrics"]["tuned"]["macro_f1"] <= 1
    assert "question &lt;b&gt;0&lt;/b&gt; &amp; more" in page and "<b>0</b>" not in page
    assert page.count("<tr>") > 12


def test_tuned_worse_says_so(tmp_path: Path) -> None:
    comp = {"metric": "accuracy", "tuned": 0.40, "base": 0.55, "diff": -0.15, "ci95": [-0.2, -0.1]}
    run = fake_run(tmp_path, eval_json=classification_eval(comparison=comp))
    rep = json.loads(write_report(run)[1].read_text())
    assert rep["verdict"]["kind"] == "worse"
    assert rep["verdict"]["text"].startswith("Tuned model is worse than the base model on your task: accuracy "
                                             "55% → 40% (−15 points, 95% CI −20 to −10)")


def test_interval_across_zero_is_no_clear_difference(tmp_path: Path) -> None:
    comp = {"metric": "accuracy", "tuned": 0.72, "base": 0.70, "diff": 0.02, "ci95": [-0.03, 0.07]}
    run = fake_run(tmp_path, eval_json=classification_eval(comparison=comp))
    v = json.loads(write_report(run)[1].read_text())["verdict"]
    assert v["kind"] == "unclear" and v["text"].startswith("No clear difference")


def test_base_accuracy_without_base_predictions(tmp_path: Path) -> None:
    """A resumed run keeps summary.json's base accuracy, but its predictions have no base column."""
    run = fake_run(tmp_path, base=False)
    summary = json.loads((run / "summary.json").read_text())
    write_json(run / "summary.json", summary | {"base_accuracy": 0.25})
    v = json.loads(write_report(run)[1].read_text())["verdict"]
    assert v["kind"] == "better" and v["ci95"] is None
    assert v["text"].startswith("Tuned model is better on your task: accuracy 25% → 78% "
                                "(+53 points, no confidence interval)")


def test_loss_only_eval_json_gives_way_to_the_runs_accuracy(tmp_path: Path) -> None:
    """`tunelab eval` read the file as plain text: its losses don't replace the run's own accuracy."""
    ev = {"task": "text", "data": "t.csv", "rows": 16, "model": {"loss": 5.98, "perplexity": 396.1},
          "base": {"loss": 5.99, "perplexity": 401.1}, "examples": []}
    run = fake_run(tmp_path, eval_json=ev)
    rep = json.loads(write_report(run)[1].read_text())
    assert rep["metrics"]["source"] == "predictions.json" and rep["verdict"]["metric"] == "accuracy"
    assert rep["confusion"]["source"] == "predictions.json" and "--label-column" in rep["missing"]["eval_task"]


def test_no_base_comparison_says_so(tmp_path: Path) -> None:
    run = fake_run(tmp_path, base=False)
    html_path, json_path = write_report(run)
    rep = json.loads(json_path.read_text())
    assert rep["verdict"]["kind"] == "no_comparison"
    assert rep["verdict"]["text"].startswith("No base comparison: tuned model accuracy 77.8%")
    assert "--compare-base" in html_path.read_text()
    assert "base" in rep["missing"] and "example_base" in rep["missing"]


def test_missing_eval_and_predictions_still_renders_with_hint(tmp_path: Path) -> None:
    run = fake_run(tmp_path, predictions=False, base=False)
    (run / "data_report.json").unlink()
    summary = json.loads((run / "summary.json").read_text())
    del summary["tuned_accuracy"]
    write_json(run / "summary.json", summary)
    html_path, json_path = write_report(run)
    page = html_path.read_text()
    rep = json.loads(json_path.read_text())
    hint = f"tunelab eval {run} --data FILE --compare-base"
    assert hint in page and hint in rep["verdict"]["text"]
    assert rep["verdict"]["kind"] == "no_metrics"
    assert {"metrics", "confusion", "examples", "data"} <= set(rep["missing"])
    assert "tunelab data check" in page
    assert len(images(page)) == 1  # the loss curve; nothing to draw a confusion matrix from
    self_contained(page)


def test_generation_run_with_eval_json(tmp_path: Path) -> None:
    ev = {"task": "generation", "data": "data/test.jsonl", "rows": 50,
          "model": {"loss": 1.2, "perplexity": 3.3, "exact_match": 0.4, "token_f1": 0.61, "rouge_l": 0.58,
                    "chrf": 55.1, "bleu": 30.2},
          "base": {"loss": 2.1, "perplexity": 8.2, "exact_match": 0.1, "token_f1": 0.32, "rouge_l": 0.3,
                   "chrf": 31.0, "bleu": 12.5},
          "comparison": {"metric": "token_f1", "tuned": 0.61, "base": 0.32, "diff": 0.29, "ci95": [0.2, 0.38],
                         "wins": 30, "losses": 5, "ties": 15},
          "examples": [{"input": f"prompt {i} <x>", "reference": "ref", "tuned": "tuned reply", "base": "base reply"}
                       for i in range(20)]}
    run = fake_run(tmp_path, task="chat", eval_json=ev)
    html_path, json_path = write_report(run)
    page = html_path.read_text()
    rep = json.loads(json_path.read_text())
    assert rep["verdict"]["text"].startswith("Tuned model is better on your task: token F1 32% → 61% (+29 points")
    assert rep["confusion"] is None and "Confusion matrix" not in page
    assert len(rep["examples"]["rows"]) == 12 and "prompt 0 &lt;x&gt;" in page
    assert "55.1" in page and "BLEU" in page  # chrF and BLEU stay on their 0-100 scale
    self_contained(page)


def test_generation_run_without_eval(tmp_path: Path) -> None:
    run = fake_run(tmp_path, task="chat")
    rep = json.loads(write_report(run)[1].read_text())
    assert rep["verdict"]["kind"] == "no_metrics" and "validation loss 0.52" in rep["verdict"]["text"]
    assert rep["confusion"] is None and "confusion" not in rep["missing"]


@pytest.mark.parametrize("status", ["interrupted", "failed", "running"])
def test_unfinished_run_gets_a_banner(tmp_path: Path, status: str) -> None:
    run = fake_run(tmp_path, status=status, predictions=False, metrics=False)
    page = write_report(run)[0].read_text()
    assert 'class="banner"' in page and f"This run is {status}, not completed" in page
    assert "No losses logged" in page


def test_damaged_files_are_reported_not_raised(tmp_path: Path) -> None:
    run = fake_run(tmp_path)
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{not json\n')
    (run / "resolved.json").write_text("[1, 2]")
    rep = json.loads(write_report(run)[1].read_text())
    assert any("metrics.jsonl: 1 damaged line(s) skipped" in w and "resolved.json" in w for w in rep["warnings"])
    assert rep["loss"]["train_points"] == 1 and "loss" not in rep["missing"]
    (run / "summary.json").write_text("{")
    rep = json.loads(write_report(run)[1].read_text())
    assert rep["status"] == "unknown" and any("summary.json" in w for w in rep["warnings"])


def test_many_labels_confusion_matrix_is_sized_by_label_count(tmp_path: Path) -> None:
    run = fake_run(tmp_path, predictions=False, eval_json=classification_eval(77))
    page = write_report(run)[0].read_text()
    rep = json.loads((run / "report.json").read_text())
    assert len(rep["confusion"]["labels"]) == 77 and len(rep["confusion"]["top_confusions"]) == 10
    assert len(rep["metrics"]["weakest_classes"]) == 10
    small = png_size(plots.confusion_matrix(LABELS, [[1, 0, 0, 0]] * 4))
    big = max(png_size(i) for i in images(page))
    assert big[0] > 2 * small[0] and big[1] > 2 * small[1]


def test_not_a_run_directory(tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match="not a tunelab run directory"):
        write_report(tmp_path)
    with pytest.raises(RunDirError, match="no such run directory"):
        write_report(tmp_path / "nope")


# --- the CLI ---------------------------------------------------------------------------------------

def test_cli_prints_the_report_path(tmp_path: Path) -> None:
    run = fake_run(tmp_path, eval_json=classification_eval())
    r = CliRunner().invoke(app, ["report", str(run)])
    assert r.exit_code == 0, r.output
    assert r.stdout.strip().splitlines()[-1] == str(run / "report.html")
    assert (run / "report.json").is_file()


@pytest.mark.parametrize("where", ["empty", "missing", "file"])
def test_cli_not_a_run_exits_2(tmp_path: Path, where: str) -> None:
    target = {"empty": tmp_path, "missing": tmp_path / "no-such-run", "file": tmp_path / "x.txt"}[where]
    if where == "file":
        target.write_text("hi")
    r = CliRunner().invoke(app, ["report", str(target)])
    assert r.exit_code == 2
    assert "error:" in r.output and "Traceback" not in r.output
    assert not isinstance(r.exception, RunDirError)


# --- a real run --------------------------------------------------------------------------------------

def test_report_of_a_real_tiny_run(tiny_model: Path, tmp_path: Path) -> None:
    import tunelab
    from tests.helpers import write_labeled

    data = write_labeled(tmp_path / "tickets.csv")
    cfg = tunelab.load_config(None, [
        "name=cls", f"output_dir={tmp_path / 'runs'}", f"model.base={tiny_model}", f"data.train={data}",
        "train.threads=1", "task=classification", "data.columns={text: text, label: category}",
        "data.val_fraction=0.25", "train.max_steps=4", "train.batch_size=4", "train.eval_every=2",
        "eval.batch_size=8"])
    result = tunelab.train(cfg)
    assert result.status == "completed"
    html_path, json_path = write_report(result.run_dir)
    page = html_path.read_text()
    rep = json.loads(json_path.read_text())
    assert len(images(page)) >= 2
    self_contained(page)
    assert rep["status"] == "completed" and rep["task"] == "classification"
    assert rep["verdict"]["kind"] in {"better", "worse", "unclear", "same"}
    shown = page.replace("<code>", "`").replace("</code>", "`")
    assert rep["verdict"]["task_text"] in shown  # probes run by default: their sentences follow the verdict
    assert rep["probes"]["sentences"] and all(x in shown for x in rep["probes"]["sentences"])
    assert rep["metrics"]["tuned"]["accuracy"] == pytest.approx(result.summary["tuned_accuracy"])
    assert rep["metrics"]["base"]["accuracy"] == pytest.approx(result.summary["base_accuracy"])
    assert rep["loss"]["train_points"] == 4 and len(rep["loss"]["eval"]) == 2
    assert rep["data"]["train_rows"] == 12 and rep["examples"]["source"] == "predictions.json"
    assert not rep["warnings"] and "metrics" not in rep["missing"]


def test_probes_in_the_verdict_and_their_sections(tmp_path: Path) -> None:
    run = fake_run(tmp_path)
    html_path, json_path = write_report(run)
    facts = json.loads(json_path.read_text())
    shown = html_path.read_text()
    assert "tunelab probe" in facts["missing"]["probes"] and shown.count(facts["missing"]["probes"][:60]) == 1
    assert "<h2>Forgetting, bias and fairness</h2>" in shown and "<h2>Bias and fairness</h2>" not in shown

    flips = {"templates": 4, "inputs": 48, "groups": ["anglo_american", "arabic"],
             "base": {"flip_rate": 0.0, "flipped_templates": 0}, "tuned": {"flip_rate": 0.25, "flipped_templates": 1},
             "examples": [{"inputs": [{"group": "anglo_american", "text": "Hi, I'm Emily", "label": "card_arrival"},
                                      {"group": "arabic", "text": "Hi, I'm Fatima", "label": "lost_or_stolen_card"}]}]}
    write_json(run / "probes.json", {
        "sides": ["base", "tuned"], "seconds": 40.0,
        "forgetting": {"questions": 40, "base": {"qa_accuracy": 0.7, "perplexity": 18.0, "empty_rate": 0.0,
                                                 "repetition_rate": 0.0, "avg_words": 20.0},
                       "tuned": {"qa_accuracy": 0.2, "perplexity": 30.0, "empty_rate": 0.1, "repetition_rate": 0.0,
                                 "avg_words": 3.0},
                       "examples": [{"question": "What is the capital of France?", "answers": ["Paris"],
                                     "base": "Paris.", "base_correct": True, "tuned": "card arrival",
                                     "tuned_correct": False}],
                       "warnings": ["general questions answered correctly fell from 70% to 20%"], "regressed": True},
        "bias": {"kind": "classification", "templates": 12, "inputs": 108, "attributes": {"name_origin": flips},
                 "warnings": ["label flips under name origin swaps rose from 0% to 25%"], "regressed": True},
        "warnings": ["general questions answered correctly fell from 70% to 20%",
                     "label flips under name origin swaps rose from 0% to 25%"]})
    html_path, json_path = write_report(run)
    facts = json.loads(json_path.read_text())
    text = facts["verdict"]["text"]
    assert text.startswith("Tuned model is better on your task")
    assert "Forgetting: general questions answered correctly fell from 70% to 20%" in text
    assert "Label flips under name origin swaps 25% (base 0%)" in text and "Bias warning" in text
    assert "bias_chart" in facts["charts"] and "probes" not in facts["missing"]
    page = html_path.read_text()
    assert 'class="probeline warnline"' in page
    assert "Hi, I&#x27;m Fatima → <b>lost_or_stolen_card</b>" in page
    assert "✗ card arrival" in page and "✓ Paris." in page
    assert len(IMG.findall(page)) == len(facts["charts"])


def test_another_evaluation_keeps_the_runs_own_comparison(tmp_path: Path) -> None:
    """`tunelab eval RUN --data other.csv` without --compare-base is kept beside the training comparison, which
    stays the verdict; both are listed."""
    run = fake_run(tmp_path)
    (run / "evals").mkdir()
    write_json(run / "evals" / "other.json", {"task": "classification", "data": "other.csv", "rows": 29,
                                              "model": {"accuracy": 0.5, "macro_f1": 0.4}, "created": 1.0})
    page, rep = write_report(run)[0].read_text(), json.loads((run / "report.json").read_text())
    assert rep["verdict"]["kind"] == "better" and rep["verdict"]["source"] == "predictions.json"
    assert [(e["name"], e["headline"]) for e in rep["evaluations"]] == [("training", True), ("other", False)]
    assert rep["evaluations"][1]["tuned"] == 0.5 and rep["evaluations"][1]["base"] is None
    assert "<h2>Evaluations</h2>" in page and "evals/other.json" in page


def test_the_newest_evaluation_with_a_base_comparison_is_the_verdict(tmp_path: Path) -> None:
    run = fake_run(tmp_path, eval_json=classification_eval())  # an earlier version's eval.json, older
    (run / "evals").mkdir()
    newer = classification_eval(comparison={"metric": "accuracy", "tuned": 0.9, "base": 0.5, "diff": 0.4,
                                            "ci95": [0.3, 0.5]}) | {"data": "data/holdout.csv", "created": 4e9}
    write_json(run / "evals" / "holdout.json", newer)
    rep = json.loads(write_report(run)[1].read_text())
    assert rep["verdict"]["source"] == "evals/holdout.json" and rep["verdict"]["tuned"] == 0.9
    assert [e["headline"] for e in rep["evaluations"]] == [False, True]
