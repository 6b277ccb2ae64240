"""Filters between a parsed reply and a kept row: consistency of a question/answer pair, groundedness in a
document chunk, and diversity against the seed rows and the other new rows."""

from __future__ import annotations

import re
from collections.abc import Sequence

from ..curate.dups import Index, clusters, normalize

MAX_ANSWER_CHARS = 2000
GROUNDED = 0.5  # share of an answer's content words that must occur in its chunk
REPEAT = 0.9  # word overlap from which an answer just repeats its question
# Words that say nothing about whether an answer comes from a text (English; words under three characters are
# skipped anyway).
STOPWORDS = frozenset({"about", "above", "after", "again", "against", "also", "because", "been", "before", "being",
    "below", "between", "both", "could", "does", "doing", "down", "during", "each", "from", "further", "have",
    "having", "here", "into", "itself", "just", "more", "most", "other", "over", "same", "should", "some", "such",
    "than", "that", "their", "theirs", "them", "then", "there", "these", "they", "this", "those", "through", "under",
    "until", "very", "were", "what", "when", "where", "which", "while", "will", "with", "would", "your", "yours",
    "the", "and", "for", "are", "but", "not", "you", "all", "any", "can", "had", "her", "was", "one", "our", "out",
    "has", "his", "how", "its", "may", "new", "now", "see", "two", "who", "did", "get", "let", "say", "she", "too",
    "use"})


def _words(text: str) -> set[str]:
    return set(normalize(text).split())


def content_words(text: str) -> set[str]:
    """Words that carry meaning: three characters or more, not a stopword; numbers count whatever their length."""
    return {w for w in _words(text) if w.isdigit() or (len(w) >= 3 and w not in STOPWORDS)}


def qa_problem(question: str, answer: str, max_chars: int = MAX_ANSWER_CHARS) -> str | None:
    """Why a question/answer pair can't be used (a drop reason), or None."""
    if not question.strip():
        return "empty_question"
    if len(_words(question)) < 3:  # "el", "Question 1": not something a user asks
        return "question_too_short"
    if len(normalize(answer)) < 1:
        return "empty_answer"
    if len(answer) > max_chars:
        return "answer_too_long"
    q, a = _words(question), _words(answer)
    # short answers may well be words of the question ("Is it Paris?" "Paris"): only longer ones are compared
    if normalize(answer) == normalize(question) or (len(a) >= 4 and len(q & a) / len(a) >= REPEAT):
        return "repeats_question"
    return None


def grounded(answer: str, chunk: str, threshold: float = GROUNDED) -> float | None:
    """The share of the answer's content words found in the chunk, or None when it is below threshold. An answer
    with no content words ("...", a bare "yes") is not grounded: nothing in it shows it comes from the chunk."""
    words = content_words(answer)
    if not words:
        return None
    share = len(words & _words(chunk)) / len(words)
    return share if share >= threshold else None


def utterance_problem(text: str, labels: list[str]) -> str | None:
    """Why a new classification input is not one: an echoed label, an identifier, or JSON debris."""
    norm = normalize(text.replace("_", " "))
    if not norm:
        return "empty_text"
    if norm in {normalize(lb.replace("_", " ")) for lb in labels} or (" " not in text.strip() and "_" in text):
        return "not_an_utterance"
    if re.search(r'["\']\s*:|[{}]', text):
        return "not_an_utterance"
    return None


def novel(texts: Sequence[str], seeds: Sequence[str], threshold: float) -> list[str | None]:
    """For each new text: None when it is new, else the drop reason. Exact and near copies (estimated Jaccard
    similarity of character shingles >= threshold) of a seed row are "near_seed"; of an earlier new text,
    "near_duplicate" (the first of each group is kept)."""
    out: list[str | None] = [None] * len(texts)
    if seeds:
        index = Index(threshold, list(seeds))
        for i, t in enumerate(texts):
            if index.exact(t) is not None or index.similar(t):
                out[i] = "near_seed"
    left = [i for i, r in enumerate(out) if r is None]
    for group in clusters([texts[i] for i in left], threshold):
        for j, _ in group[1:]:
            out[left[j]] = "near_duplicate"
    return out
