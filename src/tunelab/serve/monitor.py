"""What `tunelab monitor` reports from the request log: latency, errors, token use, and drift.

Drift compares recent prompts sent to an adapter with the prompts it was tuned on (profiled when the
adapter was loaded): the length distribution (two-sample KS test) and the distance between the mean
prompt embeddings, judged against how far apart the two groups fall when their prompts are shuffled between them.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .store import RequestLog, Store, unpack

MIN_REQUESTS = 20  # fewer recent prompts than this says too little to call drift


@dataclass
class ModelStats:
    model: str
    requests: int = 0
    errors: int = 0
    cancelled: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: dict[str, float] = field(default_factory=dict)
    ttft_ms: dict[str, float] = field(default_factory=dict)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


@dataclass
class Drift:
    adapter: str
    recent: int
    training: int
    median_tokens_recent: float | None = None
    median_tokens_training: float | None = None
    length_ks: float | None = None
    length_p: float | None = None
    embedding_distance: float | None = None
    embedding_baseline_p95: float | None = None
    embedding_ratio: float | None = None
    drifted: bool = False
    message: str = ""


def parse_since(text: str) -> float:
    """'90s', '15m', '1h', '7d' -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not m:
        raise ValueError(f"--since {text!r}: expected a number with s, m, h or d, e.g. 15m, 1h, 7d")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    v = sorted(values)

    def q(p: float) -> float:
        k = (len(v) - 1) * p
        lo, hi = math.floor(k), math.ceil(k)
        return v[lo] + (v[hi] - v[lo]) * (k - lo)

    return {"p50": round(q(0.5), 1), "p95": round(q(0.95), 1), "p99": round(q(0.99), 1)}


def model_stats(rows: list[RequestLog]) -> list[ModelStats]:
    by: dict[str, ModelStats] = {}
    lat: dict[str, list[float]] = {}
    ttft: dict[str, list[float]] = {}
    for r in rows:
        s = by.setdefault(r.model, ModelStats(r.model))
        s.requests += 1
        if r.status == 499:
            s.cancelled += 1
        elif r.status >= 400:
            s.errors += 1
        s.prompt_tokens += r.prompt_tokens or 0
        s.completion_tokens += r.completion_tokens or 0
        if r.status == 200 and r.latency_ms is not None:
            lat.setdefault(r.model, []).append(r.latency_ms)
        if r.status == 200 and r.ttft_ms is not None:
            ttft.setdefault(r.model, []).append(r.ttft_ms)
    for name, s in by.items():
        s.latency_ms, s.ttft_ms = percentiles(lat.get(name, [])), percentiles(ttft.get(name, []))
    return sorted(by.values(), key=lambda s: -s.requests)


def _cosine_distance(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    return 1.0 - float(a @ b) / (na * nb) if na and nb else 0.0


def embedding_shift(recent: np.ndarray, train: np.ndarray, rounds: int = 200,
                    seed: int = 0) -> tuple[float, float]:
    """Cosine distance between the recent and training centroids, and the 95th percentile of the same
    distance when the two groups are drawn at random from both together (a permutation test): what
    chance alone gives for these group sizes."""
    pool = np.concatenate([recent, train])
    total, n = pool.sum(0), len(recent)
    observed = _cosine_distance(recent.mean(0), train.mean(0))
    rng = np.random.default_rng(seed)
    null = []
    for _ in range(rounds):
        pick = rng.choice(len(pool), n, replace=False)
        part = pool[pick].sum(0)
        null.append(_cosine_distance(part / n, (total - part) / (len(pool) - n)))
    return observed, float(np.percentile(null, 95))


def drift(adapter: str, rows: list[RequestLog], lengths: list[int], embeddings: list[list[float]],
          seed: int = 0) -> Drift:
    from scipy.stats import ks_2samp

    recent = [r for r in rows if r.model == adapter and r.status == 200]
    d = Drift(adapter, len(recent), len(lengths))
    if len(recent) < MIN_REQUESTS or len(lengths) < MIN_REQUESTS:
        d.message = (f"not enough traffic to judge drift ({len(recent)} recent requests, {len(lengths)} training "
                     f"prompts; {MIN_REQUESTS} of each needed)")
        return d
    recent_len = [r.prompt_tokens for r in recent]
    d.median_tokens_recent = float(sorted(recent_len)[len(recent_len) // 2])
    d.median_tokens_training = float(sorted(lengths)[len(lengths) // 2])
    ks = ks_2samp(recent_len, lengths)
    d.length_ks, d.length_p = round(float(ks.statistic), 3), float(ks.pvalue)
    vecs = [v for v in (unpack(r.embedding) for r in recent) if v]
    if vecs and embeddings and len(vecs[0]) == len(embeddings[0]):
        d.embedding_distance, d.embedding_baseline_p95 = embedding_shift(
            np.asarray(vecs, dtype=np.float64), np.asarray(embeddings, dtype=np.float64), seed=seed)
        d.embedding_ratio = d.embedding_distance / max(d.embedding_baseline_p95, 1e-12)
    ratio = (d.median_tokens_recent or 1) / max(d.median_tokens_training or 1, 1)
    length_drift = d.length_p < 0.01 and (ratio > 1.5 or ratio < 1 / 1.5)
    content_drift = d.embedding_ratio is not None and d.embedding_ratio > 2.0
    d.drifted = length_drift or content_drift
    reasons = []
    if length_drift:
        reasons.append(f"prompts are {'longer' if ratio > 1 else 'shorter'} than in training (median "
                       f"{d.median_tokens_recent:.0f} vs {d.median_tokens_training:.0f} tokens)")
    if content_drift:
        reasons.append(f"their wording has moved {d.embedding_ratio:.1f}x further from the training prompts "
                       f"than chance would put them")
    if d.drifted:
        d.message = (f"Traffic to '{adapter}' has drifted from what it was tuned on: " + "; ".join(reasons) +
                     ". Its answers may be less reliable: read some recent requests, collect feedback, and "
                     "retrain with `tunelab feedback export`.")
    else:
        d.message = f"Traffic to '{adapter}' looks like its training data."
    return d


def report(store: Store, since_s: float) -> dict[str, Any]:
    now = time.time()
    rows = store.requests_since(now - since_s)
    stats = model_stats(rows)
    drifts = [drift(name, rows, lengths, emb) for name, (_, lengths, emb) in sorted(store.profiles().items())]
    total = len(rows)
    errors = sum(s.errors for s in stats)
    return {"since_seconds": since_s, "requests": total, "errors": errors,
            "error_rate": errors / total if total else 0.0,
            "latency_ms": percentiles([r.latency_ms for r in rows if r.status == 200 and r.latency_ms is not None]),
            "ttft_ms": percentiles([r.ttft_ms for r in rows if r.status == 200 and r.ttft_ms is not None]),
            "models": [asdict(s) | {"error_rate": s.error_rate} for s in stats],
            "drift": [asdict(d) for d in drifts]}
