"""Metric values against hand-computed examples."""

from __future__ import annotations

import pytest

from tunelab.eval.metrics import (
    bootstrap_diff,
    classification_metrics,
    final_number,
    generation_metrics,
    normalize_answer,
    token_f1,
)


def test_classification_metrics_by_hand() -> None:
    gold = ["a", "a", "b", "b", "c"]
    pred = ["a", "b", "b", "b", "a"]
    m = classification_metrics(gold, pred, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(3 / 5)
    # a: P=1/2 R=1/2 F=1/2; b: P=2/3 R=1 F=0.8; c: P=0 R=0 F=0 -> macro F1 = 1.3/3
    assert m["per_class"]["a"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert m["per_class"]["b"]["precision"] == pytest.approx(2 / 3) and m["per_class"]["b"]["recall"] == 1.0
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert m["confusion"]["matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]


def test_token_f1_and_exact_match_by_hand() -> None:
    assert normalize_answer("The  Cat, sat!") == "cat sat"
    # reference tokens [cat, sat, on, mat], prediction [cat, sat]: P=1, R=1/2 -> F1=2/3
    assert token_f1("the cat sat on the mat", "a cat sat") == pytest.approx(2 / 3)
    m = generation_metrics(["The cat sat.", "blue"], ["the cat sat", "red"])
    assert m["exact_match"] == pytest.approx(0.5) and m["token_f1"] == pytest.approx(0.5)
    assert m["rouge_l"] == pytest.approx(0.5)
    assert 0 <= m["chrf"] <= 100 and 0 <= m["bleu"] <= 100
    assert "numeric_accuracy" not in m


def test_numeric_answers() -> None:
    assert final_number("She pays 3 + 4 = 7 dollars.\n#### 1,007") == 1007.0
    assert final_number("so the answer is 12.") == 12.0
    assert final_number("no digits") is None
    m = generation_metrics(["#### 42", "#### 7"], ["The answer is 42", "I think 8"])
    assert m["numeric_accuracy"] == pytest.approx(0.5)


def test_bootstrap_interval_contains_the_paired_difference() -> None:
    tuned = [1, 1, 1, 0, 1, 1, 0, 1, 1, 1]
    base = [0, 1, 0, 0, 0, 1, 0, 0, 1, 0]
    diff, lo, hi = bootstrap_diff(tuned, base)
    assert diff == pytest.approx(0.5)
    assert lo <= diff <= hi and lo > 0
    assert bootstrap_diff([1, 1], [1, 1]) == (0.0, 0.0, 0.0)


def test_generation_sanity_rates_by_hand() -> None:
    from tunelab.eval.metrics import repetition, sanity_metrics

    assert repetition("a b c a b c a b c") == pytest.approx(1 - 3 / 7)
    assert repetition("one two three four") == 0.0
    m = sanity_metrics(["", "the cat sat", "go go go go go go"])
    assert m["empty_rate"] == pytest.approx(1 / 3)
    assert m["repetition_rate"] == pytest.approx(1 / 3)
    assert m["avg_words"] == pytest.approx((0 + 3 + 6) / 3)
