"""Suspect labels: a small intent dataset made from templates, with a few labels flipped on purpose."""

from __future__ import annotations

import itertools
import random

from tunelab.config.curate import CurateConfig
from tunelab.data.curate.labels import label_model_name, suspect_labels
from tunelab.data.curate.rows import Row
from tunelab.data.records import Record

INTENTS: dict[str, tuple[list[str], list[str]]] = {
    "card_arrival": (
        ["When will my {x} arrive?", "I'm still waiting for my {x} to be delivered", "My {x} hasn't come in the post",
         "How long does it take for the {x} to get here?", "Has my {x} been shipped yet?",
         "It's been two weeks and no sign of my {x}", "Can you track the delivery of my {x}?",
         "I ordered a {x} ages ago, where is it?", "What's the usual delivery time for a {x}?"],
        ["card", "new card", "replacement card", "debit card", "physical card"]),
    "exchange_rate": (
        ["What exchange rate do you use for {x}?", "How much is {x} worth today?", "Is the rate for {x} fair?",
         "Why did I get a bad rate converting {x}?", "Show me the current conversion rate to {x}",
         "Do you add a markup on the {x} exchange rate?", "Where do your rates for {x} come from?",
         "How often is the {x} rate updated?", "Will I get the interbank rate when I buy {x}?"],
        ["euros", "US dollars", "pounds", "Japanese yen", "Swiss francs"]),
    "lost_or_stolen_card": (
        ["I lost my {x}, please block it", "Someone stole my {x}", "My {x} was stolen at the station",
         "I can't find my {x} anywhere, freeze it", "Help, my {x} got nicked last night",
         "What do I do if my {x} is missing?", "I think I left my {x} in a taxi", "Report my {x} as stolen",
         "My {x} was taken from my bag, cancel it now"],
        ["card", "wallet with my card", "bank card", "credit card", "purse and card"]),
    "password_reset": (
        ["How do I reset my {x}?", "I forgot my {x}", "Can't log in, need a new {x}", "Change my {x} please",
         "The app keeps rejecting my {x}", "Where can I update my {x}?", "I got locked out after typing the wrong {x}",
         "Send me a link to set a new {x}", "Is there a way to recover my {x}?"],
        ["password", "passcode", "login password", "app password", "security code"]),
}
OPENERS = ["", "", "", "Hi, ", "Hello! ", "Quick question: ", "Please help. "]
CLOSERS = ["", "", "", " Thanks.", " Thank you!", " Cheers", " Asap please."]


def dataset(flips: int = 6, seed: int = 0) -> tuple[list[Row], set[str]]:
    """30 utterances per intent; `flips` of them relabelled to another intent. Returns rows and flipped wheres."""
    rng = random.Random(seed)
    items = []
    for label, (templates, fills) in INTENTS.items():
        combos = list(itertools.product(templates, fills))
        rng.shuffle(combos)
        items += [(rng.choice(OPENERS) + t.format(x=f) + rng.choice(CLOSERS), label) for t, f in combos[:30]]
    flipped = set(rng.sample(range(len(items)), flips))
    rows, wheres = [], set()
    for i, (text, label) in enumerate(items):
        if i in flipped:
            label = rng.choice([k for k in INTENTS if k != label])
            wheres.add(f"data.csv:{i + 2}")
        rows.append(row(f"data.csv:{i + 2}", text, label))
    return rows, wheres


def row(where: str, text: str, label: str) -> Row:
    return Row(where, {"text": text, "label": label}, Record(where, kind="classification", text=text, label=label))


def test_flipped_labels_are_found_and_ranked_first() -> None:
    found_flipped, flagged, flips = 0, 0, 0
    for seed in range(4):  # several datasets: on 120 rows one draw says little
        rows, flipped = dataset(seed=seed)
        found = suspect_labels(rows, CurateConfig())
        wheres = [f.where for f in found]
        assert set(wheres[:2]) <= flipped  # the most suspect rows are flipped ones
        found_flipped += len(flipped & set(wheres))
        flagged += len(found)
        flips += len(flipped)
        assert [f.detail["rank"] for f in found] == list(range(1, len(found) + 1))
        first = found[0]
        assert first.step == "labels" and first.action == "flag" and first.detail["rank"] == 1
        d = first.detail
        assert d["given"] != d["predicted"] and d["predicted_probability"] > d["given_probability"]
        assert first.reason.startswith(f"labelled {d['given']!r}") and repr(d["predicted"]) in first.reason
    assert found_flipped >= 0.7 * flips  # most flipped rows found (confident learning is conservative on 120 rows)
    assert found_flipped >= 0.8 * flagged  # and few clean rows flagged


def test_deterministic_and_drop_action() -> None:
    rows, _ = dataset()
    a = suspect_labels(rows, CurateConfig(), seed=3)
    b = suspect_labels(rows, CurateConfig(), seed=3)
    assert [f.to_dict() for f in a] == [f.to_dict() for f in b]
    dropped = suspect_labels(rows, CurateConfig(labels="drop"), seed=3)
    assert [f.where for f in dropped] == [f.where for f in a] and {f.action for f in dropped} == {"drop"}


def test_off_single_label_and_other_kinds_give_nothing() -> None:
    rows, _ = dataset()
    assert suspect_labels(rows, CurateConfig(labels="off")) == []
    same = [row(f"d:{i}", r.record.text, "card_arrival") for i, r in enumerate(rows) if r.record is not None]
    assert suspect_labels(same, CurateConfig()) == []
    chat = [Row("c:1", {}, Record("c:1", kind="chat", messages=[{"role": "user", "content": "hi"},
                                                                  {"role": "assistant", "content": "hello"}])),
            Row("p:1", {"prompt": "a", "chosen": "b", "rejected": "c"})]
    assert suspect_labels(chat, CurateConfig()) == []


def test_single_row_label_is_noted_not_judged() -> None:
    rows, _ = dataset(flips=0)
    rows.append(row("data.csv:999", "When will my card arive?", "card_arival"))  # a typo'd label, used once
    found = suspect_labels(rows, CurateConfig(labels="drop"))
    lone = [f for f in found if f.where == "data.csv:999"]
    assert len(lone) == 1 and lone[0].action == "flag" and "too few rows" in lone[0].reason
    assert lone[0].detail == {"given": "card_arival", "rows_with_label": 1}


def test_tiny_and_featureless_inputs() -> None:
    two = [row("a:1", "lost card", "lost"), row("a:2", "stolen card", "lost"),
           row("a:3", "reset password", "pw"), row("a:4", "forgot password", "pw")]
    assert all(f.step == "labels" for f in suspect_labels(two, CurateConfig()))  # runs with 2 folds
    empty = [row(f"e:{i}", "", "ab"[i % 2]) for i in range(6)]
    assert suspect_labels(empty, CurateConfig()) == []


def test_model_name() -> None:
    assert "TF-IDF" in label_model_name() and "logistic regression" in label_model_name()
