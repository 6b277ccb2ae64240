"""Task metrics, computed with maintained libraries (scikit-learn, sacrebleu, rouge-score)."""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from typing import Any


def classification_metrics(gold: list[str], pred: list[str], labels: list[str]) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix (rows: true)."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    p, r, f, s = precision_recall_fscore_support(gold, pred, labels=labels, zero_division=0)
    return {
        "accuracy": float(accuracy_score(gold, pred)),
        "macro_f1": float(f1_score(gold, pred, labels=labels, average="macro", zero_division=0)),
        "per_class": {lab: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                            "support": int(s[i])} for i, lab in enumerate(labels)},
        "confusion": {"labels": labels, "matrix": confusion_matrix(gold, pred, labels=labels).tolist()},
    }


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, articles or extra whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(reference: str, prediction: str) -> float:
    ref, hyp = normalize_answer(reference).split(), normalize_answer(prediction).split()
    if not ref or not hyp:
        return float(ref == hyp)
    common = sum((Counter(ref) & Counter(hyp)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(hyp), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def final_number(text: str) -> float | None:
    """The answer of a GSM8K-style text: the number after '####', else the last number (as the data layer
    reads reference answers)."""
    from ..data.preference import final_number as written

    num = written(text)
    return float(num) if num is not None else None


def same_final_number(prediction: str, reference: str) -> bool:
    """Whether a prediction ends in the reference's number ('72' == '72.0'); no number never matches. What the
    `numeric` RL reward and numeric accuracy count as right."""
    a, b = final_number(prediction), final_number(reference)
    return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def per_example_generation(reference: str, prediction: str) -> dict[str, float | None]:
    """Exact match, token F1, ROUGE-L, key-term recall and unsupported key terms (see key_terms), and numeric
    correctness for GSM8K-style references."""
    from rouge_score import rouge_scorer

    from .key_terms import term_overlap

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    out = {"exact_match": float(normalize_answer(reference) == normalize_answer(prediction)),
           "token_f1": token_f1(reference, prediction),
           "rouge_l": scorer.score(reference, prediction)["rougeL"].fmeasure} | term_overlap(reference, prediction)
    if "####" in reference and final_number(reference) is not None:
        out["numeric_correct"] = float(same_final_number(prediction, reference))
    return out


def repetition(text: str, n: int = 3) -> float:
    """Share of a text's word n-grams that repeat an earlier one (0: none, near 1: a loop)."""
    words = text.split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def sanity_metrics(predictions: list[str]) -> dict[str, float]:
    """Generation sanity: empty answers, answers that loop, average length in words."""
    n = max(len(predictions), 1)
    return {"empty_rate": sum(not p.strip() for p in predictions) / n,
            "repetition_rate": sum(repetition(p) > 0.3 for p in predictions) / n,
            "avg_words": sum(len(p.split()) for p in predictions) / n}


def generation_metrics(references: list[str], predictions: list[str]) -> dict[str, Any]:
    """Exact match, token F1, ROUGE-L, key-term recall and unsupported key terms (means over examples), corpus
    chrF and BLEU, numeric accuracy, and the sanity rates (empty, repeating, length)."""
    import sacrebleu

    rows = [per_example_generation(r, p) for r, p in zip(references, predictions, strict=True)]
    n = max(len(rows), 1)
    out: dict[str, Any] = {k: sum(r[k] for r in rows) / n
                           for k in ("exact_match", "token_f1", "rouge_l", "unsupported_terms")}
    recall = [r["key_term_recall"] for r in rows if r["key_term_recall"] is not None]
    if recall:  # references without any key term (short labels, yes/no) leave it out
        out["key_term_recall"] = sum(recall) / len(recall)
    numeric = [r["numeric_correct"] for r in rows if "numeric_correct" in r]
    if numeric:
        out["numeric_accuracy"] = sum(numeric) / len(numeric)
    out["chrf"] = sacrebleu.corpus_chrf(predictions, [references]).score
    out["bleu"] = sacrebleu.corpus_bleu(predictions, [references]).score
    return out | sanity_metrics(predictions)


def bootstrap_diff(tuned: list[float], base: list[float], seed: int = 0) -> tuple[float, float, float]:
    """Mean paired difference (tuned - base) with a 95% bootstrap confidence interval."""
    import numpy as np
    from scipy.stats import bootstrap

    diffs = np.asarray(tuned, dtype=float) - np.asarray(base, dtype=float)
    mean = float(diffs.mean()) if len(diffs) else 0.0
    if len(diffs) < 2 or np.all(diffs == diffs[0]):
        return mean, mean, mean
    res = bootstrap((diffs,), np.mean, confidence_level=0.95, n_resamples=2000, method="percentile",
                    random_state=np.random.default_rng(seed))
    return mean, float(res.confidence_interval.low), float(res.confidence_interval.high)
