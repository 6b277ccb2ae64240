"""Suspect labels: classification rows whose label disagrees with what a quick text model predicts for them
when it was trained without them (out-of-fold), found by cleanlab's confident learning and ranked for review.

The model is TF-IDF features (word 1-2-grams and within-word character 2-5-grams) and a logistic regression,
one-vs-rest, fitted by SGD; k-fold cross-validation gives every row a predicted distribution from a model that
never saw it. SGD rather than L-BFGS: on banking77 (10k rows, 77 labels, 2 CPU cores) the multinomial L-BFGS fit
took ~17 s for the same precision and recall that SGD reaches in ~2.5 s. Labels with a single row can't be
cross-validated: those rows are flagged as such (a label used once is often a typo) and left out of the model.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import scipy.sparse as sp
from cleanlab.filter import find_label_issues
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import SGDClassifier
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from ...config.curate import CurateConfig
from .rows import Finding, Row

MAX_FOLDS = 5
# L2 strength at one training row; shrinks as 1/sqrt(rows). Tuned on banking77 (8k training rows: alpha 2.8e-5,
# i.e. LogisticRegression C ~4.5) and on 100-row intent sets, where a rows-proportional C left the probabilities
# too flat for confident learning to flag most flipped labels.
ALPHA = 2.5e-3
UPDATES = 40_000  # SGD steps per label model: 5 epochs on 8k training rows, more epochs on small data
MAX_EPOCHS = 1000


def label_model_name() -> str:
    """The model whose predictions suspect labels disagree with, for the report."""
    return (f"TF-IDF word 1-2-grams + char 2-5-grams -> logistic regression (one-vs-rest, SGD), "
            f"{MAX_FOLDS}-fold out-of-fold predictions; issues by cleanlab (confident learning)")


def suspect_labels(rows: list[Row], cfg: CurateConfig, seed: int = 0) -> list[Finding]:
    """Classification rows whose label looks wrong, most suspect first (detail "rank" 1), then rows whose label
    has no other row to cross-validate it with; nothing when cfg.labels is "off" or there are fewer than 2
    labels."""
    if cfg.labels == "off":
        return []
    items = [r for r in rows if r.record is not None and r.record.kind == "classification"]
    counts = Counter(r.record.label for r in items if r.record is not None)
    if len(counts) < 2:
        return []
    lone = [Finding(r.where, "labels", "flag",  # never dropped: not judged, only too rare to judge
                    f"the only row labelled {r.record.label!r}: too few rows to cross-validate, label not checked",
                    {"given": r.record.label, "rows_with_label": 1})
            for r in items if r.record is not None and counts[r.record.label] < 2]
    items = [r for r in items if r.record is not None and counts[r.record.label] >= 2]
    classes = sorted({r.record.label for r in items if r.record is not None})
    if len(classes) < 2:
        return lone
    texts = [r.record.text for r in items if r.record is not None]
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[r.record.label] for r in items if r.record is not None])
    probs = out_of_fold_probabilities(texts, y, seed)
    if probs is None:
        return lone
    issues = find_label_issues(y, probs, return_indices_ranked_by="self_confidence", n_jobs=1)  # no process pool
    action = "drop" if cfg.labels == "drop" else "flag"
    found = []
    for rank, i in enumerate(issues.tolist(), 1):
        given = int(y[i])
        others = probs[i].copy()
        others[given] = -1.0  # the suggestion is the likeliest *other* label, even where the given one is argmax
        predicted = int(others.argmax())
        pg, pp = float(probs[i, given]), float(probs[i, predicted])
        found.append(Finding(
            items[i].where, "labels", action,
            f"labelled {classes[given]!r} ({pg:.2f}), the text model says {classes[predicted]!r} ({pp:.2f})",
            {"given": classes[given], "predicted": classes[predicted], "given_probability": round(pg, 4),
             "predicted_probability": round(pp, 4), "rank": rank}))
    return found + lone


def out_of_fold_probabilities(texts: list[str], y: np.ndarray, seed: int = 0) -> np.ndarray | None:
    """(rows, labels) predicted probabilities, each row's from a model trained on the other folds; y holds label
    indices 0..K-1, each with at least 2 rows. None when the texts have no features at all (e.g. all empty)."""
    x = features(texts)
    if x is None:
        return None
    folds = min(MAX_FOLDS, int(np.bincount(y).min()))
    n_train = len(texts) * (folds - 1) / folds
    epochs = min(MAX_EPOCHS, max(5, math.ceil(UPDATES / n_train)))
    # a fixed number of epochs (tol=None) and a seed: the same result every run; n_jobs fits the labels' binary
    # models on threads, each with its own seed, so the result does not depend on it
    model = SGDClassifier(loss="log_loss", alpha=ALPHA / math.sqrt(n_train), max_iter=epochs, tol=None,
                          random_state=seed, n_jobs=-1)
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    probs = cross_val_predict(model, x, y, cv=cv, method="predict_proba")
    return np.asarray(probs, dtype=np.float64)


def features(texts: list[str]) -> sp.csr_matrix | None:
    """TF-IDF word 1-2-grams and char_wb 2-5-grams of the texts, side by side. Fitted on all rows, labels unseen:
    vocabulary and IDF carry no label information into the held-out folds."""
    min_df = 2 if len(texts) >= 1000 else 1  # drop one-off n-grams only where there are enough rows to spare them
    parts = []
    for vectorizer in (TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=min_df, dtype=np.float32),
                       TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=min_df,
                                       dtype=np.float32)):
        try:
            parts.append(vectorizer.fit_transform(texts))
        except ValueError:  # empty vocabulary, e.g. no word of two letters or more in any row
            continue
    return sp.hstack(parts, format="csr") if parts else None
