"""Probe sets and probe arithmetic, checked against hand-computed examples (no model needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunelab.data.records import DataError
from tunelab.probes import bias, forgetting
from tunelab.probes.files import BiasSet, Question, Template, load_bias, load_questions, load_texts, shipped


def test_shipped_probe_sets_load_and_every_template_is_probed() -> None:
    qs = load_questions([shipped("forgetting_qa.jsonl")])
    assert len(qs) >= 30 and all(q.answers for q in qs)
    assert len(load_texts([shipped("general_text.jsonl")])) >= 5
    b = load_bias([shipped("counterfactual.yaml")])
    assert set(b.attributes) == {"gender", "name_origin", "nationality", "religion", "age"}
    assert all(any(b.applies(t, a) for a in b.attributes) for t in b.templates)
    cases = bias.cases(b)
    # a {name} template is probed for gender (4 variants) and name origin (12)
    first = [c for c in cases if c.template == 0]
    assert len(first) == 4 + 12 and {c.attribute for c in first} == {"gender", "name_origin"}
    assert all("{" not in c.text for c in cases)


@pytest.mark.parametrize(("reply", "accepted", "ok"), [
    ("The capital of France is Paris.", ["Paris"], True),
    ("Parisian food is good", ["Paris"], False),
    ("There are 7 days.", ["seven", "7"], True),
    ("Twenty-four hours", ["twenty-four"], True),
    ("", ["Paris"], False),
])
def test_answered(reply: str, accepted: list[str], ok: bool) -> None:
    assert forgetting.answered(reply, accepted) is ok


def _side(replies: list[str], correct: list[bool], ppl: float) -> dict:
    return {"qa_accuracy": sum(correct) / len(correct), "perplexity": ppl, "replies": replies, "correct": correct}


def test_forgetting_compare_by_hand() -> None:
    qs = [Question(f"q:{i}", f"question {i}", ["x"]) for i in range(3)]
    sides = {"base": _side(["x", "x", "y"], [True, True, False], 10.0),
             "tuned": _side(["x", "y", "y"], [True, False, False], 13.0)}
    out = forgetting.compare(sides, qs, max_accuracy_drop=0.1, max_perplexity_rise=0.2)
    assert out["qa_drop"] == pytest.approx(1 / 3)
    assert out["answers_lost"] == 1 and out["answers_gained"] == 0
    assert out["perplexity_rise"] == pytest.approx(0.3)
    assert out["regressed"] and len(out["warnings"]) == 2
    assert out["examples"][0]["question"] == "question 1"  # the changed answer first
    calm = forgetting.compare(sides, qs, max_accuracy_drop=0.5, max_perplexity_rise=0.5)
    assert not calm["regressed"] and calm["warnings"] == []


def _tiny_bias() -> BiasSet:
    return BiasSet(attributes={"gender": {"f": [{"p": "she"}], "m": [{"p": "he"}]}},
                   templates=[Template("t:0", "{p} lost a card", "ok"), Template("t:1", "{p} wants a loan", "ok")])


def test_label_flip_rate_by_hand() -> None:
    b = _tiny_bias()
    cases = bias.cases(b)
    assert [c.text for c in cases] == ["she lost a card", "he lost a card", "she wants a loan", "he wants a loan"]
    sides = {"base": {"label": ["card", "card", "loan", "loan"]},
             "tuned": {"label": ["card", "fraud", "loan", "loan"]}}
    out = bias.compare(b, cases, sides, max_flip_rise=0.05, max_sentiment_gap_rise=0.1)
    g = out["attributes"]["gender"]
    assert g["base"]["flip_rate"] == 0.0 and g["tuned"]["flip_rate"] == 0.5 and g["tuned"]["flipped_templates"] == 1
    assert g["examples"][0]["inputs"][1] == {"group": "m", "text": "he lost a card", "label": "fraud"}
    assert out["regressed"] and "gender" in out["warnings"][0]


def test_generation_gaps_by_hand() -> None:
    b = _tiny_bias()
    cases = bias.cases(b)
    side = {"reply": ["a"] * 4, "sentiment": [0.5, 0.1, 0.2, 0.2], "words": [10.0, 4.0, 6.0, 8.0],
            "logprob": [-1.0, -1.5, -2.0, -2.0]}
    out = bias.compare(b, cases, {"tuned": side}, max_flip_rise=0.05, max_sentiment_gap_rise=0.1)
    g = out["attributes"]["gender"]["tuned"]
    assert g["sentiment_gap"] == pytest.approx((0.4 + 0.0) / 2)
    assert g["words_gap"] == pytest.approx((6 + 2) / 2)
    assert g["logprob_gap"] == pytest.approx((0.5 + 0.0) / 2)
    assert g["group_means"]["f"]["sentiment"] == pytest.approx(0.35)


def test_user_bias_file_extends_and_errors_say_where(tmp_path: Path) -> None:
    good = tmp_path / "mine.yaml"
    good.write_text("templates:\n  - text: 'My name is {name} and my claim was denied.'\n")
    b = load_bias([shipped("counterfactual.yaml"), good])
    assert b.templates[-1].text.startswith("My name is {name}")
    bad = tmp_path / "bad.yaml"
    bad.write_text("templates:\n  - text: 'Hello {nmae}'\n  - reference: 'no text'\n")
    with pytest.raises(DataError) as e:
        load_bias([shipped("counterfactual.yaml"), bad])
    msg = str(e.value)
    assert f"{bad}: templates[0]" in msg and "nmae" in msg and f"{bad}: templates[1]" in msg
    broken = tmp_path / "broken.yaml"
    broken.write_text("templates:\n  - text: 'a {name}'\n   bad: [\n")
    with pytest.raises(DataError, match=f"{broken}:\\d+: .*not valid YAML"):
        load_bias([broken])
    one_group = tmp_path / "one.yaml"
    one_group.write_text("attributes:\n  pet:\n    cat: [{pet: cat}]\ntemplates: ['my {pet}']\n")
    with pytest.raises(DataError, match="at least two groups"):
        load_bias([one_group])


def test_bad_question_file_names_the_line(tmp_path: Path) -> None:
    f = tmp_path / "q.jsonl"
    f.write_text('{"question": "2+2?", "answers": ["4"]}\n{"question": "no answers"}\nnot json\n')
    with pytest.raises(DataError) as e:
        load_questions([f])
    assert f"{f}:3" in str(e.value)
    f.write_text('{"question": "2+2?", "answers": ["4"]}\n{"question": "no answers"}\n')
    with pytest.raises(DataError, match=f"{f}:2: .*answers"):
        load_questions([f])
