"""Mode 1: more rows like a few seed rows. Chat and completion seeds give question/answer requests
(self-instruct: k random seeds shown, one new pair asked); classification seeds give per-label requests for new
utterances, each then labelled again by the teacher or by a given model (kept only where it agrees)."""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..load import load_records
from ..records import DataError, Problem, Record
from . import prompts
from .candidates import Candidate, Counts, Job, parsed, provenance
from .filters import qa_problem, utterance_problem
from .parse import ParseError, parse_label, parse_pair, parse_utterances
from .teacher import Answer, Request

MAX_LABELS_NAMED = 20  # other labels named in an utterance prompt: more makes the prompt long for little gain


@dataclass
class Seeds:
    """The usable seed rows, as question/answer pairs or as utterances by label."""

    kind: str  # "qa" or "labels"
    pairs: list[tuple[str, str, str]] = field(default_factory=list)  # (question, answer, where)
    by_label: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # label -> [(text, where)]
    system: str | None = None  # the system prompt every chat seed shares, given to the new rows too
    skipped: list[Problem] = field(default_factory=list)  # seed rows with problems, left out

    def texts(self) -> list[str]:
        """What new rows are compared with for near-copies: the questions, or the utterances."""
        if self.kind == "qa":
            return [q for q, _, _ in self.pairs]
        return [t for rows in self.by_label.values() for t, _ in rows]


def _qa(rec: Record) -> tuple[str, str] | None:
    if rec.kind == "completion":
        return rec.prompt, rec.completion
    users = [i for i, m in enumerate(rec.messages) if m["role"] == "user" and m.get("content")]
    if not users:
        return None
    reply = next((m for m in rec.messages[users[0]:] if m["role"] == "assistant" and m.get("content")), None)
    return (rec.messages[users[0]]["content"], reply["content"]) if reply else None


def read_seeds(path: str | Path, fmt: str = "auto", columns: dict[str, str] | None = None) -> Seeds:
    loaded = load_records(path, fmt, columns)
    if not loaded.records:
        raise DataError(loaded.errors or [Problem(str(path), "no rows")],
                        "no usable seed rows: `tunelab data check` explains each problem")
    kinds = Counter(r.kind for r in loaded.records)
    if "text" in kinds:
        raise DataError([Problem(str(path), "plain text rows can't seed synthetic data: give chat, alpaca, "
                                            "completion or classification (text + label) rows")])
    if len(kinds) > 1:
        raise DataError([Problem(str(path), f"mixed seed rows ({', '.join(sorted(kinds))}): give one kind")])
    seeds = Seeds("labels" if "classification" in kinds else "qa", skipped=loaded.errors)
    if seeds.kind == "labels":
        for r in loaded.records:
            seeds.by_label.setdefault(r.label, []).append((r.text, r.where))
        if len(seeds.by_label) < 2:
            raise DataError([Problem(str(path), f"only one label ({next(iter(seeds.by_label))!r}): classification "
                                                "seeds need at least two labels")])
        return seeds
    for r in loaded.records:
        qa = _qa(r)
        if qa is None:
            seeds.skipped.append(Problem(r.where, "no user turn answered by an assistant turn", "warning"))
            continue
        seeds.pairs.append((*qa, r.where))
    if not seeds.pairs:
        raise DataError([Problem(str(path), "no seed row has a question answered by the assistant")])
    systems = {r.messages[0]["content"] if r.messages and r.messages[0]["role"] == "system" else None
               for r in loaded.records}
    seeds.system = systems.pop() if len(systems) == 1 else None
    return seeds


def qa_jobs(seeds: Seeds, n: int, k: int, seed: int, temperature: float, max_tokens: int) -> list[Job]:
    """n requests for one new pair each; request i always shows the same seeds, whatever n (a larger re-run
    reuses the cached replies of a smaller one)."""
    jobs = []
    for i in range(n):
        shown = random.Random(f"{seed}:qa:{i}").sample(seeds.pairs, min(k, len(seeds.pairs)))
        req = Request(prompts.new_example([(q, a) for q, a, _ in shown]), temperature, max_tokens,
                      seed * 1_000_000 + i, "qa")
        jobs.append(Job(req, "examples", [w for _, _, w in shown]))
    return jobs


def label_jobs(seeds: Seeds, per_label: int, per_request: int, k: int, seed: int, temperature: float,
               max_tokens: int) -> list[Job]:
    jobs = []
    labels = sorted(seeds.by_label)
    for li, label in enumerate(labels):
        others = [lb for lb in labels if lb != label][:MAX_LABELS_NAMED]
        for j in range(math.ceil(per_label / per_request)):
            rows = seeds.by_label[label]
            shown = random.Random(f"{seed}:labels:{label}:{j}").sample(rows, min(k, len(rows)))
            req = Request(prompts.new_utterances(label, [t for t, _ in shown], others, per_request), temperature,
                          max_tokens, seed * 1_000_000 + li * 1000 + j, "utterances")
            jobs.append(Job(req, "labels", [w for _, w in shown], label=label))
    return jobs


def _chat(question: str, answer: str, system: str | None) -> dict[str, Any]:
    msgs = [{"role": "system", "content": system}] if system else []
    return {"messages": [*msgs, {"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def qa_candidates(jobs: list[Job], answers: list[Answer], teacher: dict[str, str], counts: Counts,
                  system: str | None, max_chars: int) -> list[Candidate]:
    out = []
    for job, ans, (q, a) in parsed(jobs, answers, parse_pair, counts):
        counts.candidates += 1
        c = Candidate(_chat(q, a, system), q, provenance(job, ans, teacher))
        problem = qa_problem(q, a, max_chars)
        if problem:
            counts.drop_candidate(c, problem)
        out.append(c)
    return out


def utterance_candidates(jobs: list[Job], answers: list[Answer], teacher: dict[str, str], counts: Counts,
                         labels: list[str]) -> list[Candidate]:
    out = []
    for job, ans, texts in parsed(jobs, answers, parse_utterances, counts):
        for t in texts:
            counts.candidates += 1
            c = Candidate({"text": t, "label": job.label}, t, provenance(job, ans, teacher), label=job.label)
            problem = utterance_problem(t, labels)
            if problem:
                counts.drop_candidate(c, problem)
            out.append(c)
    return out


def relabel_jobs(seeds: Seeds, kept: list[Candidate], max_tokens: int) -> list[Job]:
    """Greedy requests (temperature 0) that label each new utterance again, from the label list and one seed
    example per label."""
    labels = sorted(seeds.by_label)
    examples = {lb: rows[0][0] for lb, rows in seeds.by_label.items()}
    return [Job(Request(prompts.relabel(c.data["text"], labels, examples), 0.0, max_tokens, 0, "relabel"), "labels",
                label=c.label) for c in kept]


def teacher_labels(answers: list[Answer], labels: list[str]) -> list[str | None]:
    """The label each relabelling reply names; None where it failed or names none (or several)."""
    out: list[str | None] = []
    for ans in answers:
        try:
            out.append(None if ans.text is None else parse_label(ans.text, labels))
        except ParseError:
            out.append(None)
    return out


def apply_model_labels(kept: list[Candidate], said: list[str], counts: Counts) -> None:
    """Drop the utterances a model (the one being trained, say) labels otherwise than the label they were asked
    for."""
    for c, again in zip(kept, said, strict=True):
        c.provenance["relabel"] = again
        if again != c.label:
            counts.drop_candidate(c, "relabel_disagrees")


def apply_relabels(kept: list[Candidate], answers: list[Answer], labels: list[str], counts: Counts) -> None:
    """Drop the utterances the teacher labels differently the second time (or can't label)."""
    for c, ans in zip(kept, answers, strict=True):
        if ans.text is None:
            counts.drop_candidate(c, "relabel_failed")
            continue
        try:
            again = parse_label(ans.text, labels)
        except ParseError:
            counts.drop_candidate(c, "relabel_unclear")
            continue
        c.provenance["relabel"] = again
        if again != c.label:
            counts.drop_candidate(c, "relabel_disagrees")
