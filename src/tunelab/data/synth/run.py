"""One synthesis run, from seed rows or documents to DIR/synthetic.jsonl: ask the teacher (cached), parse, filter
(consistency, groundedness, diversity), curate, write atomically, check, and mark completion with DIR/synth.json.

The output directory holds only what a run wrote; the two result files are removed when a run starts and written
whole at its end, so a directory with synth.json is always a finished run (and a failed run leaves none)."""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from ... import atomic
from ...errors import TunelabError
from . import docqa, examples
from .candidates import PROVENANCE_KEY, Candidate, Counts, Job, Mode
from .documents import CHUNK_WORDS, OVERLAP_WORDS, chunk, read_documents
from .filters import GROUNDED, MAX_ANSWER_CHARS, novel
from .teacher import CACHE_FILE, Answer, Cache, Tally, Teacher, TeacherSettings

OUTPUT = "synthetic.jsonl"
MANIFEST = "synth.json"
# texts -> labels, in order: a trained classifier that labels the new utterances again instead of the teacher
Relabel = Callable[[list[str]], list[str]]
_OURS = {OUTPUT, MANIFEST, CACHE_FILE, f"{CACHE_FILE}-journal", f"{CACHE_FILE}-wal", f"{CACHE_FILE}-shm"}


class SynthError(TunelabError):
    """A run that can't start (a bad output directory, both or neither source) or kept no row."""


class Progress(Protocol):
    def start(self, what: str, total: int) -> None: ...
    def advance(self, answer: Answer) -> None: ...


@dataclass
class SynthOptions:
    n: int = 200  # rows asked for (questions, or utterances over all labels, or pairs from documents)
    per_label: int | None = None  # classification: new utterances per label (default: n spread over the labels)
    examples_per_prompt: int = 3  # seed rows shown in each request
    per_request: int = 5  # classification: utterances asked for in one request
    per_chunk: int = 3  # documents: pairs asked for per chunk
    chunk_words: int = CHUNK_WORDS
    overlap_words: int = OVERLAP_WORDS
    temperature: float = 0.9  # high enough that requests showing the same seeds still differ
    max_tokens: int = 512
    similarity: float = 0.8  # near-duplicate threshold (estimated Jaccard of character shingles)
    max_answer_chars: int = MAX_ANSWER_CHARS
    grounded: float = GROUNDED
    relabel: bool = True
    teacher_check: int = 0  # with a relabel function: the teacher also labels this many of the same rows (counted)
    seed: int = 0
    fmt: str = "auto"
    columns: dict[str, str] | None = None


def _prepare(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise SynthError(f"--out {out} is a file: give a directory (new, or one `tunelab data synth` wrote)")
    if out.is_dir():
        others = sorted(p.name for p in out.iterdir() if p.name not in _OURS and not p.name.startswith("."))
        if others:
            raise SynthError(f"--out {out} holds other files ({', '.join(others[:5])}): give a new directory, or "
                             "one `tunelab data synth` wrote (its teacher-cache.sqlite makes re-runs free)")
    out.mkdir(parents=True, exist_ok=True)
    for name in (MANIFEST, OUTPUT):  # the manifest first: from here on the directory is not a finished run
        (out / name).unlink(missing_ok=True)


class _Asker:
    """The teacher, asked phase by phase, each phase tallied apart and shown as one progress bar."""

    def __init__(self, teacher: Teacher, progress: Progress | None) -> None:
        self.teacher, self.progress = teacher, progress
        self.tallies: dict[str, Tally] = {}
        self.seconds: dict[str, float] = {}

    def __call__(self, phase: str, what: str, jobs: list[Job]) -> list[Answer]:
        self.teacher.tally = Tally()
        self.tallies[phase] = self.teacher.tally
        if self.progress is not None:
            self.progress.start(what, len(jobs))
        t0 = time.perf_counter()
        try:
            return self.teacher.ask([j.request for j in jobs], self.progress.advance if self.progress else None)
        finally:
            self.seconds[phase] = round(time.perf_counter() - t0, 1)


def synthesize(out_dir: str | Path, teacher_settings: TeacherSettings, opts: SynthOptions, *,
               seeds: str | Path | None = None, documents: str | Path | None = None,
               progress: Progress | None = None, relabel: Relabel | None = None) -> dict[str, Any]:
    """Run once; returns the summary also written to DIR/synth.json. SynthError when no row survives.

    relabel: for classification seeds, a function (texts -> labels, e.g. the model being trained) that labels the
    new utterances again instead of the teacher; rows it labels otherwise are dropped. Its `labels` attribute, if
    it has one, lists all it can answer (seed labels outside it are an error); its `describe()` goes to synth.json.
    """
    if (seeds is None) == (documents is None):
        raise SynthError("give seed rows (SEEDS.jsonl) or --documents FOLDER, one of the two")
    t0 = time.perf_counter()
    out = Path(out_dir)
    source = examples.read_seeds(seeds, opts.fmt, opts.columns) if seeds is not None else None
    docs = read_documents(documents) if documents is not None else None
    if relabel is not None:
        _check_relabel(relabel, source, opts)
    _prepare(out)
    cache = Cache(out / CACHE_FILE)
    try:
        teacher = Teacher(teacher_settings, cache)
        ask = _Asker(teacher, progress)
        counts = Counts()
        info: dict[str, Any]
        if source is not None:
            mode, cands, fmt, info, requested = _from_seeds(source, opts, teacher, ask, counts, relabel)
        else:
            assert docs is not None
            mode, fmt = "documents", "chat"
            cands, info = _from_documents(docs, opts, teacher, ask, counts)
            requested = min(opts.n, info["asked"] * opts.per_chunk)
        kept = [c for c in cands if c.dropped is None]
        rows, curation = _curate(kept, fmt, opts, counts) if kept else ([], {})
        rows = _cap(rows, mode, opts, source, counts)
        tallies = {k: v.to_dict() | {"seconds": ask.seconds.get(k, 0.0)} for k, v in ask.tallies.items()}
        summary: dict[str, Any] = {
            "mode": mode, "teacher": teacher.describe(), "requested": requested,
            "requests": sum(t["requested"] for t in tallies.values()),
            "answered": sum(t["answered"] for t in tallies.values()),
            "cache_hits": sum(t["cache_hits"] for t in tallies.values()),
            "parsed": counts.parsed, "unparsable": counts.unparsable, "candidates": counts.candidates,
            "kept": len(rows), "dropped": dict(counts.dropped.most_common()), "phases": tallies,
            "dropped_examples": counts.examples, "curation": curation,
            **({"relabel": info.pop("relabel")} if "relabel" in info else {}), "source": info,
            "settings": asdict(opts) | asdict(teacher_settings),  # the key's variable name, never the key
        }
        if not rows:
            raise SynthError(_nothing_kept(summary, out))
        path = out / OUTPUT
        atomic.write_text(path, "".join(json.dumps(d | {PROVENANCE_KEY: p}, ensure_ascii=False) + "\n"
                                        for d, p in rows))
        summary["check"] = _check(path)
        summary["files"] = {"rows": str(path), "cache": str(out / CACHE_FILE)}
        summary["seconds"] = round(time.perf_counter() - t0, 1)
        atomic.write_json(out / MANIFEST, summary)  # last: marks the run finished
        return summary
    finally:
        cache.close()


def _check_relabel(relabel: Relabel, source: examples.Seeds | None, opts: SynthOptions) -> None:
    if source is None or source.kind != "labels":
        raise SynthError("a model labels rows again only for classification seeds (text + label), not for "
                         "question/answer seeds or documents")
    if not opts.relabel:
        raise SynthError("relabelling is switched off (--no-relabel) but a model to relabel with was given: "
                         "choose one")
    known = getattr(relabel, "labels", None)
    if known is not None:
        missing = sorted(set(source.by_label) - set(known))
        if missing:
            raise SynthError(f"the seeds have labels the relabelling model doesn't know: {missing[:10]}"
                             f"{' ...' if len(missing) > 10 else ''} ({len(missing)} of {len(source.by_label)}); "
                             "relabel with a model trained on these labels")


def _relabeller(relabel: Relabel | None, teacher: Teacher) -> dict[str, Any]:
    if relabel is None:
        return {"kind": "teacher", **teacher.describe()}
    describe = getattr(relabel, "describe", None)
    return dict(describe()) if callable(describe) else {"kind": "function", "name": repr(relabel)[:200]}


def _from_seeds(seeds: examples.Seeds, opts: SynthOptions, teacher: Teacher, ask: _Asker, counts: Counts,
                relabel: Relabel | None = None) -> tuple[Mode, list[Candidate], str, dict[str, Any], int]:
    info: dict[str, Any] = {"seed_rows": len(seeds.texts()), "skipped": [str(p) for p in seeds.skipped[:20]]}
    k = opts.examples_per_prompt
    if seeds.kind == "qa":
        jobs = examples.qa_jobs(seeds, opts.n, k, opts.seed, opts.temperature, opts.max_tokens)
        answers = ask("generate", "asking for new examples", jobs)
        cands = examples.qa_candidates(jobs, answers, teacher.describe(), counts, seeds.system, opts.max_answer_chars)
        _diversity(cands, seeds.texts(), opts.similarity, counts)
        return "examples", cands, "chat", info, opts.n
    labels = sorted(seeds.by_label)
    per_label = opts.per_label or max(1, -(-opts.n // len(labels)))
    info["labels"] = {lb: len(rows) for lb, rows in sorted(seeds.by_label.items())}
    jobs = examples.label_jobs(seeds, per_label, opts.per_request, k, opts.seed, opts.temperature, opts.max_tokens)
    answers = ask("generate", "asking for new utterances", jobs)
    cands = examples.utterance_candidates(jobs, answers, teacher.describe(), counts, labels)
    _diversity(cands, seeds.texts(), opts.similarity, counts)
    info["relabel"] = {"by": {"kind": "none"}}
    if opts.relabel:
        kept = [c for c in cands if c.dropped is None]
        t0 = time.perf_counter()
        info["relabel"] = done = {"by": _relabeller(relabel, teacher)}
        if relabel is None:
            rjobs = examples.relabel_jobs(seeds, kept, max_tokens=32)
            examples.apply_relabels(kept, ask("relabel", "labelling them again", rjobs), labels, counts)
        else:
            said = list(relabel([c.data["text"] for c in kept]))
            if len(said) != len(kept):
                raise SynthError(f"the relabelling function gave {len(said)} labels for {len(kept)} texts")
            done["seconds"] = round(time.perf_counter() - t0, 1)  # the teacher check has its own phase
            if opts.teacher_check:
                done["teacher_check"] = _teacher_check(seeds, kept, said, opts, ask, labels)
            examples.apply_model_labels(kept, said, counts)
        done["rows"], done["agreed"] = len(kept), sum(c.dropped is None for c in kept)
        done.setdefault("seconds", round(time.perf_counter() - t0, 1))
    return "labels", cands, "classification", info, per_label * len(labels)


def _teacher_check(seeds: examples.Seeds, kept: list[Candidate], model: list[str], opts: SynthOptions, ask: _Asker,
                   labels: list[str]) -> dict[str, Any]:
    """What the teacher's own relabelling would have kept of a seeded sample of the candidates the model labels
    (model: its labels for them): counted only, nothing is dropped for it."""
    sample = sorted(random.Random(f"{opts.seed}:teacher_check").sample(range(len(kept)),
                                                                        min(opts.teacher_check, len(kept))))
    picked = [kept[i] for i in sample]
    answers = ask("teacher_check", "the teacher labels a sample too", examples.relabel_jobs(seeds, picked, 32))
    said = examples.teacher_labels(answers, labels)
    teacher_ok = [t == c.label for t, c in zip(said, picked, strict=True)]
    model_ok = [model[i] == kept[i].label for i in sample]
    return {"rows": len(picked), "teacher_agrees": sum(teacher_ok), "teacher_unclear": said.count(None),
            "model_agrees": sum(model_ok), "both_agree": sum(a and b for a, b in zip(teacher_ok, model_ok,
                                                                                     strict=True))}


def _from_documents(docs: tuple[list[Any], dict[str, str]], opts: SynthOptions, teacher: Teacher, ask: _Asker,
                    counts: Counts) -> tuple[list[Candidate], dict[str, Any]]:
    found, skipped = docs
    chunks = [c for d in found for c in chunk(d, opts.chunk_words, opts.overlap_words)]
    picked = docqa.pick(chunks, opts.n, opts.per_chunk)
    jobs = docqa.document_jobs(picked, chunks, opts.per_chunk, opts.seed, opts.temperature, opts.max_tokens)
    answers = ask("generate", "asking for questions about each chunk", jobs)
    cands = docqa.document_candidates(jobs, answers, teacher.describe(), counts, opts.max_answer_chars,
                                      opts.grounded)
    _diversity(cands, [], opts.similarity, counts)
    info = {"documents": [d.name for d in found], "skipped": skipped, "chunks": len(chunks), "asked": len(picked)}
    return cands, info


def _diversity(cands: list[Candidate], seeds: list[str], threshold: float, counts: Counts) -> None:
    live = [c for c in cands if c.dropped is None]
    for c, reason in zip(live, novel([c.compare for c in live], seeds, threshold), strict=True):
        if reason:
            counts.drop_candidate(c, reason)


def _curate(kept: list[Candidate], fmt: str, opts: SynthOptions,
            counts: Counts) -> tuple[list[tuple[dict[str, Any], dict[str, Any]]], dict[str, Any]]:
    """The project's curation on the new rows (quality, duplicates, personal data; not labels: the teacher's
    relabelling did that). Provenance stays out of it: it must not be redacted or compared."""
    from ...config.curate import CurateConfig
    from ..curate.rows import Row
    from ..curate.run import curate
    from ..formats import to_record

    rows, prov = [], {}
    for i, c in enumerate(kept, 1):
        where = f"synthetic:{i}"
        rec, _ = to_record(where, c.data, fmt)
        if rec is None:
            counts.drop_candidate(c, "invalid_row")
            continue
        rows.append(Row(where, c.data, rec, source=OUTPUT))
        prov[where] = c.provenance
    result = curate(rows, CurateConfig(labels="off"), seed=opts.seed)
    for f in result.findings:
        if f.action == "drop":
            counts.drop(f"curation_{f.step}", f"{f.where}: {f.reason}")
    summary = result.summary()
    summary.pop("settings", None)
    return [(r.data, prov[r.where]) for r in result.train], summary


def _cap(rows: list[tuple[dict[str, Any], dict[str, Any]]], mode: Mode, opts: SynthOptions,
         seeds: examples.Seeds | None, counts: Counts) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """At most n rows (per_label per label): a request for several can bring more."""
    if mode == "labels":
        assert seeds is not None
        limit = opts.per_label or max(1, -(-opts.n // len(seeds.by_label)))
        seen: Counter[str] = Counter()
        out = []
        for d, p in rows:
            seen[d["label"]] += 1
            if seen[d["label"]] <= limit:
                out.append((d, p))
    else:
        out = rows[:opts.n]
    if len(out) < len(rows):
        counts.drop("surplus", "more rows than asked for", len(rows) - len(out))
    return out


def _check(path: Path) -> dict[str, Any]:
    """`tunelab data check` on the written file: every row must read back as training data."""
    from ..check import check

    rep = check(str(path), tokenize=False)
    return {"ok": not rep.errors, "rows": rep.rows, "valid_rows": rep.valid_rows,
            "errors": [str(p) for p in rep.errors[:20]], "warnings": len(rep.warnings),
            "formats": sorted(set(rep.formats.values())), **({"labels": rep.labels} if getattr(rep, "labels", None)
                                                              else {})}


def _nothing_kept(s: dict[str, Any], out: Path) -> str:
    failed = {k: v for t in s["phases"].values() for k, v in t["failed"].items()}
    parts = [f"{s['requests']} requests, {s['answered']} answered ({s['cache_hits']} from the cache)"]
    parts += [f"{n} failed: {msg}" for msg, n in failed.items()]
    parts.append(f"{s['parsed']} parsed")
    parts += [f"{n} dropped as {reason} (e.g. {s['dropped_examples'].get(reason, '')[:80]!r})"
              for reason, n in s["dropped"].items()]
    return (f"teacher {s['teacher']['model']} at {s['teacher']['base_url']} gave no usable rows: "
            f"{'; '.join(parts)}. Nothing was written to {out / OUTPUT}; the replies are cached in "
            f"{out / CACHE_FILE}. A larger teacher model, or a lower --temperature, usually helps")
