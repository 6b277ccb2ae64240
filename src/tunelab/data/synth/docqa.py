"""Mode 2: question/answer pairs grounded in document chunks; an answer sharing too few words with its chunk
(filters.GROUNDED) is dropped as made up."""

from __future__ import annotations

import math

from . import prompts
from .candidates import Candidate, Counts, Job, parsed, provenance
from .documents import Chunk
from .filters import grounded, qa_problem
from .parse import parse_pairs
from .teacher import Answer, Request


def pick(chunks: list[Chunk], n: int, per_chunk: int) -> list[Chunk]:
    """Enough chunks for about n pairs, spread evenly over the documents (all of them when n allows)."""
    want = math.ceil(n / per_chunk)
    if want >= len(chunks):
        return chunks
    return [chunks[i * len(chunks) // want] for i in range(want)]


def document_jobs(chunks: list[Chunk], all_chunks: list[Chunk], per_chunk: int, seed: int, temperature: float,
                  max_tokens: int) -> list[Job]:
    position = {c.id: i for i, c in enumerate(all_chunks)}  # a chunk's request stays the same whatever n picks
    return [Job(Request(prompts.document_questions(c.text, per_chunk), temperature, max_tokens,
                        seed * 1_000_000 + position[c.id], "documents"), "documents", chunk=c) for c in chunks]


def document_candidates(jobs: list[Job], answers: list[Answer], teacher: dict[str, str], counts: Counts,
                        max_chars: int, threshold: float) -> list[Candidate]:
    out = []
    for job, ans, pairs in parsed(jobs, answers, parse_pairs, counts):
        assert job.chunk is not None
        for q, a in pairs:
            counts.candidates += 1
            c = Candidate({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}, q,
                          provenance(job, ans, teacher))
            problem = qa_problem(q, a, max_chars)
            share = grounded(a, job.chunk.text, threshold) if problem is None else None
            if problem is None and share is None:
                problem = "ungrounded"
            if problem:
                counts.drop_candidate(c, problem)
            else:
                c.provenance["grounded"] = round(share or 0.0, 2)
            out.append(c)
    return out
