"""Leaks between splits (validation rows that copy training rows) and contamination of an evaluation file
(training rows that share a long word sequence with it, or copy one of its rows)."""

from __future__ import annotations

from .dups import Index, ngrams
from .rows import Action, Finding, Row


def leaks(train: list[Row], validation: list[Row], threshold: float, action: Action) -> list[Finding]:
    """A finding for every validation row that is an exact or near copy of a training row."""
    if not train or not validation:
        return []
    index = Index(threshold, [r.text() for r in train])
    out = []
    for row in validation:
        text = row.text()
        same = index.exact(text)
        hits = [(same, 1.0)] if same is not None else index.similar(text)
        if hits:
            i, sim = hits[0]
            what = "exact copy" if sim >= 1.0 else f"near copy (similarity {min(sim, 0.99):.2f})"
            out.append(Finding(row.where, "leaks", action, f"validation row is an {what} of training row "
                               f"{train[i].where}", {"train": train[i].where, "similarity": sim}))
    return out


def contamination(train: list[Row], evaluation: list[Row], n: int, threshold: float) -> list[Finding]:
    """A drop finding for every training row that shares an n-word sequence with an evaluation row or is a near
    copy of one; short rows (fewer than n words) can only be near copies."""
    if not train or not evaluation:
        return []
    seen: dict[tuple[str, ...], str] = {}
    for row in evaluation:
        for g in ngrams(row.text(), n):
            seen.setdefault(g, row.where)
    index = Index(threshold, [r.text() for r in evaluation])
    out = []
    for row in train:
        text = row.text()
        shared = next((g for g in ngrams(text, n) if g in seen), None)
        if shared is not None:
            out.append(Finding(row.where, "contamination", "drop", f"shares {n} words with evaluation row "
                               f"{seen[shared]}: \"{' '.join(shared)}\"", {"evaluation": seen[shared],
                                                                          "ngram": " ".join(shared)}))
            continue
        same = index.exact(text)
        hits = [(same, 1.0)] if same is not None else index.similar(text)
        if hits:
            i, sim = hits[0]
            out.append(Finding(row.where, "contamination", "drop", f"copies evaluation row {evaluation[i].where} "
                               f"(similarity {sim:.2f})", {"evaluation": evaluation[i].where, "similarity": sim}))
    return out
