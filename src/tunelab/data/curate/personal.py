"""Personal data in rows: find it, replace it (by its kind or by a consistent placeholder) or only report it.

What is found, and how:

- email: a regular expression (local part @ domain with a top-level domain of two letters or more).
- phone: Google's `phonenumbers` matcher with leniency STRICT_GROUPING (VALID, so the number must fit its
  country's numbering plan, and grouped as people write numbers, so "ORD-2025-142851" is not a US number):
  national US and UK formats, and any country's number written with a leading +. A bare run of digits with no
  separators is not taken when an order, invoice, tracking or account word comes just before it.
- card: 13 to 19 digits, optionally grouped by spaces or dashes, kept only when the Luhn checksum holds and the
  number starts like a card brand's (Visa, Mastercard, Amex, Discover, JCB, Diners, UnionPay, Maestro).
- iban: with or without spaces, kept only when `stdnum.iban` validates it (mod-97 checksum and country format).
- ip: IPv4 (exactly four octets, so versions such as 1.2.3 and dates are not taken; four-part numbers after
  "v" or "version" neither) and IPv6, both parsed by `ipaddress`.
- url: http(s):// and www. addresses.
- person: names only after a cue ("my name is", "I am", "I'm", "this is", "name:", "Dear", "Hi"/"Hello" at
  the start of a line, a sign-off such as "Regards," on the line above, or a title Mr./Mrs./Ms./Dr.), one to
  three capitalised words, minus a stop list of words that follow such cues but are not names; lower-case names
  only after "my name is" and "name:". Without a language model, names with no cue ("the bill from Anna
  Freeman", "Anna said ...", "No worries, Anna,") and lower-case names after other cues are NOT found.
- address: English-style street addresses: a house number, one to four capitalised words and a street suffix
  (Street, St, Avenue, Road, ...), optionally a unit, a city, a US state code and ZIP or a UK postcode; in lower
  case only after a cue such as "ship it to" or "my address is". Addresses in other conventions (e.g.
  "Hauptstraße 5, 10115 Berlin"), PO boxes and a city or country alone are NOT found.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import phonenumbers
from stdnum import iban as stdnum_iban
from stdnum import luhn

from ...config.curate import PERSONAL_KINDS, CurateConfig
from .rows import Finding, Row


@dataclass
class Span:
    """One piece of personal data in a text: text[start:end] == value."""

    kind: str
    start: int
    end: int
    value: str


# When two findings overlap, the earlier kind here wins: an email or URL can hold digits that look like a phone,
# an IBAN or a card holds digit groups a phone matcher would take, and "Dr" is both a title and a street suffix.
_PRIORITY = {k: i for i, k in enumerate(("email", "url", "iban", "card", "ip", "phone", "address", "person"))}

_EMAIL = re.compile(r"(?<![\w.%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![\w-])")
_URL = re.compile(r"\b(?:https?://|www\.)[^\s<>\"'`]+", re.IGNORECASE)
_URL_TRAIL = ".,;:!?)]}'\""

# digit groups separated by one space or dash each, not part of a longer code, decimal or phone number (+...):
# card numbers (13-19 digits) are looked for inside
_DIGIT_RUN = re.compile(r"(?<![\w.,/+-])\d+(?:[ -]\d+)*(?![\w]|[.,/]\d)")
_IBAN = re.compile(r"(?<![\w])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?(?![\w])")
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d)")
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|:)?(?:%\w+)?(?![\w:])")
_VERSION_BEFORE = re.compile(r"(?:\bv|\bversion|\bver\.?|\brelease|\bbuild|\bfirmware)\s*$", re.IGNORECASE)

# Phones: the matcher runs on short windows around runs of 7+ digits (it is the slowest finder, and most text has
# none). Numbers with + are found in any region; national formats in PHONE_REGIONS: the first region's for every
# window, the others' only where the number starts with the trunk prefix 0 that national formats outside North
# America begin with (020 7946 0958).
PHONE_REGIONS = ("US", "GB")
_PHONE_CANDIDATE = re.compile(r"\+?\(?\d(?:[\s().\-/]{0,3}\d){6,}")
_PHONE_PAD = 3  # characters kept around a window: the matcher looks at the neighbours of a number


# an identifier word just before a bare number ("order no. 4155552671", "the order with the number ...",
# "invoice #...", "tracking ID: ..."): such a number is an identifier even when it would be a valid phone or card
_NOT_PHONE_BEFORE = re.compile(
    r"(?:\b(?:order|purchase|invoice|bill|tracking|account|acct|ref|reference|transaction|ticket|case|confirmation"
    r"|id|sku|serial|item|product|parcel|shipment|package)\b(?:\s*(?:number|no\.?|num\.?|id|code|is|was|with|the|of"
    r"|[#:]))*|#)\s*$", re.IGNORECASE)


def _luhn_brand(digits: str) -> bool:
    """Whether a number's length and first digits fit a card brand's issuer ranges."""
    n, p2, p4, p6 = len(digits), int(digits[:2]), int(digits[:4]), int(digits[:6])
    return ((digits[0] == "4" and n in (13, 16, 19))  # Visa
            or ((51 <= p2 <= 55 or 2221 <= p4 <= 2720) and n == 16)  # Mastercard
            or (p2 in (34, 37) and n == 15)  # Amex
            or ((p4 == 6011 or 644 <= int(digits[:3]) <= 649 or p2 == 65 or 622126 <= p6 <= 622925)
                and 16 <= n <= 19)  # Discover
            or (3528 <= p4 <= 3589 and 16 <= n <= 19)  # JCB
            or ((300 <= int(digits[:3]) <= 305 or p2 in (36, 38, 39)) and 14 <= n <= 19)  # Diners
            or (p2 == 62 and 16 <= n <= 19)  # UnionPay
            or ((p2 == 50 or 56 <= p2 <= 69) and 12 <= n <= 19))  # Maestro


def _card_grouping_ok(raw: str) -> bool:
    """Plain digits, or groups split by one kind of separator (a card printed as "4242 4242-4242 4242" is not)."""
    seps = {c for c in raw if not c.isdigit()}
    return len(seps) <= 1 and all(len(g) >= 3 for g in re.split(r"[ -]", raw)[:-1])


# Person names: a capitalised word (letters, inner apostrophe or hyphen, e.g. O'Brien, Jean-Luc, McDonald)
_UP, _LOW = "A-ZÀ-ÖØ-Þ", "a-zß-öø-ÿ"
_NAME_WORD = rf"[{_UP}](?:[{_LOW}]+|'(?=[{_UP}]))(?:[{_UP}][{_LOW}]+)?(?:['’-][{_UP}]?[{_LOW}]+)?"
_NAME = rf"{_NAME_WORD}(?: {_NAME_WORD}){{0,2}}"
_CUES = [
    re.compile(rf"(?i:\bmy (?:full |first |last )?name(?: is|'s)|\bi am|\bi'm|\bi’m|\bthis is"
               rf"|\bname\s*:|\bdear|\bsigned|\bcall me)\s+(?P<name>{_NAME})"),
    re.compile(rf"(?m)^[ \t]*(?:Hi|Hello|Hey|Good (?:morning|afternoon|evening))[ \t,]+(?P<name>{_NAME})"),
    re.compile(rf"(?i:\b(?:regards|sincerely|thanks|thank you|cheers|best|yours)[,!.]?)[ \t]*\n[ \t]*(?P<name>{_NAME})"
               rf"[ \t]*(?:\n|$)"),
    re.compile(rf"\b(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof)\.? (?P<name>{_NAME})"),
]
# Capitalised words that follow those cues but are not names; a name stops at the first of them.
_STOP_WORDS = """
monday tuesday wednesday thursday friday saturday sunday january february march april may june july august
september october november december customer customers support service services sir madam team there all
everyone everybody anyone someone the a an and or but of to in on at for with from by my your our their his her
its this that these those here not no yes sorry happy glad so very just also still really quite going trying
looking interested writing calling contacting reaching unable able new back good fine ok okay thank thanks
please hello hi hey dear regards best cheers sincerely yours agent assistant bot manager department admin
account order orders company store shop help desk center centre client user member guest staff i i'm i am
about after again already always because before being concerned confused disappointed frustrated here how if
what when where which who why will would can could should shall might must need want wondering unhappy upset
sure aware available ready done finished calling writing following having getting using unsure afraid
waiting hoping planning currently now today tomorrow yesterday morning afternoon evening night week month year
english french german spanish italian american british canadian australian indian chinese japanese
mr mrs ms miss mx dr prof he she they we you it him them us me
"""
_NOT_NAMES = frozenset(_STOP_WORDS.split())
# Lower-case names ("my name is john smith", common in chat) only after the two strongest cues, with more words
# that follow them and are not names
_LOWER_NAME_CUE = re.compile(rf"(?i:\bmy (?:full )?name(?: is|'s)|\bname\s*:)[ \t]+(?P<name>[{_LOW}][{_LOW}'-]+"
                             rf"(?: [{_LOW}][{_LOW}'-]+)?)")
_LOWER_STOP_WORDS = """
misspelled misspelt spelled spelt wrong incorrect correct missing listed shown showing displayed appearing printed
written changed different registered under required mandatory blank empty too same as is was has had still pls plz
"""
_NOT_LOWER_NAMES = _NOT_NAMES | frozenset(_LOWER_STOP_WORDS.split())

_STREET_SUFFIX = (r"(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl|Terrace"
                  r"|Ter|Circle|Cir|Parkway|Pkwy|Highway|Hwy|Square|Sq|Crescent|Cres|Close|Row|Trail|Trl)\.?")
_ADDR_WORD = r"(?:[A-Z][a-zA-Z'-]*|\d+(?:st|nd|rd|th))"
_US_STATE = ("(?:AL|AK|AZ|AR|CA|CO|CT|DE|DC|FL|GA|HI|ID|IL|IN|IA|KS|KY|LA|ME|MD|MA|MI|MN|MS|MO|MT|NE|NV|NH|NJ|NM"
             "|NY|NC|ND|OH|OK|OR|PA|RI|SC|SD|TN|TX|UT|VT|VA|WA|WV|WI|WY|PR)")
_ADDRESS = re.compile(
    rf"(?<![\w.,-])\d{{1,6}}[A-Za-z]?,? (?:(?:N|S|E|W|NE|NW|SE|SW)\.? )?(?:{_ADDR_WORD} ){{1,4}}{_STREET_SUFFIX}"
    r"(?: (?:N|S|E|W|NE|NW|SE|SW)\.?)?(?![\w])"
    r"(?:,? (?:Apt|Apartment|Suite|Ste|Unit|Flat|Fl|Floor|#)\.? ?#?\w{1,6})?"  # unit
    r"(?:(?:, ?|\n)(?P<city>[A-Z][a-zA-Z'-]+(?: [A-Z][a-zA-Z'-]+){0,2}))?"  # city
    rf"(?:,? (?:{_US_STATE}\.?,? \d{{5}}(?:-\d{{4}})?|{_US_STATE}(?![\w])"
    r"|[A-Z]{1,2}\d[A-Z\d]? ?\d[A-Z]{2}|\d{5}(?:-\d{4})?))?(?![\w])")


# Lower-case addresses ("ship it to 42 elm street") only after an address cue, where a number and a street word
# rarely mean anything else; a city counts only with a state and ZIP after it
_ADDRESS_CUE = re.compile(
    r"\b(?:address(?: is|:)|live at|living at|moved to|(?:ship|deliver|send|mail)(?: it| them| this| my order)? to)"
    r"\s+(?P<addr>\d{1,6}[a-z]?,? (?:[a-z][a-z'-]* ){1,3}(?:street|st|avenue|ave|road|rd|boulevard|blvd|lane|ln"
    r"|drive|dr|court|ct|way|place|pl|terrace|circle|parkway|highway|square|crescent|close)\b\.?"
    r"(?:,? (?:apt|apartment|suite|unit|flat)\.? ?#?\w{1,6})?"
    rf"(?:,? [a-z]+(?: [a-z]+){{0,2}},? {_US_STATE}\.?,? \d{{5}}(?:-\d{{4}})?)?)(?![\w])", re.IGNORECASE)


def _add(spans: list[Span], kind: str, text: str, start: int, end: int) -> None:
    spans.append(Span(kind, start, end, text[start:end]))


def _find_emails(text: str, out: list[Span]) -> None:
    for m in _EMAIL.finditer(text):
        _add(out, "email", text, m.start(), m.end())


def _find_urls(text: str, out: list[Span]) -> None:
    for m in _URL.finditer(text):
        value = m.group().rstrip(_URL_TRAIL)
        if value.count("(") > value.count(")") and m.group()[len(value):].startswith(")"):
            value += ")"  # wiki-style URLs keep their closing parenthesis
        if len(value) > len("www.") + 3:
            _add(out, "url", text, m.start(), m.start() + len(value))


def _cards_in(run: str) -> list[tuple[int, int]]:
    """Where in a run of digit groups the card numbers are: the longest runs of whole groups that pass, so a
    card written next to other numbers is found ("2 x 4242 4242 4242 4242 123", "+1 415 555 2671 4242 ...")."""
    bounds = [(m.start(), m.end()) for m in re.finditer(r"\d+", run)]
    tries: list[tuple[int, int]] = []
    for i in range(len(bounds)):
        n = 0
        for j in range(i, len(bounds)):
            n += bounds[j][1] - bounds[j][0]
            if n > 19:
                break
            if n >= 13:
                tries.append((bounds[i][0], bounds[j][1]))
    found: list[tuple[int, int]] = []
    for start, end in sorted(tries, key=lambda t: t[0] - t[1]):
        part = run[start:end]
        digits = re.sub(r"\D", "", part)
        if (all(end <= a or start >= b for a, b in found) and _card_grouping_ok(part) and _luhn_brand(digits)
                and luhn.is_valid(digits)):
            found.append((start, end))
    return found


def _find_cards(text: str, out: list[Span]) -> None:
    for m in _DIGIT_RUN.finditer(text):
        if m.end() - m.start() < 13:
            continue
        for a, b in _cards_in(m.group()):
            start, end = m.start() + a, m.start() + b
            if text[start:end].isdigit() and _NOT_PHONE_BEFORE.search(text[max(0, start - 30):start]):
                continue  # "order 4539...": an order number that happens to pass Luhn
            _add(out, "card", text, start, end)


def _find_ibans(text: str, out: list[Span]) -> None:
    for m in _IBAN.finditer(text):
        raw = m.group()
        # the pattern may run into a following code-like word: drop trailing groups until it validates
        while len(re.sub(r"\s", "", raw)) >= 15:
            if stdnum_iban.is_valid(raw):
                _add(out, "iban", text, m.start(), m.start() + len(raw))
                break
            raw = raw[:max(raw.rfind(" "), 0)] if " " in raw[4:] else raw[:-1]


def _find_ips(text: str, out: list[Span]) -> None:
    for m in _IPV4.finditer(text):
        if _VERSION_BEFORE.search(text[max(0, m.start() - 12):m.start()]):
            continue
        try:
            ipaddress.IPv4Address(m.group())
        except ValueError:
            continue
        _add(out, "ip", text, m.start(), m.end())
    if "::" not in text and text.count(":") < 7:
        return
    for m in _IPV6.finditer(text):
        raw = m.group()
        # times (10:30:00) and code (a::b) parse or look alike: want 3+ groups with a digit, or all 8 groups
        groups = [g for g in raw.split("%")[0].split(":") if g]
        if len(groups) < 3 or not any(c.isdigit() for c in raw):
            continue
        try:
            ipaddress.IPv6Address(raw)
        except ValueError:
            continue
        _add(out, "ip", text, m.start(), m.end())


def _phone_windows(text: str) -> list[tuple[int, int, bool]]:
    """(start, end, starts with a trunk 0) of the merged windows around candidate numbers."""
    windows: list[tuple[int, int, bool]] = []
    for m in _PHONE_CANDIDATE.finditer(text):
        start, end = max(0, m.start() - _PHONE_PAD), min(len(text), m.end() + _PHONE_PAD)
        trunk = m.group().lstrip("(").startswith("0")
        if windows and start <= windows[-1][1]:
            prev = windows.pop()
            start, trunk = prev[0], prev[2] or trunk
        windows.append((start, end, trunk))
    return windows


def _find_phones(text: str, out: list[Span]) -> None:
    seen: set[tuple[int, int]] = set()
    for w_start, w_end, trunk in _phone_windows(text):
        window = text[w_start:w_end]
        for region in PHONE_REGIONS if trunk else PHONE_REGIONS[:1]:
            for m in phonenumbers.PhoneNumberMatcher(window, region, leniency=phonenumbers.Leniency.STRICT_GROUPING):
                start, end = w_start + m.start, w_start + m.end
                if (start, end) in seen:
                    continue
                seen.add((start, end))
                if start and (text[start - 1].isalnum() or text[start - 1] in "-/_"):
                    continue  # the tail of a longer code ("ORD-4155552671")
                if m.raw_string.isdigit() and _NOT_PHONE_BEFORE.search(text[max(0, start - 30):start]):
                    continue  # "order 4155552671": a bare number after an order-like word is an identifier
                _add(out, "phone", text, start, end)


def _trim_name(name: str, stop: frozenset[str] = _NOT_NAMES) -> str:
    words: list[str] = []
    for w in name.split(" "):
        if w.lower() in stop:
            break
        words.append(w)
    return " ".join(words)


def _find_persons(text: str, out: list[Span]) -> None:
    for cue in _CUES:
        pos = 0
        while m := cue.search(text, pos):
            name = _trim_name(m.group("name"))
            if len(name) >= 2:
                _add(out, "person", text, m.start("name"), m.start("name") + len(name))
            # go on right after the name kept, so a cue among the words cut off ("Name: Ann Lee This is Bo Li")
            # is seen too
            pos = m.start("name") + max(len(name), 1)
    for m in _LOWER_NAME_CUE.finditer(text):
        name = _trim_name(m.group("name"), _NOT_LOWER_NAMES)
        if len(name) >= 2 and name.islower():
            _add(out, "person", text, m.start("name"), m.start("name") + len(name))


def _find_addresses(text: str, out: list[Span]) -> None:
    for m in _ADDRESS.finditer(text):
        end = m.end()
        city = m.group("city")
        if city and city.split(" ")[0].lower() in _NOT_NAMES and m.end("city") == end:
            end = m.start("city") - (2 if text[m.start("city") - 2:m.start("city")] == ", " else 1)
        _add(out, "address", text, m.start(), end)
    for m in _ADDRESS_CUE.finditer(text):
        _add(out, "address", text, m.start("addr"), m.end("addr"))


_FINDERS: dict[str, Callable[[str, list[Span]], None]] = {
    "email": _find_emails, "url": _find_urls, "iban": _find_ibans, "card": _find_cards, "ip": _find_ips,
    "phone": _find_phones, "address": _find_addresses, "person": _find_persons,
}


def find_personal(text: str, kinds: Iterable[str] = PERSONAL_KINDS) -> list[Span]:
    """Personal data in text, of the given kinds: non-overlapping spans sorted by start (see the module's
    docstring for what each kind covers and misses)."""
    found: list[Span] = []
    if not text:
        return found
    for kind in kinds:
        _FINDERS[kind](text, found)
    # keep the highest-priority (then longest) span where spans overlap
    found.sort(key=lambda s: (_PRIORITY[s.kind], -(s.end - s.start), s.start))
    kept: list[Span] = []
    for s in found:
        if all(s.end <= k.start or s.start >= k.end for k in kept):
            kept.append(s)
    return sorted(kept, key=lambda s: s.start)


def _key(kind: str, value: str) -> str:
    """The identity of a value for pseudonyms: the same address or number written differently is one value."""
    if kind in ("phone", "card"):
        digits = re.sub(r"\D", "", value)
        # +1 415 555 2671 and (415) 555-2671 are the same US number
        return digits[1:] if kind == "phone" and len(digits) == 11 and digits[0] == "1" else digits
    if kind == "iban":
        return re.sub(r"[^0-9A-Za-z]", "", value).upper()
    if kind == "ip":
        try:
            return str(ipaddress.ip_address(value.split("%")[0]))
        except ValueError:
            return value
    if kind == "url":
        return re.sub(r"^(?:https?://)?(?:www\.)?", "", value.lower()).rstrip("/")
    return " ".join(value.casefold().split())


class Redactor:
    """A str -> str function for `Row.rewrite`: each piece of personal data becomes <KIND> ("redact") or a
    placeholder that is the same wherever the same value appears in any text this Redactor sees
    ("pseudonymize": <EMAIL_1>, <EMAIL_2>, ...). `last` counts, by kind, what the latest call replaced."""

    def __init__(self, mode: str, kinds: Iterable[str] = PERSONAL_KINDS) -> None:
        if mode not in ("redact", "pseudonymize"):
            raise ValueError(f"mode must be 'redact' or 'pseudonymize', not {mode!r}")
        self.mode = mode
        self.kinds = tuple(kinds)
        self.last: Counter[str] = Counter()
        self._ids: dict[tuple[str, str], int] = {}
        self._next: Counter[str] = Counter()
        # Row.rewrite passes the same strings twice (the row as read and its record): answer repeats from here
        self._cache: dict[str, tuple[str, Counter[str]]] = {}

    def placeholder(self, span: Span) -> str:
        tag = span.kind.upper()
        if self.mode == "redact":
            return f"<{tag}>"
        key = (span.kind, _key(span.kind, span.value))
        if key not in self._ids:
            self._next[span.kind] += 1
            self._ids[key] = self._next[span.kind]
        return f"<{tag}_{self._ids[key]}>"

    def __call__(self, text: str) -> str:
        if text in self._cache:
            out, counts = self._cache[text]
            self.last = Counter(counts)
            return out
        self.last = Counter()
        parts: list[str] = []
        pos = 0
        for s in find_personal(text, self.kinds):
            parts += [text[pos:s.start], self.placeholder(s)]
            self.last[s.kind] += 1
            pos = s.end
        out = "".join(parts) + text[pos:]
        if len(self._cache) >= 4096:
            self._cache.clear()
        self._cache[text] = (out, Counter(self.last))
        return out


def _mask_word(word: str) -> str:
    return f"{word[0]}***" if word else ""


def mask(span: Span) -> str:
    """A shortened form of a found value for the shared report: it shows the kind and shape, never the value."""
    v = span.value
    digits = re.sub(r"\D", "", v)
    if span.kind == "email":
        local, _, domain = v.partition("@")
        host, _, tld = domain.rpartition(".")
        return f"{_mask_word(local)}@{_mask_word(host)}.{tld}"
    if span.kind == "phone":
        cc = re.match(r"\s*\+(\d{1,3})", v)
        return f"{'+' + cc.group(1) + ' ' if cc else ''}••• ••• {digits[-4:]}"
    if span.kind == "card":
        return f"•••• {digits[-4:]}"
    if span.kind == "iban":
        return f"{v[:2]}•• •••• {digits[-2:]}"
    if span.kind == "ip":
        return f"{re.split(r'[.:]', v)[0]}.•.•.•" if "." in v else f"{v.split(':')[0]}:•••"
    if span.kind == "url":
        host = re.sub(r"^(?:https?://)?(?:www\.)?", "", v, flags=re.IGNORECASE).split("/")[0]
        _, _, tld = host.rpartition(".")
        return f"{_mask_word(host)}.{tld}/…" if tld else "•••"
    if span.kind == "address":
        return f"••• {_mask_word(v.split(' ')[1] if ' ' in v else '')} …"
    return " ".join(_mask_word(w) for w in v.split())  # person: initials


_NOUNS = {"email": ("email", "emails"), "phone": ("phone number", "phone numbers"),
          "card": ("card number", "card numbers"), "iban": ("IBAN", "IBANs"), "ip": ("IP address", "IP addresses"),
          "url": ("URL", "URLs"), "person": ("name", "names"), "address": ("street address", "street addresses")}
_VERBS = {"redact": "redacted", "pseudonymize": "pseudonymized", "report": "found"}
MAX_EXAMPLES = 5


def personal_data(rows: list[Row], cfg: CurateConfig) -> list[Finding]:
    """Find personal data in every row; flag the rows ("report") or rewrite them in place ("redact",
    "pseudonymize", one placeholder per value across all rows) with one change finding each."""
    mode = cfg.personal_data
    if mode == "off" or not cfg.personal_kinds:
        return []
    redactor = Redactor(mode, cfg.personal_kinds) if mode in ("redact", "pseudonymize") else None
    findings: list[Finding] = []
    for row in rows:
        spans = find_personal(row.text(), cfg.personal_kinds)
        if not spans:
            continue
        counts = Counter(s.kind for s in spans)
        kinds = {k: counts[k] for k in PERSONAL_KINDS if counts[k]}
        what = ", ".join(f"{n} {_NOUNS[k][n != 1]}" for k, n in kinds.items())
        detail: dict[str, Any] = {"kinds": kinds, "examples": [mask(s) for s in spans[:MAX_EXAMPLES]]}
        if redactor is not None and row.rewrite(redactor):
            findings.append(Finding(row.where, "personal_data", "change", f"{what} {_VERBS[mode]}", detail))
        else:  # "report", or found only across two joined strings (a sign-off and the next message): not changed
            findings.append(Finding(row.where, "personal_data", "flag", f"{what} {_VERBS['report']}", detail))
    return findings
