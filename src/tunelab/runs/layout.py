"""What a run directory holds, by name. These constants are the only place the names are written."""

CONFIG = "config.yaml"  # the run's full config, as resolved when it started
SUMMARY = "summary.json"  # status (running | interrupted | failed | completed) and the run's headline numbers
PROGRESS = "progress.json"  # phase, step, loss, ETA: rewritten as the run goes, for observers in other processes
EVENTS = "events.jsonl"  # what happened, one JSON line per event
RESOLVED = "resolved.json"  # what the `auto` settings became (epochs, learning rate, batch, steps)
DATA_REPORT = "data_report.json"
CURATION = "curation.json"  # data.curate: every row removed, changed or flagged before training, and why
SKIPPED_ROWS = "skipped_rows.jsonl"  # rows left out with data.on_error: skip, each with its file:line and reason
METRICS = "metrics.jsonl"  # one line per logged training step or evaluation
PREDICTIONS = "predictions.json"  # tuned (and base) answers on the scored validation rows
BASE_PREDICTIONS = "base_predictions.json"  # RL: the base's answers, kept for a resumed run
EVALS = "evals"  # one JSON file per evaluation, named after its data
LEGACY_EVAL = "eval.json"  # where runs of earlier versions kept their one evaluation
PROBES = "probes.json"
LABELS = "labels.json"  # classification-head and reward runs: the head's outputs, in order
REPORT_HTML = "report.html"
REPORT_JSON = "report.json"
CHECKPOINTS = "checkpoints"
CHECKPOINT_MANIFEST = "tunelab-manifest.json"  # in each checkpoint-<step>/: its files' sizes and SHA-256, written last
ADAPTER = "adapter"  # the PEFT adapter (LoRA, DoRA)
MODEL = "model"  # full fine-tuning: the whole model
TOKENIZER = "tokenizer"

# What marks a folder as a run, for readers that must tell a run from anything else.
RUN_MARKERS = (SUMMARY, CONFIG, METRICS, RESOLVED, DATA_REPORT, PROBES, PREDICTIONS, LEGACY_EVAL, EVALS)
