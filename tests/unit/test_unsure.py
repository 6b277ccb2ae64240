"""classification.unsure_label: answer probabilities (generated labels and heads), the threshold rule, its auto
calibration, and the config checks."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.helpers import build_tiny_model
from tunelab.config import ConfigError, load_config
from tunelab.eval.unsure import Unsure, apply_unsure, calibrate, for_run

TEXTS = ["my card has not arrived yet", "how do I reset my password", "what is the exchange rate", "lost card"]


@pytest.fixture(scope="module")
def varied_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    """A tiny model whose answers differ by prompt (init_std 0.2), and its tokenizer."""
    from transformers import AutoModelForCausalLM

    from tunelab.models.load import load_tokenizer

    path = build_tiny_model(tmp_path_factory.mktemp("varied"), init_std=0.2)
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval(), load_tokenizer(str(path))


@torch.no_grad()
def _forced(model: Any, tok: Any, text: str, seqs: list[tuple[int, ...]], masked: bool) -> list[float]:
    """Each label's probability by teacher forcing, one prompt at a time: masked renormalises every step over the
    tokens some label allows after that prefix (as the constrained decoding does); unmasked is the plain model's."""
    from tunelab.data.templates import classification_messages, render_chat

    prompt = render_chat(tok, classification_messages(text, None, None), tokenize=False, add_generation_prompt=True)
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    out = []
    for seq in seqs:
        logits = model(torch.tensor([ids + list(seq)])).logits[0, len(ids) - 1 : -1].float()  # (len(seq), vocab)
        logp = 0.0
        for t, tok_id in enumerate(seq):
            row = logits[t]
            if masked:
                allowed = sorted({s[t] for s in seqs if s[:t] == seq[:t] and len(s) > t})
                keep = torch.full_like(row, -math.inf)
                keep[allowed] = row[allowed]
                row = keep
            logp += float(row.log_softmax(-1)[tok_id])
        out.append(math.exp(logp))
    return out


def test_generated_label_probability_is_the_constrained_sequence_probability(varied_model: tuple[Any, Any]) -> None:
    from tunelab.eval.classify import label_token_ids, predict_generate, scored_generate

    model, tok = varied_model
    labels = ["card", "password"]  # 2 labels: one branching step in the trie, the other steps forced
    seqs = label_token_ids(tok, labels, None)
    preds, probs = scored_generate(model, tok, TEXTS, labels, labels, None, batch_size=3)
    assert preds == predict_generate(model, tok, TEXTS, labels, labels, None, batch_size=3)
    for text, pred, p in zip(TEXTS, preds, probs, strict=True):
        masked = _forced(model, tok, text, seqs, masked=True)
        plain = _forced(model, tok, text, seqs, masked=False)
        assert 0.5 <= p <= 1.0  # the greedy branch of a 2-way choice
        assert p == pytest.approx(masked[labels.index(pred)], abs=1e-4)  # padding steps of a finished row ignored
        assert sum(masked) == pytest.approx(1.0, abs=1e-5)
        assert sum(plain) <= 1.0 + 1e-6
        assert max(masked) == pytest.approx(p, abs=1e-4)


def test_generated_probabilities_over_many_labels(varied_model: tuple[Any, Any]) -> None:
    from tunelab.eval.classify import label_token_ids, scored_generate

    model, tok = varied_model
    labels = ["card lost", "card top", "lost card", "stolen card", "yes", "no"]
    preds, probs = scored_generate(model, tok, TEXTS, labels, labels, None, batch_size=2)
    seqs = label_token_ids(tok, labels, None)
    for text, pred, p in zip(TEXTS, preds, probs, strict=True):
        forced = _forced(model, tok, text, seqs, masked=True)
        assert 0.0 < p <= 1.0 and p == pytest.approx(forced[labels.index(pred)], abs=1e-4)


def test_head_probability_is_the_max_softmax(tiny_model: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    from tunelab.eval.classify import predict_head, scored_head
    from tunelab.models.load import load_tokenizer

    tok = load_tokenizer(str(tiny_model))
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_model), num_labels=3).eval()
    labels = ["a", "b", "c"]
    preds, probs = scored_head(model, tok, TEXTS, labels, batch_size=2)
    assert preds == predict_head(model, tok, TEXTS, labels, batch_size=2)
    assert all(1 / 3 <= p <= 1.0 for p in probs)


def test_apply_unsure() -> None:
    assert apply_unsure(["a", "b", "c"], [0.9, 0.2, 0.5], "oos", 0.5) == ["a", "oos", "c"]  # below, not at
    assert apply_unsure(["a", "b"], [0.1, 0.2], "oos", 0.0) == ["a", "b"]  # 0: off
    rule = Unsure("oos", 0.3)
    assert rule.apply(["a", "oos", "b"], [0.1, 0.1, 0.9]) == ["oos", "oos", "b"]
    assert rule.turned(["a", "oos", "b"], [0.1, 0.1, 0.9]) == 1  # already oos: not turned


def test_calibration_turns_at_most_the_budget_of_in_scope_rows() -> None:
    gold = ["a"] * 100 + ["oos"] * 10
    probs = [(i + 1) / 100 for i in range(100)] + [0.001] * 10
    preds = ["a"] * 110
    t = calibrate(gold, preds, probs, "oos", 0.02)
    assert t == pytest.approx(0.03)  # 0.01 and 0.02 turn; 0.03 stays
    assert sum(p < t for p in probs[:100]) == 2
    # rows already answered oos cost nothing, but count among the in-scope rows the budget is a share of
    preds2 = ["oos"] * 5 + ["a"] * 105
    t2 = calibrate(gold, preds2, probs, "oos", 0.02)
    assert t2 == pytest.approx(0.08) and Unsure("oos", t2).turned(preds2[:100], probs[:100]) == 2
    assert calibrate(gold, preds, probs, "oos", 0.0) == pytest.approx(0.01)  # nothing turns
    assert calibrate(gold, preds, [0.5] * 110, "oos", 0.1) == 0.5  # ties stay together: none turns
    assert calibrate(["oos"] * 3, ["a"] * 3, [0.1] * 3, "oos", 0.5) == 0.0  # no in-scope row: off
    assert calibrate(gold, preds, probs, "oos", 1.0) == 1.0


@pytest.mark.parametrize("seed", range(5))
def test_calibration_budget_holds_on_random_rows(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randint(1, 300)
    gold = [rng.choice(["a", "b", "oos"]) for _ in range(n)]
    preds = [rng.choice(["a", "b", "oos"]) for _ in range(n)]
    probs = [round(rng.random(), 2) for _ in range(n)]  # rounded: ties
    budget = rng.choice([0.0, 0.02, 0.1, 0.5])
    t = calibrate(gold, preds, probs, "oos", budget)
    rows = [(g, pr, p) for g, pr, p in zip(gold, preds, probs, strict=True) if g != "oos"]
    turned = Unsure("oos", t).turned([pr for _, pr, _ in rows], [p for _, _, p in rows])
    assert turned <= math.floor(budget * len(rows) + 1e-9)


def test_config_checks_the_unsure_label() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, ["task=classification", "classification.labels=[a, b]", "classification.unsure_label=c"])
    assert "classification.unsure_label='c'" in str(err.value) and "['a', 'b']" in str(err.value)
    with pytest.raises(ConfigError, match="classification.unsure_label needs task: classification"):
        load_config(None, ["classification.unsure_label=oos"])
    with pytest.raises(ConfigError, match="calibrated on the validation rows"):
        load_config(None, ["task=classification", "classification.unsure_label=oos", "data.val_fraction=0"])
    with pytest.raises(ConfigError, match="unsure_below"):
        load_config(None, ["task=classification", "classification.unsure_below=1.5"])
    cfg = load_config(None, ["task=classification", "classification.unsure_label=oos", "data.val_fraction=0",
                             "classification.unsure_below=0.4"])
    assert for_run(cfg, {}) == Unsure("oos", 0.4)


def test_a_run_s_rule_comes_from_its_summary_when_auto() -> None:
    cfg = load_config(None, ["task=classification", "classification.unsure_label=oos"])
    assert for_run(cfg, {"unsure": {"threshold": 0.25}}) == Unsure("oos", 0.25)
    assert for_run(cfg, {}) is None  # never calibrated
    assert for_run(load_config(None, ["task=classification"]), {"unsure": {"threshold": 0.25}}) is None
