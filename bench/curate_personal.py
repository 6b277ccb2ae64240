"""How well `tunelab data curate` finds personal data: per-kind precision and recall on labelled customer-support rows.

The rows are the bitext customer-support sample (instruction + response). Its responses carry {{Slot}}
placeholders and its instructions tagged entities; the benchmark fills them with generated values (seeded) and
keeps where each value went. Personal slots ({{Customer Support Phone Number}}, {{Customer Support Email}},
{{Website URL}}, {{Name Field Anonymized}}, the tagged person names) get phones, emails, URLs and names; the
sample has no card, IBAN, IP or street-address slots, so customer sentences with those (and with more names,
phones and emails in varied formats and cues) are appended to a share of the instructions. Non-personal slots
and entities (order, invoice and bill numbers, dates, amounts, cities, hours) get realistic values, and decoy
sentences with order numbers, dates, versions, Luhn-invalid 16-digit numbers, prices, times, tracking numbers
and ISBNs are appended too: anything found in them is a false positive.

Scored per kind at span level: a found span counts as right when it overlaps a true span of the same kind.
Recall is also given per group (e.g. names after a cue vs names with none) where the detector is known to
cover only some forms. Speed: rows/s of `find_personal` (all kinds) and of the whole `personal_data` step
(redact) on chat rows.

    python bench/curate_personal.py [--rows 2000] [--seed 0] [--json bench/results/curate_personal.json]
"""

from __future__ import annotations

import argparse
import csv
import ipaddress
import json
import os
import platform
import random
import re
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import phonenumbers
from stdnum import iban as stdnum_iban
from stdnum import luhn

from tunelab.config.curate import PERSONAL_KINDS, CurateConfig
from tunelab.data.curate.personal import find_personal, personal_data
from tunelab.data.curate.rows import Row
from tunelab.data.records import Record
from tunelab.device import cpu_name

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DATA = SHARED / "bitext-customer-support" / "Bitext_Sample_Customer_Support_Training_Dataset.csv"
SLOT = re.compile(r"\{\{(.*?)\}\}")
EMAIL_IN_SOURCE = re.compile(r"(\b[\w.+-]+@[\w-]+\.[\w.]*\w)")
MONTHS = "January February March April May June July August September October November December"

_FIRST = ("James Mary Robert Patricia John Jennifer Michael Linda David Elizabeth William Barbara Richard Susan Joseph "
         "Jessica Thomas Sarah Charles Karen Daniel Nancy Matthew Lisa Anthony Betty Mark Sandra Wei Mei Hiroshi Yuki "
         "Aarav Priya Mohammed Fatima Oluwaseun Chinedu José María Lukas Sofia Mateo Chloé Jean-Luc Siobhan Ingrid "
         "Dmitri Olga Kwame Amara Rahul Ananya")
_LAST = ("Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez Gonzalez Wilson "
        "Anderson Thomas Taylor Moore Jackson Martin Lee Thompson White Harris Clark Lewis Robinson Walker Young Allen "
        "O'Brien McDonald Zhang Wang Tanaka Nakamura Patel Sharma Khan Okafor Adeyemi Müller Schmidt Rossi Dubois "
        "Kowalski Ivanov Nguyen Kim Fernández Johansson Murphy Mensah")
_STREETS = ("Main Oak Maple Cedar Elm Pine Washington Lincoln Park Lake Hill Sunset Highland Baker Church Mill Station "
           "Victoria King Queen Martin Luther King")
FIRST, LAST, STREETS = _FIRST.split(), _LAST.split(), _STREETS.split()
SUFFIXES = ["Street", "St", "Avenue", "Ave", "Road", "Rd", "Boulevard", "Blvd", "Lane", "Ln", "Drive", "Dr", "Court",
            "Way", "Place"]
US_CITIES = [("Springfield", "IL", "627"), ("Austin", "TX", "787"), ("Seattle", "WA", "981"), ("Denver", "CO", "802"),
             ("Boston", "MA", "021"), ("Portland", "OR", "972"), ("Miami", "FL", "331"), ("Columbus", "OH", "432")]
UK_CITIES = [("London", "SW1A 1AA"), ("Manchester", "M1 1AE"), ("Leeds", "LS1 4DY"), ("Bristol", "BS1 5TR"),
             ("Edinburgh", "EH1 1YZ")]
BRANDS = ["shopright", "northwind", "acme-store", "bluepeak", "fastcart", "greenleaf", "urbanhome", "novatech"]
DOMAINS = ["gmail.com", "yahoo.co.uk", "outlook.com", "hotmail.fr", "proton.me", "icloud.com", "web.de", "mail.com"]


@dataclass
class Sample:
    """One row's text under construction, with the true spans of personal data and of decoys in it."""

    parts: list[str] = field(default_factory=list)
    truth: list[tuple[int, int, str, str]] = field(default_factory=list)  # start, end, kind, group
    decoys: list[tuple[int, int, str]] = field(default_factory=list)  # start, end, decoy type
    pos: int = 0

    def add(self, text: str, kind: str | None = None, group: str = "", decoy: str | None = None) -> None:
        if kind:
            self.truth.append((self.pos, self.pos + len(text), kind, group or kind))
        if decoy:
            self.decoys.append((self.pos, self.pos + len(text), decoy))
        self.parts.append(text)
        self.pos += len(text)

    def template(self, tpl: str, value: str, kind: str | None = None, group: str = "",
                 decoy: str | None = None) -> None:
        before, _, after = tpl.partition("{}")
        self.add(before)
        self.add(value, kind, group, decoy)
        self.add(after)

    @property
    def text(self) -> str:
        return "".join(self.parts)


class Gen:
    """Seeded generators of realistic personal values (and of the non-personal look-alikes)."""

    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)

    def digits(self, n: int) -> str:
        return "".join(self.r.choice("0123456789") for _ in range(n))

    def first(self) -> str:
        return self.r.choice(FIRST)

    def name(self) -> str:
        return f"{self.first()} {self.r.choice(LAST)}"

    def email(self) -> str:
        f, last = self.first().lower(), self.r.choice(LAST).lower().replace("'", "")
        local = self.r.choice([f"{f}.{last}", f"{f[0]}{last}", f"{f}{self.r.randint(1, 99)}", f"{f}_{last}"])
        local = local.encode("ascii", "ignore").decode() or "user"
        return f"{local}@{self.r.choice(DOMAINS)}"

    def support_email(self) -> str:
        return f"{self.r.choice(['support', 'help', 'care', 'service'])}@{self.r.choice(BRANDS)}.com"

    def phone(self) -> tuple[str, str]:
        """A valid number in a common written form, and its group (US, UK, +international, other national)."""
        group = self.r.choices(["us", "uk", "intl", "national_other"], weights=[5, 2, 3, 1])[0]
        region = {"us": "US", "uk": "GB"}.get(group) or self.r.choice(["DE", "FR", "IN", "AU", "JP", "ES", "BR"])
        kind = self.r.choice([phonenumbers.PhoneNumberType.FIXED_LINE, phonenumbers.PhoneNumberType.MOBILE])
        example = phonenumbers.example_number_for_type(region, kind)
        assert example is not None
        base = str(example.national_number)
        while True:  # randomise the subscriber part until the number fits the numbering plan
            nsn = base[:-4] + self.digits(4)
            if group == "us":
                nsn = self.r.choice(["212", "310", "415", "512", "617", "646", "718", "206", "303", "404", "800",
                                     "888"]) + self.r.choice("23456789") + self.digits(6)
            num = phonenumbers.parse(nsn, region)
            if phonenumbers.is_valid_number(num):
                break
        fmt = phonenumbers.PhoneNumberFormat
        if group == "us":
            d = nsn
            forms = [phonenumbers.format_number(num, fmt.NATIONAL), f"{d[:3]}-{d[3:6]}-{d[6:]}",
                     f"{d[:3]}.{d[3:6]}.{d[6:]}", phonenumbers.format_number(num, fmt.INTERNATIONAL),
                     f"+1 ({d[:3]}) {d[3:6]}-{d[6:]}", f"1-{d[:3]}-{d[3:6]}-{d[6:]}", d]
        elif group == "uk":
            forms = [phonenumbers.format_number(num, fmt.NATIONAL), phonenumbers.format_number(num, fmt.INTERNATIONAL),
                     phonenumbers.format_number(num, fmt.E164)]
        elif group == "intl":
            forms = [phonenumbers.format_number(num, fmt.INTERNATIONAL), phonenumbers.format_number(num, fmt.E164)]
        else:
            forms = [phonenumbers.format_number(num, fmt.NATIONAL)]
        return self.r.choice(forms), group

    def card(self) -> str:
        brand = self.r.choice(["visa", "mastercard", "mastercard2", "amex", "discover", "jcb", "diners", "unionpay"])
        prefix, n = {"visa": ("4", 16), "mastercard": (str(self.r.randint(51, 55)), 16),
                     "mastercard2": (str(self.r.randint(2221, 2720)), 16), "amex": (self.r.choice(["34", "37"]), 15),
                     "discover": ("6011", 16), "jcb": (str(self.r.randint(3528, 3589)), 16),
                     "diners": ("36", 14), "unionpay": ("62", self.r.choice([16, 19]))}[brand]
        body = prefix + self.digits(n - len(prefix) - 1)
        number = body + luhn.calc_check_digit(body)
        sep = self.r.choice([" ", " ", "-", ""])
        # Amex and Diners print 4-6-5 / 4-6-4, the others in fours
        four = [number[i:i + 4] for i in range(0, n, 4)]
        return sep.join([number[:4], number[4:10], number[10:]] if n in (14, 15) else four)

    def invalid_card(self) -> str:
        body = "4" + self.digits(14)
        bad = str((int(luhn.calc_check_digit(body)) + self.r.randint(1, 9)) % 10)
        number = body + bad
        return " ".join(number[i:i + 4] for i in range(0, 16, 4))

    def iban(self) -> str:
        layouts = {"DE": "n18", "GB": "a4n14", "FR": "n23", "NL": "a4n10", "IT": "a1n22", "AT": "n16", "CH": "n17",
                   "IE": "a4n14", "PL": "n24", "ES": "n20", "BE": "n12"}
        cc = self.r.choice(list(layouts))
        while True:
            bban = ""
            for part in re.findall(r"[an]\d+", layouts[cc]):
                chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if part[0] == "a" else "0123456789"
                bban += "".join(self.r.choice(chars) for _ in range(int(part[1:])))
            number = cc + stdnum_iban.calc_check_digits(cc + "00" + bban) + bban
            if stdnum_iban.is_valid(number):
                break
        return stdnum_iban.format(number) if self.r.random() < 0.7 else number

    def ip(self) -> tuple[str, str]:
        if self.r.random() < 0.65:
            while True:
                a = ipaddress.IPv4Address(self.r.getrandbits(32))
                if a.is_global:
                    return str(a), "ipv4"
        a6 = ipaddress.IPv6Address((0x2001 << 112) | (self.r.getrandbits(16) << 96) | self.r.getrandbits(64))
        return (a6.compressed if self.r.random() < 0.7 else a6.exploded), "ipv6"

    def url(self) -> str:
        b = self.r.choice(BRANDS)
        return self.r.choice([f"https://www.{b}.com", f"https://{b}.com/help/returns", f"www.{b}.co.uk",
                              f"http://support.{b}.io/ticket?id={self.digits(6)}", f"https://www.{b}.com/account/orders"])

    def address(self) -> tuple[str, str]:
        num = str(self.r.randint(1, 9999))
        street = self.r.choice(STREETS) + (f" {self.r.choice(STREETS)}" if self.r.random() < 0.2 else "")
        suffix = self.r.choice(SUFFIXES)
        style = self.r.choices(["us", "short", "uk", "other"], weights=[5, 2, 2, 1])[0]
        if style == "us":
            city, state, zip3 = self.r.choice(US_CITIES)
            unit = self.r.choice(["", "", f", Apt {self.r.randint(1, 40)}{self.r.choice('ABC')}",
                                  f" Suite {self.r.randint(100, 900)}"])
            return f"{num} {street} {suffix}{unit}, {city}, {state} {zip3}{self.digits(2)}", "us_uk"
        if style == "short":
            return f"{num} {street} {suffix}", "us_uk"
        if style == "uk":
            city, postcode = self.r.choice(UK_CITIES)
            house = f"{self.r.randint(1, 300)}{self.r.choice(['', '', 'B'])}"
            return f"{house} {street} {suffix}, {city} {postcode}", "us_uk"
        return self.r.choice([f"Hauptstraße {self.r.randint(1, 200)}, {self.r.randint(10115, 14199)} Berlin",
                              f"{self.r.randint(1, 99)} rue de la Paix, 750{self.r.randint(10, 20)} Paris",
                              f"Calle Mayor {self.r.randint(1, 99)}, 28013 Madrid"]), "other_format"

    def order_number(self) -> str:
        return self.r.choice([self.digits(self.r.choice([8, 10, 12, 15])), f"#{self.digits(8)}",
                              f"ORD-{self.r.randint(2019, 2025)}-{self.digits(6)}", f"00{self.digits(9)}"])

    def date(self) -> str:
        y, m, d = self.r.randint(2019, 2025), self.r.randint(1, 12), self.r.randint(1, 28)
        months = MONTHS.split()
        return self.r.choice([f"{y}-{m:02d}-{d:02d}", f"{m:02d}/{d:02d}/{y}", f"{d} {months[m - 1]} {y}",
                              f"{months[m - 1]} {d}, {y}", f"{d:02d}.{m:02d}.{y}"])

    def amount(self) -> str:
        return self.r.choice([f"${self.r.randint(1, 5000):,}.{self.digits(2)}", f"€{self.r.randint(1, 999)}.00",
                              f"{self.r.randint(10, 2500)} dollars", f"USD {self.r.randint(1000, 99999):,}"])


# Response slots that hold personal data, by the kind of value they get
PHONE_SLOTS = {"customer support phone number", "support phone number", "customer service phone number",
               "phone number", "customer support phone number anonymized", "complaint phone number",
               "customer assistance phone number"}
EMAIL_SLOTS = {"customer support email", "customer support email address", "email", "support email",
               "customer service email", "email address", "support email address", "feedback email address",
               "complaint email address", "customer service email address"}
URL_SLOTS = {"website url", "company website", "service website", "review website 1", "review website 2",
             "review website 3"}
NAME_SLOTS = {"name field anonymized"}
ORDER_SLOTS = {"order number anonymized", "purchase id anonymized", "bill number anonymized", "order id anonymized",
               "invoice number anonymized", "purchase number anonymized", "order number", "tracking number"}

PERSONAL_SENTENCES: dict[str, list[tuple[str, bool]]] = {  # template, whether the value follows a cue (names)
    "email": [(" You can email me at {}.", True), (" My email is {} if that helps.", True),
              (" Please send it to {} instead.", True)],
    "phone": [(" Call me at {}.", True), (" My number is {} if you need it.", True),
              (" You can reach me on {} after 5pm.", True), (" {} is my mobile.", True)],
    "card": [(" My card number is {} and it got declined.", True), (" I was charged twice on card {}.", True),
             (" Paid with {} (exp 08/27).", True)],
    "iban": [(" My IBAN is {}.", True), (" Please refund to IBAN {} .", True), (" Account {} for the refund.", True)],
    "ip": [(" My IP address is {} and the site blocks me.", True), (" The login came from {} which is not me.", True)],
    "url": [(" The link {} shows an error.", True), (" I found the offer on {} yesterday.", True)],
    "address": [(" Please ship it to {}.", True), (" My new address is {}", True), (" I moved to {} last week.", True)],
    "person": [(" My name is {}.", True), (" This is {} speaking.", True), (" Name: {}", True),
               (" Thanks, I'm {}.", True), (" Regards,\n{}\n", True), (" Ask for {} at your store, she helped me.",
                                                                     False), (" {} told me to write to you.", False)],
}
DECOY_SENTENCES = [
    ("order_number", " The order number is {}."), ("order_number", " Order {} never arrived."),
    ("date", " I ordered it on {}."), ("version", " The app is on version {}."),
    ("version", " Running v{} on my phone."), ("invalid_card", " The code on the voucher is {}."),
    ("price", " It cost {}."), ("time", " I called at {} and nobody answered."),
    ("tracking", " Tracking number {} shows no movement."), ("isbn", " The book's ISBN is {}."),
    ("invoice", " See invoice #{}."), ("zip", " Is delivery to ZIP code {} possible?"),
    ("name_phrase", " {}"), ("street_phrase", " {}"),
]
NAME_PHRASES = ["my name is misspelled on the invoice.", "my name is not showing on my account.",
                "My name is wrong on the receipt.", "name: order number and date", "I am Unable to log in.",
                "This is The third time I write.", "I'm Not happy with this."]
STREET_PHRASES = ["I drove 3 hours on the road to pick it up.", "we have 2 stores on Main Street in town.",
                  "I tried to ship it to 2 different addresses.", "They sent 4 boxes to the wrong street."]


def decoy_value(g: Gen, kind: str) -> str:
    r = g.r
    return {"order_number": g.order_number, "date": g.date, "price": g.amount, "invalid_card": g.invalid_card,
            "version": lambda: ".".join(str(r.randint(0, 20)) for _ in range(r.choice([3, 3, 4]))),
            "time": lambda: r.choice([f"{r.randint(1, 12)}:{r.randint(0, 59):02d} PM",
                                      f"{r.randint(0, 23):02d}:{r.randint(0, 59):02d}:{r.randint(0, 59):02d}"]),
            "tracking": lambda: r.choice([f"1Z{g.digits(3)}AA1{g.digits(10)}", g.digits(22), f"JD{g.digits(18)}GB"]),
            "isbn": lambda: f"978-{r.randint(0, 9)}-{g.digits(3)}-{g.digits(5)}-{r.randint(0, 9)}",
            "invoice": lambda: g.digits(5), "zip": lambda: g.digits(5),
            "name_phrase": lambda: r.choice(NAME_PHRASES), "street_phrase": lambda: r.choice(STREET_PHRASES)}[kind]()


def fill_slot(g: Gen, s: Sample, name: str) -> None:
    key = name.strip().lower()
    if key in PHONE_SLOTS or (key == "customer support email or phone number" and g.r.random() < 0.5):
        value, group = g.phone()
        s.add(value, "phone", group)
    elif key in EMAIL_SLOTS or key == "customer support email or phone number":
        s.add(g.support_email(), "email")
    elif key in URL_SLOTS:
        s.add(g.url(), "url")
    elif key in NAME_SLOTS:
        s.add(g.name(), "person", "no_cue")  # "No worries, {{Name Field Anonymized}}, I'm here to help"
    elif key in ORDER_SLOTS:
        s.add(g.order_number(), decoy="order_number")
    elif key == "purchase date anonymized":
        s.add(g.date(), decoy="date")
    elif key in ("website name", "website", "company name", "website or app", "website/app name"):
        s.add(g.r.choice(BRANDS).replace("-", " ").title())
    elif re.fullmatch(r"[0-9A-F]{6,}", name.strip()):
        s.add(name.strip(), decoy="order_number")  # {{113542617735902}}: a number left in braces
    else:
        s.add(name)  # UI labels such as {{Live Chat}}, {{Order History}}: their own text


def add_source_text(s: Sample, piece: str, renamed: tuple[str, str, str] | None) -> None:
    """Response text as written, but with the customer's name swapped like in the instruction (responses repeat
    it: "the invoice from Ms. Hawkings") and literal emails ("support@company.com") labelled."""
    names = piece.split(renamed[0]) if renamed else [piece]
    for i, part in enumerate(names):
        if i and renamed:
            s.add(renamed[1], "person", renamed[2])
        for j, bit in enumerate(EMAIL_IN_SOURCE.split(part)):
            s.add(bit, "email" if j % 2 else None, "in_source")


def build(rows: list[dict[str, str]], g: Gen) -> list[Sample]:
    out = []
    for row in rows:
        s = Sample()
        ins = row["instruction"]
        renamed: tuple[str, str, str] | None = None  # the tagged name, its stand-in and group, for the response
        et, start, end = row["entity_type"], row["start_offset"], row["end_offset"]
        if et in ("person_name", "order_id", "invoice_id", "refund_amount", "delivery_city") and start:
            a, b = int(start), int(end)
            s.add(ins[:a])
            original = ins[a:b]
            if et == "person_name":
                title = re.match(r"(Mr|Mrs|Ms|Dr)\.? ", original)
                if title:  # "the bills from Mr. Smith": the title is the cue
                    s.add(title.group())
                    renamed = (original[title.end():], g.r.choice(LAST), "cue")
                else:  # "the bill from Anna Freeman": no cue
                    renamed = (original, g.name(), "no_cue")
                s.add(renamed[1], "person", renamed[2])
            elif et in ("order_id", "invoice_id"):
                s.add(original, decoy="order_number")
            elif et == "refund_amount":
                s.add(original, decoy="price")
            else:
                s.add(original, decoy="city")
            s.add(ins[b:])
        else:
            s.add(ins)
        for _ in range(g.r.choices([0, 1, 2], weights=[3, 5, 2])[0]):
            kind = g.r.choice(list(PERSONAL_SENTENCES))
            tpl, cue = g.r.choice(PERSONAL_SENTENCES[kind])
            group = ""
            if kind == "email":
                value = g.email()
            elif kind == "phone":
                value, group = g.phone()
            elif kind == "card":
                value = g.card()
            elif kind == "iban":
                value = g.iban()
            elif kind == "ip":
                value, group = g.ip()
            elif kind == "url":
                value = g.url()
            elif kind == "address":
                value, group = g.address()
            else:
                value = g.first() if "I'm" in tpl else g.name()
                group = "cue" if cue else "no_cue"
            if group in ("cue", "us_uk") and g.r.random() < 0.15:  # customers often write all in lower case
                value, group = value.lower(), f"{group}_lowercase"
            s.template(tpl, value, kind, group)
        for _ in range(g.r.choices([0, 1, 2], weights=[4, 4, 2])[0]):
            decoy, tpl = g.r.choice(DECOY_SENTENCES)
            s.template(tpl, decoy_value(g, decoy), decoy=decoy)
        s.add("\n")
        for i, piece in enumerate(SLOT.split(row["response"])):
            if i % 2:
                fill_slot(g, s, piece)
            else:
                add_source_text(s, piece, renamed)
        out.append(s)
    return out


def overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def score(samples: list[Sample], kinds: tuple[str, ...]) -> dict[str, Any]:
    n_pred: Counter[str] = Counter()
    tp_pred: Counter[str] = Counter()
    n_true: Counter[str] = Counter()
    tp_true: Counter[str] = Counter()
    group_n: Counter[tuple[str, str]] = Counter()
    group_tp: Counter[tuple[str, str]] = Counter()
    decoy_n: Counter[str] = Counter()
    decoy_hit: Counter[str] = Counter()
    confusions: Counter[str] = Counter()
    false_pos: dict[str, list[str]] = defaultdict(list)
    misses: dict[str, list[str]] = defaultdict(list)
    decoy_examples: dict[str, list[str]] = defaultdict(list)
    for s in samples:
        text = s.text
        pred = find_personal(text, kinds)
        for p in pred:
            n_pred[p.kind] += 1
            same = [t for t in s.truth if t[2] == p.kind and overlaps((p.start, p.end), t[:2])]
            if same:
                tp_pred[p.kind] += 1
                continue
            other = [t for t in s.truth if overlaps((p.start, p.end), t[:2])]
            if other:
                confusions[f"{other[0][2]} found as {p.kind}"] += 1
            if len(false_pos[p.kind]) < 15:
                false_pos[p.kind].append(f"{p.value!r} in ...{text[max(0, p.start - 40):p.end + 20]!r}")
        for start, end, kind, group in s.truth:
            n_true[kind] += 1
            group_n[(kind, group)] += 1
            if any(p.kind == kind and overlaps((p.start, p.end), (start, end)) for p in pred):
                tp_true[kind] += 1
                group_tp[(kind, group)] += 1
            elif len(misses[f"{kind}/{group}"]) < 15:
                misses[f"{kind}/{group}"].append(f"{text[start:end]!r} in ...{text[max(0, start - 40):end + 20]!r}")
        for start, end, decoy in s.decoys:
            decoy_n[decoy] += 1
            hit = [p for p in pred if overlaps((p.start, p.end), (start, end))]
            if hit:
                decoy_hit[decoy] += 1
                if len(decoy_examples[decoy]) < 15:
                    decoy_examples[decoy].append(f"{hit[0].kind}: {text[start:end]!r} in "
                                                 f"...{text[max(0, start - 40):end + 20]!r}")
    per_kind = {k: {"found": n_pred[k], "true": n_true[k],
                    "precision": round(tp_pred[k] / n_pred[k], 4) if n_pred[k] else None,
                    "recall": round(tp_true[k] / n_true[k], 4) if n_true[k] else None} for k in kinds}
    groups = {f"{k}/{g}": {"true": n, "recall": round(group_tp[(k, g)] / n, 4)}
              for (k, g), n in sorted(group_n.items())}
    decoys = {d: {"count": n, "flagged": decoy_hit[d]} for d, n in sorted(decoy_n.items())}
    return {"per_kind": per_kind, "groups": groups, "decoys": decoys, "confusions": dict(confusions),
            "false_positive_examples": dict(false_pos), "missed_examples": dict(misses),
            "flagged_decoy_examples": dict(decoy_examples)}


def speed(samples: list[Sample], repeats: int) -> dict[str, float]:
    texts = [s.text for s in samples]
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for t in texts:
            find_personal(t, PERSONAL_KINDS)
        best = min(best, time.perf_counter() - t0)
    cfg = CurateConfig()
    step = float("inf")
    for _ in range(repeats):
        rows = []
        for i, s in enumerate(samples):
            user, _, assistant = s.text.partition("\n")
            messages = [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
            rows.append(Row(f"bench.jsonl:{i + 1}", {"messages": messages}, Record(f"bench.jsonl:{i + 1}", "chat",
                                                                                    messages=messages)))
        t0 = time.perf_counter()
        personal_data(rows, cfg)
        step = min(step, time.perf_counter() - t0)
    chars = sum(len(t) for t in texts)
    return {"find_rows_per_s": round(len(texts) / best, 1), "find_chars_per_s": round(chars / best),
            "step_redact_rows_per_s": round(len(texts) / step, 1), "mean_chars_per_row": round(chars / len(texts))}


def table(result: dict[str, Any]) -> str:
    lines = ["| kind | true spans | found | precision | recall |", "|---|---:|---:|---:|---:|"]

    def pct(v: float | None) -> str:
        return "–" if v is None else f"{100 * v:.1f}%"

    for k, v in result["per_kind"].items():
        lines.append(f"| {k} | {v['true']} | {v['found']} | {pct(v['precision'])} | {pct(v['recall'])} |")
    lines += ["", "| group (recall) | true spans | recall |", "|---|---:|---:|"]
    lines += [f"| {g} | {v['true']} | {pct(v['recall'])} |" for g, v in result["groups"].items()]
    lines += ["", "| decoy (must not be flagged) | count | flagged |", "|---|---:|---:|"]
    lines += [f"| {d} | {v['count']} | {v['flagged']} |" for d, v in result["decoys"].items()]
    sp, m = result["speed"], result["machine"]
    lines += ["", f"find_personal: {sp['find_rows_per_s']} rows/s ({sp['mean_chars_per_row']} chars/row); "
              f"personal_data step (redact): {sp['step_redact_rows_per_s']} rows/s; {m['cpu']}, {m['cores']} cores, "
              f"load average {m['load_avg_1m']}"]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3, help="speed: best of this many passes")
    ap.add_argument("--json", default="bench/results/curate_personal.json")
    a = ap.parse_args()
    with DATA.open(newline="") as f:
        source = list(csv.DictReader(f))
    rng = random.Random(a.seed)
    rows = rng.sample(source, min(a.rows, len(source)))
    samples = build(rows, Gen(a.seed))
    result: dict[str, Any] = {"rows": len(samples), "seed": a.seed, "data": str(DATA.relative_to(SHARED))}
    result |= score(samples, PERSONAL_KINDS)
    result["speed"] = speed(samples, a.repeats)
    result["machine"] = {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
                         "phonenumbers": phonenumbers.__version__,
                         "load_avg_1m": round(os.getloadavg()[0], 2)}  # other work on the machine slows the speed
    out = Path(a.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(table(result))
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
