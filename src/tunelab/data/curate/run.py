"""Curation from files to a curated copy: read rows, run each step in order (a dropped row is gone for the
steps after it), write the kept rows in their own keys, and the findings."""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ...config.curate import CurateConfig
from ...runs.layout import CURATION
from ..records import DataError, Problem
from .rows import Finding, Row

FINDINGS_JSON = CURATION  # the same name as in a run directory
FINDINGS_HTML = "curation.html"
STEPS = ("unreadable", "format", "quality", "duplicates", "leaks", "contamination", "labels", "personal_data")


def read(path: str, fmt: str = "auto", columns: dict[str, str] | None = None,
         split: Literal["train", "validation"] = "train") -> tuple[list[Row], list[Finding]]:
    """Every row of a data source as read, with its canonical record where the format gives one; rows that can't
    be read, or that have format problems (what `data check` reports as errors), are drop findings."""
    from ..load import load_records
    from ..preference import PREFERENCE_FORMATS, is_preference_file
    from ..sources import data_files, read_rows

    records, problems = {}, {}
    if not (fmt in PREFERENCE_FORMATS or (fmt == "auto" and is_preference_file(path, columns))):
        loaded = load_records(path, fmt, columns)
        records = {r.where: r for r in loaded.records}
        for p in loaded.errors:
            problems.setdefault(p.where, p.message)
    rows: list[Row] = []
    findings: list[Finding] = []
    for file in data_files(path):
        for raw in read_rows(file):
            if raw.data is None:
                findings.append(Finding(raw.where, "unreadable", "drop", raw.error))
            elif raw.where in problems:  # training can't use it either; the curated copy stays trainable
                findings.append(Finding(raw.where, "format", "drop", f"{problems[raw.where]}: fix it in the source "
                                        "file to keep it (`tunelab data check` lists every problem)"))
            else:
                rows.append(Row(raw.where, raw.data, records.get(raw.where), split, str(file)))
    if not rows and problems:  # nothing readable as training data: the format or the columns, not the rows
        raise DataError([Problem(w, m) for w, m in list(problems.items())[:20]],
                        hint=f"no row of {path} could be read as training data: give --format, or map your columns "
                             "(--text-column, --label-column, --column ours=yours)")
    return rows, findings


@dataclass
class Curated:
    """The rows kept (changed where a step changed them) and everything found, in step order."""

    train: list[Row]
    validation: list[Row]
    findings: list[Finding]
    read: dict[str, int] = field(default_factory=dict)  # split -> rows read
    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what a step could not do, in words
    texts: dict[str, str] = field(default_factory=dict)  # where -> the row's text (shortened) for the report

    def counts(self) -> dict[str, dict[str, int]]:
        """step -> action -> rows."""
        out: dict[str, dict[str, int]] = {}
        for f in self.findings:
            out.setdefault(f.step, Counter())[f.action] += 1  # type: ignore[index]
        return {s: dict(out[s]) for s in STEPS if s in out}

    def summary(self) -> dict[str, Any]:
        return {"read": self.read, "kept": {"train": len(self.train), "validation": len(self.validation)},
                "steps": self.counts(), "notes": self.notes, "settings": self.settings}

    def to_dict(self) -> dict[str, Any]:
        return self.summary() | {"findings": [f.to_dict() for f in self.findings]}


Progress = Callable[[str], None]


def curate(train: list[Row], cfg: CurateConfig, validation: Sequence[Row] = (), evaluation: Sequence[Row] = (),
           seed: int = 0, progress: Progress | None = None) -> Curated:
    """Run every switched-on step in order: quality, duplicates, leaks, contamination, labels, personal data."""
    from .dups import duplicates
    from .labels import suspect_labels
    from .leaks import contamination, leaks
    from .personal import personal_data
    from .quality import quality

    say = progress or (lambda _: None)
    rows = {"train": list(train), "validation": list(validation)}
    findings: list[Finding] = []

    def apply(found: list[Finding]) -> None:
        findings.extend(found)
        gone = {f.where for f in found if f.action == "drop"}
        if gone:
            for split in rows:
                rows[split] = [r for r in rows[split] if r.where not in gone]

    say("quality filters")
    apply(quality(rows["train"] + rows["validation"], cfg.quality))
    if cfg.duplicates:
        say("near-duplicates")
        apply(duplicates(rows["train"], cfg.similarity) + duplicates(rows["validation"], cfg.similarity))
    if cfg.leaks != "off":
        say("leaks between training and validation")
        apply(leaks(rows["train"], rows["validation"], cfg.similarity, "drop" if cfg.leaks == "drop" else "flag"))
    if evaluation:
        say("contamination of the evaluation data")
        apply(contamination(rows["train"], list(evaluation), cfg.contamination_ngram, cfg.similarity))
    if cfg.labels != "off":
        say("suspect labels")
        apply(suspect_labels(rows["train"], cfg, seed))
    if cfg.personal_data != "off":
        say("personal data")
        apply(personal_data(rows["train"] + rows["validation"], cfg))
    return Curated(rows["train"], rows["validation"], findings,
                   {"train": len(train), "validation": len(validation)}, cfg.model_dump(),
                   texts=_snippets([*train, *validation], findings, cfg))


SNIPPET = 300


def _snippets(rows: list[Row], findings: list[Finding], cfg: CurateConfig) -> dict[str, str]:
    """The text of each row something was found in, for the report; personal data is masked there even in rows
    dropped before the personal-data step, because reports get shared."""
    from .personal import Redactor

    wanted = {f.where for f in findings}
    mask = Redactor("redact", cfg.personal_kinds) if cfg.personal_data != "off" else (lambda t: t)
    out = {}
    for r in rows:
        if r.where in wanted:
            t = " ".join(r.text().split())
            out[r.where] = mask(t[:SNIPPET] + ("…" if len(t) > SNIPPET else ""))
    return out


def curate_files(train: Sequence[str], cfg: CurateConfig, *, validation: str | None = None,
                 evaluation: str | None = None, fmt: str = "auto", columns: dict[str, str] | None = None,
                 seed: int = 0, progress: Progress | None = None) -> Curated:
    """Read the files and curate them together (duplicates are found across all the training files)."""
    rows, early = [], []
    for path in train:
        r, f = read(path, fmt, columns)
        rows += r
        early += f
    val, val_early = read(validation, fmt, columns, "validation") if validation else ([], [])
    eval_path = evaluation or cfg.evaluation
    ev = read(eval_path, "auto")[0] if eval_path else []
    if not rows:
        raise DataError([Problem(", ".join(train), "no readable rows to curate")])
    result = curate(rows, cfg, val, ev, seed, progress)
    result.findings = early + val_early + result.findings
    result.read = {"train": len(rows) + len(early), "validation": len(val) + len(val_early)}  # early: all drops
    if eval_path:
        result.settings["evaluation"] = eval_path
    return result


def _names(sources: Sequence[str]) -> dict[str, str]:
    """A file name in the output directory for each source file: its own stem, made unique."""
    out: dict[str, str] = {}
    for src in sources:
        stem = Path(src).name.split(".")[0] or "rows"
        name, n = f"{stem}.jsonl", 1
        while name in out.values():
            n += 1
            name = f"{stem}-{n}.jsonl"
        out[src] = name
    return out


def write(result: Curated, out_dir: str | Path, html: Callable[[Curated], str] | None = None) -> dict[str, str]:
    """The curated copy (one .jsonl per source file, rows in their own keys), curation.json and, given a renderer,
    curation.html. Written beside out_dir and moved into place whole: an interrupted write leaves no directory
    that looks complete. Returns source file -> written file."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not (out / FINDINGS_JSON).exists():
        raise DataError([Problem(str(out), "exists and is not a curated copy: give an empty or new directory")])
    kept = result.train + result.validation
    names = _names(list(dict.fromkeys(r.source for r in kept)))
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for src, name in names.items():
            with (tmp / name).open("w", encoding="utf-8") as fh:
                for r in kept:
                    if r.source == src:
                        fh.write(json.dumps(r.data, ensure_ascii=False, default=str) + "\n")
        (tmp / FINDINGS_JSON).write_text(json.dumps(result.to_dict() | {"files": names}, indent=2,
                                                    ensure_ascii=False, default=str) + "\n", encoding="utf-8")
        if html is not None:
            (tmp / FINDINGS_HTML).write_text(html(result), encoding="utf-8")
        old = out.with_name(f".{out.name}.{os.getpid()}.old")
        if out.exists():
            out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {src: str(out / name) for src, name in names.items()}


def preview(path: str, fmt: str = "auto", columns: dict[str, str] | None = None, examples: int = 3) -> dict[str, Any]:
    """What `tunelab data curate` would do with its defaults (personal data only reported): counts per step and
    the first findings of each, for `tunelab data check`."""
    cfg = CurateConfig(personal_data="report")
    try:
        rows, _ = read(path, fmt, columns)  # the rows it can't read are data check's own errors
    except DataError:
        return {}
    found = curate(rows, cfg).findings if rows else []
    by_step: dict[str, list[dict[str, Any]]] = {}
    for f in found:
        by_step.setdefault(f.step, [])
        if len(by_step[f.step]) < examples:
            by_step[f.step].append(f.to_dict())
    counts = {s: dict(Counter(f.action for f in found if f.step == s)) for s in STEPS if s in by_step}
    return {"steps": counts, "examples": by_step}
