"""Personal data in rows: each kind found in realistic sentences, look-alikes left alone, redaction and consistent
pseudonyms across rows, chat and classification rows rewritten (labels kept), report examples masked."""

from __future__ import annotations

import re

import pytest

from tunelab.config.curate import PERSONAL_KINDS, CurateConfig
from tunelab.data.curate.personal import Redactor, Span, find_personal, mask, personal_data
from tunelab.data.curate.rows import Row
from tunelab.data.records import Record


def found(text: str, kinds: tuple[str, ...] = PERSONAL_KINDS) -> list[tuple[str, str]]:
    return [(s.kind, s.value) for s in find_personal(text, kinds)]


@pytest.mark.parametrize("text, kind, value", [
    ("Hi, please write to jane.doe+orders@mail.example.co.uk about it.", "email", "jane.doe+orders@mail.example.co.uk"),
    ("You can call me at (415) 555-2671 after 5pm.", "phone", "(415) 555-2671"),
    ("my number is 415.555.2671", "phone", "415.555.2671"),
    ("Call 1-800-555-0199 for help", "phone", "1-800-555-0199"),
    ("My UK mobile is 07400 123456.", "phone", "07400 123456"),
    ("Reach me on +44 20 7946 0958 tomorrow", "phone", "+44 20 7946 0958"),
    ("Our Berlin office: +49 30 12345678.", "phone", "+49 30 12345678"),
    ("I paid with 4242 4242 4242 4242 and it was declined.", "card", "4242 4242 4242 4242"),
    ("card 3782-822463-10005 (Amex)", "card", "3782-822463-10005"),
    ("Charged twice on 5555555555554444!", "card", "5555555555554444"),
    ("Refund to IBAN DE89 3704 0044 0532 0130 00 please.", "iban", "DE89 3704 0044 0532 0130 00"),
    ("My account GB82WEST12345698765432 is in London.", "iban", "GB82WEST12345698765432"),
    ("The login came from 203.0.113.42 which is not me.", "ip", "203.0.113.42"),
    ("server at 2001:db8::8a2e:370:7334 refuses", "ip", "2001:db8::8a2e:370:7334"),
    ("The link https://shop.example.com/orders?id=7 is broken.", "url", "https://shop.example.com/orders?id=7"),
    ("I saw it on www.example.org.", "url", "www.example.org"),
    ("Hello, my name is Anna Freeman and I need help.", "person", "Anna Freeman"),
    ("Thanks, I'm Wei.", "person", "Wei"),
    ("Dear Mr. O'Brien, your order shipped.", "person", "O'Brien"),
    ("Hi Jean-Luc,\nyour refund is on its way.", "person", "Jean-Luc"),
    ("Kind regards,\nSiobhan Murphy\n", "person", "Siobhan Murphy"),
    ("name: maria garcia", "person", "maria garcia"),
    ("Please ship it to 1600 Pennsylvania Avenue NW, Washington, DC 20500.", "address",
     "1600 Pennsylvania Avenue NW, Washington, DC 20500"),
    ("I moved to 221B Baker Street, London NW1 6XE last week", "address", "221B Baker Street, London NW1 6XE"),
    ("deliver it to 42 elm street, springfield, il 62704 thanks", "address", "42 elm street, springfield, il 62704"),
])
def test_each_kind_found(text: str, kind: str, value: str) -> None:
    assert (kind, value) in found(text)
    span = next(s for s in find_personal(text) if s.kind == kind)
    assert text[span.start:span.end] == span.value


@pytest.mark.parametrize("text", [
    "Where is order #12345678? It was placed on 2024-05-01.",
    "Order 4155552671 never arrived.",  # a valid US number, but an order number here
    "the order with the number 7636732605 is late",
    "I updated the app to version 1.2.3 and v2.10.4.1 yesterday.",
    "The voucher code is 4111 1111 1111 1112.",  # 16 digits, Luhn-invalid
    "It cost $1,299.99 plus €45.00, refund of 350 dollars.",
    "Tracking number 1Z999AA10123456784 shows no movement; ORD-2025-142851 too.",
    "The book's ISBN is 978-3-16-148410-0.",
    "I called at 10:30:45 and 9:15 PM on 05/01/2024.",
    "Do you ship to Toronto? ZIP code 94107.",
    "I am Sorry, this is Customer Support. Hello There! Dear Sir or Madam,",
    "my name is misspelled on the invoice",
    "I drove 3 hours on the road to get it.",
    "Use std::vector and a::b in C++.",
])
def test_look_alikes_not_flagged(text: str) -> None:
    assert found(text) == []


def test_spans_sorted_and_not_overlapping() -> None:
    text = ("Mail bob@example.com, see https://example.com/u/5551234567 or call +1 415 555 2671; "
            "ship to 12 Main Dr Springfield, IL 62704.")
    spans = find_personal(text)
    assert [s.kind for s in spans] == ["email", "url", "phone", "address"]
    assert all(a.end <= b.start for a, b in zip(spans, spans[1:], strict=False))


def test_kinds_filter() -> None:
    text = "bob@example.com or (415) 555-2671"
    assert found(text, ("phone",)) == [("phone", "(415) 555-2671")]
    assert found(text, ()) == []


def test_redact_replaces_by_kind_and_counts() -> None:
    r = Redactor("redact", PERSONAL_KINDS)
    out = r("I'm Anna Lee, anna@example.com, card 4242 4242 4242 4242, IP 203.0.113.9, call (415) 555-2671.")
    assert out == "I'm <PERSON>, <EMAIL>, card <CARD>, IP <IP>, call <PHONE>."
    assert r.last == {"person": 1, "email": 1, "card": 1, "ip": 1, "phone": 1}
    assert r("nothing here") == "nothing here" and not r.last


def test_pseudonyms_consistent_across_calls() -> None:
    r = Redactor("pseudonymize", PERSONAL_KINDS)
    a = r("Write to Ann@Example.com or call +1 415-555-2671.")
    b = r("ann@example.com again; my other phone is (212) 555-0187, first one (415) 555-2671.")
    assert a == "Write to <EMAIL_1> or call <PHONE_1>."
    assert b == "<EMAIL_1> again; my other phone is <PHONE_2>, first one <PHONE_1>."
    assert r("IBAN DE89370400440532013000 / DE89 3704 0044 0532 0130 00") == "IBAN <IBAN_1> / <IBAN_1>"


def test_unknown_mode_rejected() -> None:
    with pytest.raises(ValueError, match="mode"):
        Redactor("report", PERSONAL_KINDS)


def chat_row(where: str, user: str, answer: str) -> Row:
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return Row(where, {"messages": [dict(m) for m in messages]}, Record(where, "chat", messages=messages))


def test_personal_data_pseudonymizes_chat_rows_consistently() -> None:
    rows = [chat_row("d.jsonl:1", "My email is ann@example.com", "Thanks, we wrote to ann@example.com."),
            chat_row("d.jsonl:2", "no personal data here", "ok"),
            chat_row("d.jsonl:3", "I'm Bo Li, bo@example.com; cc ANN@example.com", "Done.")]
    findings = personal_data(rows, CurateConfig(personal_data="pseudonymize"))
    assert [f.where for f in findings] == ["d.jsonl:1", "d.jsonl:3"]
    assert all(f.step == "personal_data" and f.action == "change" for f in findings)
    assert findings[0].reason == "2 emails pseudonymized"
    assert findings[1].reason == "2 emails, 1 name pseudonymized"
    assert findings[1].detail["kinds"] == {"email": 2, "person": 1}
    assert rows[0].data["messages"][1]["content"] == "Thanks, we wrote to <EMAIL_1>."
    assert rows[0].record is not None and rows[0].record.messages[0]["content"] == "My email is <EMAIL_1>"
    assert rows[2].data["messages"][0]["content"] == "I'm <PERSON_1>, <EMAIL_2>; cc <EMAIL_1>"
    assert rows[1].data["messages"][0]["content"] == "no personal data here"


def test_personal_data_redacts_classification_text_not_label() -> None:
    where = "c.csv:2"
    data = {"text": "Card 4111 1111 1111 1111 was charged twice", "label": "card_payment_issue"}
    row = Row(where, dict(data), Record(where, "classification", text=data["text"], label=data["label"]))
    findings = personal_data([row], CurateConfig(personal_data="redact"))
    assert findings[0].reason == "1 card number redacted"
    assert row.data == {"text": "Card <CARD> was charged twice", "label": "card_payment_issue"}
    assert row.record is not None and row.record.text == "Card <CARD> was charged twice"
    assert row.record.label == "card_payment_issue"


def test_personal_data_report_flags_without_changing_and_off_does_nothing() -> None:
    text = "Call me on +44 20 7946 0958 or mail jo@example.org"
    row = Row("p.jsonl:1", {"prompt": "x", "chosen": text, "rejected": "no"})  # a preference row: no record
    assert personal_data([row], CurateConfig(personal_data="off")) == []
    findings = personal_data([row], CurateConfig(personal_data="report"))
    assert len(findings) == 1 and findings[0].action == "flag"
    assert findings[0].reason == "1 email, 1 phone number found"
    assert row.data["chosen"] == text
    only_phones = personal_data([row], CurateConfig(personal_data="report", personal_kinds=["phone"]))
    assert only_phones[0].detail["kinds"] == {"phone": 1}


VALUES = [("email", "jane.doe@example.com"), ("phone", "+1 415 555 2671"), ("phone", "(415) 555-2671"),
          ("card", "4242 4242 4242 4242"), ("iban", "DE89 3704 0044 0532 0130 00"), ("ip", "203.0.113.42"),
          ("ip", "2001:db8::8a2e:370:7334"), ("url", "https://shop.example.com/orders/7"),
          ("person", "Anna Freeman"), ("address", "221B Baker Street, London NW1 6XE")]


@pytest.mark.parametrize("kind, value", VALUES)
def test_masked_examples_never_show_the_value(kind: str, value: str) -> None:
    masked = mask(Span(kind, 0, len(value), value))
    assert value not in masked and masked
    digits = re.sub(r"\D", "", value)
    if len(digits) >= 6:
        assert digits not in re.sub(r"\D", "", masked)


def test_report_examples_are_masked() -> None:
    text = " ".join(v for _, v in VALUES[:2] + VALUES[3:])
    row = Row("r.jsonl:1", {"text": text}, Record("r.jsonl:1", "text", text=text))
    finding = personal_data([row], CurateConfig(personal_data="report"))[0]
    examples = " | ".join(finding.detail["examples"])
    assert len(finding.detail["examples"]) == 5
    for _, value in VALUES:
        assert value not in examples
    assert "j***@e***.com" in examples and "•••• 4242" in examples
