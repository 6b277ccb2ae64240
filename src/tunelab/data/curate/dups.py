"""Exact and near-duplicate rows: MinHash signatures of character shingles, candidates from LSH, clusters
kept together by union-find, one row kept per cluster."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .rows import Finding, Row

NUM_PERM = 128
SHINGLE = 5  # characters: short rows (a dozen words) still get enough shingles to compare
_NOT_WORD = re.compile(r"[^\w]+")


def normalize(text: str) -> str:
    """Case, accents' composition, punctuation and spacing do not make rows different."""
    return " ".join(_NOT_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).split())


def shingles(text: str) -> set[bytes]:
    t = normalize(text)
    if len(t) <= SHINGLE:
        return {t.encode()}
    return {t[i:i + SHINGLE].encode() for i in range(len(t) - SHINGLE + 1)}


@dataclass
class Index:
    """MinHash LSH over a list of texts; `similar` finds the indexed texts within a similarity of another."""

    threshold: float
    texts: list[str]

    def __post_init__(self) -> None:
        from datasketch import MinHash, MinHashLSH

        self._exact: dict[str, int] = {}
        for i, t in enumerate(self.texts):
            self._exact.setdefault(_digest(t), i)
        self._lsh = MinHashLSH(threshold=self.threshold, num_perm=NUM_PERM)
        self.hashes = list(MinHash.bulk([shingles(t) for t in self.texts], num_perm=NUM_PERM))
        for i, m in enumerate(self.hashes):
            self._lsh.insert(i, m, check_duplication=False)

    def exact(self, text: str) -> int | None:
        return self._exact.get(_digest(text))

    def similar(self, text: str, minhash: object | None = None) -> list[tuple[int, float]]:
        """(index, estimated similarity) of the indexed texts at least `threshold` alike, most alike first."""
        from datasketch import MinHash

        m = minhash if minhash is not None else MinHash.bulk([shingles(text)], num_perm=NUM_PERM)[0]
        # LSH gives candidates; the signature's own estimate confirms them (LSH alone lets some through below)
        hits = [(i, min(float(self.hashes[i].jaccard(m)), 0.999)) for i in self._lsh.query(m)]
        return sorted(((i, s) for i, s in hits if s >= self.threshold), key=lambda h: -h[1])


def _digest(text: str) -> str:
    return hashlib.blake2b(normalize(text).encode(), digest_size=16).hexdigest()


def clusters(texts: Sequence[str], threshold: float) -> list[list[tuple[int, float]]]:
    """Groups of two or more alike texts as (index, similarity to the group's first), first = lowest index."""
    index = Index(threshold, list(texts))
    parent = list(range(len(texts)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, t in enumerate(texts):
        same = index.exact(t)
        pairs = [(same, 1.0)] if same is not None and same != i else []
        for j, _ in pairs + index.similar(t, index.hashes[i]):
            a, b = root(i), root(j)
            if a != b:
                parent[max(a, b)] = min(a, b)
    groups: dict[int, list[int]] = {}
    for i in range(len(texts)):
        groups.setdefault(root(i), []).append(i)
    out = []
    for members in groups.values():
        if len(members) > 1:
            first = members[0]
            out.append([(i, 1.0 if i == first else _similarity(index, first, i)) for i in members])
    return sorted(out, key=lambda g: g[0][0])


def _similarity(index: Index, a: int, b: int) -> float:
    """1.0 for exact duplicates only: the signature's estimate can reach 1.0 for rows that still differ."""
    if _digest(index.texts[a]) == _digest(index.texts[b]):
        return 1.0
    return min(round(float(index.hashes[a].jaccard(index.hashes[b])), 3), 0.999)


def _label_note(row: Row, kept: Row) -> str:
    a, b = row.record, kept.record
    if a is not None and b is not None and a.kind == b.kind == "classification" and a.label != b.label:
        return f"; labelled {a.label!r} here, {b.label!r} there"
    return ""


def duplicates(rows: list[Row], threshold: float) -> list[Finding]:
    """A drop finding for every row but the first of each cluster of exact or near-duplicates."""
    out = []
    for n, group in enumerate(clusters([r.text() for r in rows], threshold), 1):
        kept = rows[group[0][0]]
        for i, sim in group[1:]:
            row = rows[i]
            what = "exact duplicate" if sim >= 1.0 else f"near-duplicate (similarity {min(sim, 0.99):.2f})"
            out.append(Finding(row.where, "duplicates", "drop", f"{what} of {kept.where}{_label_note(row, kept)}",
                               {"cluster": n, "kept": kept.where, "similarity": sim, "size": len(group)}))
    return out


def ngrams(text: str, n: int) -> Iterable[tuple[str, ...]]:
    words = normalize(text).split()
    return (tuple(words[i:i + n]) for i in range(len(words) - n + 1))
