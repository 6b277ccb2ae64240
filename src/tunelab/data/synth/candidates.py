"""What a request is for, the rows its reply proposes, and the tally of what was kept and dropped (and why)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from .documents import Chunk
from .parse import ParseError
from .teacher import Answer, Request

T = TypeVar("T")

Mode = Literal["examples", "labels", "documents"]
PROVENANCE_KEY = "tunelab_synth"  # every format's reader ignores keys it doesn't know, so it rides along


@dataclass
class Job:
    """One request to the teacher and what it was made from."""

    request: Request
    mode: Mode
    seeds: list[str] = field(default_factory=list)  # "file:line" of the seed rows shown
    label: str | None = None
    chunk: Chunk | None = None


@dataclass
class Candidate:
    """A proposed row, in its output keys (without provenance) until a filter drops it."""

    data: dict[str, Any]
    compare: str  # the text compared for near-duplicates: a question, an utterance
    provenance: dict[str, Any]
    label: str | None = None
    dropped: str | None = None  # the reason, once dropped


@dataclass
class Counts:
    """Replies and rows through the filters; the first dropped example of each reason, to show what went wrong."""

    parsed: int = 0
    unparsable: int = 0
    candidates: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)

    def drop(self, reason: str, what: str, n: int = 1) -> None:
        self.dropped[reason] += n
        self.examples.setdefault(reason, " ".join(what.split())[:200])

    def drop_candidate(self, c: Candidate, reason: str) -> None:
        c.dropped = reason
        self.drop(reason, c.compare)


def provenance(job: Job, answer: Answer, teacher: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {"teacher": teacher, "prompt_id": answer.key[:16], "mode": job.mode}
    if job.seeds:
        out["seeds"] = job.seeds
    if job.chunk is not None:
        out["chunk"] = job.chunk.id
    return out


def parsed(jobs: list[Job], answers: list[Answer], parse: Callable[[str], T],
           counts: Counts) -> Iterator[tuple[Job, Answer, T]]:
    """Each answered job with its reply parsed; replies that don't parse are counted as dropped."""
    for job, ans in zip(jobs, answers, strict=True):
        if ans.text is None:
            continue
        try:
            got = parse(ans.text)
        except ParseError:
            counts.unparsable += 1
            counts.drop("unparsable", ans.text or "(empty)")
            continue
        counts.parsed += 1
        yield job, ans, got
