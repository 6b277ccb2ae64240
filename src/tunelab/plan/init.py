"""A config chosen from the data (`tunelab init DATAFILE`): what the rows are, the method that trains on
them, a length that keeps almost every row whole, labels and a system prompt for classification, a validation
split, `auto` hyperparameters; written out as a commented tunelab.yaml that says why each choice was made.
The jobs API and the web UI ask the same questions of an uploaded file (`suggest`).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.formats import detect_format
from ..data.preference import detect_preference_format, detect_prompt_format, final_number
from ..data.records import DataError, Problem
from ..data.sources import data_files, read_rows
from ..data.templates import render_chat

SAMPLE_ROWS = 2000  # rows read to decide; a large file is judged on its first ones
LENGTH_QUANTILE = 0.98  # max_length keeps this share of rows whole
MAX_LABELS = 200  # more distinct values than this is free text, not labels
SPLIT_LENGTH = 512  # pieces of split long texts


@dataclass
class Choice:
    key: str  # dotted config key
    value: Any
    why: str


@dataclass
class Suggestion:
    path: str
    kind: str  # chat | completion | classification | preference | prompts
    rows: int
    choices: list[Choice] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def set(self, key: str, value: Any, why: str) -> None:
        self.choices.append(Choice(key, value, why))

    def overrides(self) -> dict[str, Any]:
        return {c.key: c.value for c in self.choices}

    def value(self, key: str, default: Any = None) -> Any:
        return next((c.value for c in self.choices if c.key == key), default)

    def config(self, name: str | None = None, **extra: Any) -> Any:
        """The suggested config itself (extra: more dotted keys, e.g. output_dir)."""
        from ..config.schema import TunelabConfig

        data: dict[str, Any] = {}
        for key, value in (self.overrides() | extra).items():
            node = data
            *parents, last = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[last] = value
        cfg = TunelabConfig.model_validate(data)
        cfg.name = name or Path(self.path).stem
        return cfg


def _rows(path: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for file in data_files(path):
        for raw in read_rows(file):
            if raw.data is not None:
                rows.append(raw.data)
            if len(rows) >= SAMPLE_ROWS:
                return rows
    return rows


def _label_columns(rows: list[dict[str, Any]]) -> tuple[str, str] | None:
    """(text column, label column) of a two-or-more column table whose one column takes few distinct values."""
    keys = [k for k in rows[0] if all(isinstance(r.get(k), str) for r in rows)]
    if len(keys) < 2:
        return None
    distinct = {k: len({r[k] for r in rows}) for k in keys}
    mean_len = {k: sum(len(r[k]) for r in rows) / len(rows) for k in keys}
    label = min(keys, key=lambda k: (distinct[k], mean_len[k]))
    text = max((k for k in keys if k != label), key=lambda k: mean_len[k])
    few = distinct[label] <= min(MAX_LABELS, max(2, len(rows) // 3))
    return (text, label) if few and distinct[label] >= 2 and mean_len[label] < mean_len[text] else None


def detect(path: str) -> tuple[str, dict[str, str], str]:
    """(kind, data.columns, why) for a data file."""
    rows = _rows(path)
    if not rows:
        raise DataError([Problem(path, "no readable rows: nothing to decide from")])
    first = rows[0]
    keys = set(first)
    if detect_preference_format(keys, first):
        return "preference", {}, "rows hold a preferred and a rejected answer: preference pairs"
    fmt = detect_format(keys)
    if fmt == "classification":
        return "classification", {}, "rows are a text and a label"
    if fmt in ("chat", "sharegpt", "alpaca"):
        last = (first.get("messages") or [{}])[-1] if fmt == "chat" else {}
        if fmt == "chat" and last.get("role") == "user":
            return "prompts", {}, "conversations end with a user turn: prompts for the model to answer"
        return "chat", {}, f"rows are conversations ({fmt})"
    if fmt == "completion":
        return "completion", {}, "rows are a prompt and its completion"
    answer_keys = [k for k in ("answer", "reference", "solution", "target") if k in keys]
    if detect_prompt_format(keys) in ("prompt", "question") and answer_keys:
        answers = [str(r.get(answer_keys[0], "")) for r in rows]
        numeric = sum(final_number(a) is not None for a in answers) / len(answers)
        question = "prompt" if "prompt" in keys else "question"
        if numeric >= 0.8:
            return "prompts", {"rl.answer_field": answer_keys[0]}, (
                f"rows are {question}s with reference answers that end in a number ({numeric:.0%}): checkable answers")
        return "completion", {"prompt": question, "completion": answer_keys[0]}, \
            f"rows are {question}s with reference answers"
    pair = _label_columns(rows)
    if pair:
        return "classification", {"text": pair[0], "label": pair[1]}, \
            f"column {pair[1]!r} takes few distinct values: it labels column {pair[0]!r}"
    if fmt == "text":
        return "completion", {}, "rows are plain text: continued pre-training on it"
    raise DataError([Problem(path, f"can't tell what the rows are from their fields {sorted(keys)}; map them "
                             "with data.columns, or start from `tunelab init --task chat|classification|completion`")])


def _round_length(n: int) -> int:
    return max(64, min(4096, 64 * math.ceil(n / 64)))


def _lengths(path: str, kind: str, columns: dict[str, str], model: str | None,
             answer_field: str | None = None) -> list[int]:
    """Token counts of each row as training renders it (chat template and all)."""
    from ..models.load import load_tokenizer, resolve, tokenizer_path

    tokenizer = load_tokenizer(tokenizer_path(resolve(model)))
    if kind == "preference":
        from ..data.preference import load_pairs, pair_token_counts

        pairs, _, _ = load_pairs(path, "auto", columns)
        return [p + max(c, r) for p, c, r in (pair_token_counts(x, tokenizer) for x in pairs[:SAMPLE_ROWS])]
    if kind == "prompts":
        from ..data.preference import load_prompts

        prompts, _ = load_prompts(path, "auto", columns, None, answer_field)
        return [len(render_chat(tokenizer, p.prompt, tokenize=True, add_generation_prompt=True,
                                return_dict=True)["input_ids"]) for p in prompts[:SAMPLE_ROWS]]
    from ..data.load import load_records
    from ..data.templates import encode_record, humanize

    loaded = load_records(path, "auto", columns)
    out = []
    for rec in loaded.records[:SAMPLE_ROWS]:
        label = humanize(rec.label) if rec.kind == "classification" and rec.label else None
        out.append(len(encode_record(rec, tokenizer, label_text=label).input_ids))
    return out


def suggest(path: str, model: str | None = None) -> Suggestion:
    """Every choice for a config that trains on this file, with its reason; a medical, legal or long-prose file
    starts from its domain's recipe (plan/domains.py)."""
    from ..data import domains

    kind, columns, why = detect(path)
    rows = _rows(path)
    n = len(rows)
    plain = kind == "completion" and detect_format(set(rows[0])) == "text" and not columns
    domain = domains.detect(rows, kind, plain)
    if domain and domain.name == "medical" and kind == "completion":
        # questions and answers as a conversation: the served model is asked in chat, with the system prompt
        kind = "chat"
        columns = {"instruction": columns.get("prompt", "prompt"), "output": columns.get("completion", "completion")}
        why += ", answered as a conversation"
    s = Suggestion(path, kind, n)
    s.set("data.train", path, f"{n}{'+' if n >= SAMPLE_ROWS else ''} rows read; {why}")
    if model:
        s.set("model.base", model, "the model you named")
    answer_field = columns.pop("rl.answer_field", None)
    if columns:
        s.set("data.columns", columns, "tunelab's names for your columns (tunelab name: your column)")
    if kind == "preference":
        s.set("method", "dpo", "preference pairs: DPO moves the model toward the preferred answers (reward, "
              "kto, orpo, simpo also train on pairs)")
    elif kind == "prompts":
        s.set("method", "grpo", "prompts with checkable answers: GRPO samples answers and rewards the right ones")
        s.set("rl.rewards", ["numeric"], "the reward: 1 when the answer's final number matches the reference")
        if answer_field != "answer":
            s.set("rl.answer_field", answer_field, "the column holding each prompt's reference answer")
    else:
        s.set("task", kind, {"chat": "the loss is on the assistant's replies",
                             "completion": "the loss is on the completion (or all of a plain text)",
                             "classification": "the model learns to name each text's label"}[kind])
    if domain:
        s.notes.append(f"recipe: {domain.recipe} is the worked example for {domain.name} data")
        s.notes += domain.notes
        for key, value, reason in domain.choices:
            s.set(key, value, reason)
    if kind == "classification":
        label_col = columns.get("label", "label")
        counts = Counter(str(r.get(label_col)) for r in rows)
        labels = sorted(counts)
        head = len(labels) > 20
        s.set("classification.mode", "head" if head else "generate",
              f"{len(labels)} labels: " + ("a classification head picks among many labels in one pass (84% on "
                                           "banking77's 77 intents, see docs/benchmarks.md)" if head else
                                           "the model answers the label, constrained to the label set"))
        if not head:
            prompt = ("Name the type of this contract clause. Answer with its type only." if domain and
                      domain.name == "legal" else "Classify the message. Answer with its label only.")
            s.set("data.system_prompt", prompt, "tells the model what its answer is for")
        rare = [lab for lab, c in counts.items() if c < 5]
        if rare:
            s.notes.append(f"{len(rare)} label(s) have fewer than 5 rows (e.g. {rare[0]!r}): they will be "
                           "hard to learn")
    lengths = _lengths(path, kind, columns, model, answer_field or "answer")
    if lengths:
        ordered = sorted(lengths)
        q = ordered[min(len(ordered) - 1, int(LENGTH_QUANTILE * len(ordered)))]
        length = _round_length(q)
        if kind == "prompts":
            length = _round_length(q + 128)  # room for the sampled answer (rl.max_completion_tokens)
        cut = sum(x > length for x in lengths) / len(lengths)
        if s.value("data.too_long") == "split" and length > SPLIT_LENGTH:
            s.set("model.max_length", SPLIT_LENGTH, f"rows are {ordered[len(ordered) // 2]} tokens at the median, "
                  f"{ordered[-1]} at most; split into {SPLIT_LENGTH}-token pieces, which train faster per token "
                  "than long ones on a CPU")
        else:
            s.set("model.max_length", length, f"rows are {ordered[len(ordered) // 2]} tokens at the median, "
                  f"{ordered[-1]} at most; {length} keeps {1 - cut:.1%} of them whole"
                  + (f" ({cut:.1%} would be truncated)" if cut else ""))
    val = 0.0 if n < 40 else round(min(0.1, max(20 / n, 300 / n if n > 3000 else 0.1)), 3)
    s.set("data.val_fraction", val, f"{round(val * n)} of {n} rows held out to show whether tuning helped"
          if val else "too few rows to hold any out: add a validation file (data.validation) to measure the result")
    s.set("train.epochs", "auto", "fewer passes for more rows (10 for 300 rows or fewer, 1 for 3,000 or more)")
    s.set("train.learning_rate", "auto", "by method and model size")
    s.set("train.batch_size", "auto", "from the row lengths")
    return s


def _line(key: str, value: Any) -> str:
    """`key: value` in YAML's flow style (one line, lists and mappings inline)."""
    import yaml

    return yaml.safe_dump({key: value}, default_flow_style=True, width=10_000).strip()[1:-1]


def render(s: Suggestion, name: str) -> str:
    """The suggestion as a commented YAML config, the reason above each key."""
    lines = [f"# tunelab config chosen from {s.path} by `tunelab init` ({s.kind}). Keys: docs/config.md",
             f"name: {name}"]
    sections: dict[str, list[Choice]] = {}
    for c in s.choices:
        if "." not in c.key:
            lines += [f"# {c.why}", _line(c.key, c.value)]
        else:
            sections.setdefault(c.key.split(".", 1)[0], []).append(c)
    for section, choices in sections.items():
        lines.append(f"{section}:")
        for c in choices:
            sub = c.key.split(".", 1)[1]
            lines.append(f"  # {c.why}")
            lines.append("  " + _line(sub, c.value))
    for note in s.notes:
        lines.append(f"# note: {note}")
    return "\n".join(lines) + "\n"


def write(s: Suggestion, out: Path, name: str | None = None) -> Path:
    out.write_text(render(s, name or Path(s.path).stem))
    return out


def estimate_file(path: str, model: str | None = None, **extra: Any) -> Any:
    """The measured estimate of training on a file with the config `suggest` chooses for it."""
    from .estimate import estimate

    return estimate(suggest(path, model).config(**extra))
