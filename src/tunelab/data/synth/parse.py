"""Teacher replies -> question/answer pairs, utterances or a label. Lenient on purpose: small local teachers
wrap JSON in code fences, add a sentence before it, or answer "Q: ... A: ..." instead; garbage raises
ParseError, which the caller counts as a skipped reply."""

from __future__ import annotations

import json
import re
from typing import Any

_FENCE = re.compile(r"```[a-zA-Z0-9_-]*\s*\n?(.*?)```", re.S)
_QA = re.compile(r"^\s*(?:\*\*)?(question|q|answer|a)(?:\*\*)?\s*[:：](?:\*\*)?\s*", re.I | re.M)
_JSON_STRING = r'"((?:[^"\\\n]|\\.)*)"'
_SALVAGE = re.compile(rf'"(question|answer)"\s*:\s*{_JSON_STRING}', re.I)
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)]|\(\d+\))\s+")
QUESTION_KEYS = ("question", "q", "prompt", "instruction", "input", "user")
ANSWER_KEYS = ("answer", "a", "response", "output", "completion", "assistant")


class ParseError(ValueError):
    """A reply with nothing usable in it; str() says what was wrong, for the run's summary."""


def _json_values(text: str) -> list[Any]:
    """Every JSON object or array found in text, outermost first: fenced blocks, then the text scanned from each
    opening bracket (a sentence before or after the JSON is ignored)."""
    found: list[Any] = []
    blocks = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    decoder = json.JSONDecoder()
    for block in blocks:
        i = 0
        while i < len(block):
            start = min((j for j in (block.find("{", i), block.find("[", i)) if j >= 0), default=-1)
            if start < 0:
                break
            try:
                value, end = decoder.raw_decode(block, start)
            except json.JSONDecodeError:
                i = start + 1
                continue
            found.append(value)
            i = end
    return found


def _pick(obj: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    lowered = {str(k).strip().lower(): v for k, v in obj.items()}
    for k in keys:
        v = lowered.get(k)
        if isinstance(v, str | int | float) and not isinstance(v, bool):
            return str(v).strip()
    return None


def _pair(obj: Any) -> tuple[str, str] | None:
    if not isinstance(obj, dict):
        return None
    q, a = _pick(obj, QUESTION_KEYS), _pick(obj, ANSWER_KEYS)
    return (q, a) if q is not None and a is not None else None


def _labelled_pairs(text: str) -> list[tuple[str, str]]:
    """"Question: ... Answer: ..." (or Q:/A:) blocks, in order."""
    parts = _QA.split(text)  # [before, key, value, key, value, ...]
    pairs: list[tuple[str, str]] = []
    question: str | None = None
    for key, value in zip(parts[1::2], parts[2::2], strict=True):
        # an answer ends at its paragraph: what follows is the teacher talking ("I hope this helps!")
        value = re.split(r"\n\s*\n", value.strip(), maxsplit=1)[0].strip().strip("`").strip()
        if key.lower().startswith("q"):
            question = value
        elif question is not None:
            pairs.append((question, value))
            question = None
    return pairs


def _salvaged_pairs(text: str) -> list[tuple[str, str]]:
    """Pairs from JSON cut short by max_tokens or broken later on: each "question": "..." string with the
    "answer": "..." string after it, where both strings are complete."""
    pairs: list[tuple[str, str]] = []
    question: str | None = None
    for m in _SALVAGE.finditer(text):
        try:
            value = json.loads(f'"{m.group(2)}"').strip()
        except json.JSONDecodeError:
            continue
        if m.group(1).lower() == "question":
            question = value
        elif question is not None:
            pairs.append((question, value))
            question = None
    return pairs


def parse_pairs(text: str | None) -> list[tuple[str, str]]:
    """All question/answer pairs in a reply: a JSON object, a JSON list of them (or {"pairs": [...]}), in a
    code fence or not, or "Q:/A:" text. Raises ParseError when there is none."""
    if text is None or not text.strip():
        raise ParseError("empty reply")
    for value in _json_values(text):
        if isinstance(value, dict) and _pair(value) is None:  # {"pairs": [...]}, {"questions": [...]}
            value = next((v for v in value.values() if isinstance(v, list)), value)
        items = value if isinstance(value, list) else [value]
        pairs = [p for p in map(_pair, items) if p is not None]
        if pairs:
            return pairs
    pairs = _salvaged_pairs(text) or _labelled_pairs(text)
    if pairs:
        return pairs
    raise ParseError("no question/answer pair in the reply (expected JSON {\"question\": ..., \"answer\": ...})")


def parse_pair(text: str | None) -> tuple[str, str]:
    """The first question/answer pair of a reply (see parse_pairs)."""
    return parse_pairs(text)[0]


def _clean_line(line: str) -> str:
    line = _BULLET.sub("", line.strip())
    if len(line) >= 2 and line[0] == line[-1] and line[0] in "\"'“”":
        line = line[1:-1]
    return line.strip().strip("“”").strip()


def parse_utterances(text: str | None) -> list[str]:
    """New utterances from a reply: a JSON list of strings (or {"...": [...]}), else one per line with bullets,
    numbers and quotes removed; lines that introduce the list ("Here are ...:") are dropped."""
    if text is None or not text.strip():
        raise ParseError("empty reply")
    for value in _json_values(text):
        if isinstance(value, dict):
            value = next((v for v in value.values() if isinstance(v, list)), None)
        if isinstance(value, list):
            out = [s.strip() for s in value if isinstance(s, str) and s.strip()]
            if out:
                return out
    body = "\n".join(m.group(1) for m in _FENCE.finditer(text)) or text
    lines = [_clean_line(ln) for ln in body.splitlines()]
    out = [ln for ln in lines if ln and not ln.endswith(":") and not ln.startswith(("{", "[", "```"))]
    if not out:
        raise ParseError("no utterances in the reply (expected a JSON list of strings or one per line)")
    return out


def _norm_label(s: str) -> str:
    """Case, underscores, hyphens and punctuation don't make labels differ: "Card_Arrival." == "card arrival"."""
    return " ".join(re.sub(r"[\W_]+", " ", s.lower()).split())


def parse_label(text: str | None, labels: list[str]) -> str:
    """The one label a reply names: the whole reply, its first line (after "Label:"), a JSON {"label": ...}, or
    the only label mentioned in it. Raises ParseError when none or several match."""
    if text is None or not text.strip():
        raise ParseError("empty reply")
    by_norm = {_norm_label(lb): lb for lb in labels}
    first = text.strip().splitlines()[0]
    candidates = [text, first, first.split(":", 1)[-1]]
    for value in _json_values(text):
        if isinstance(value, dict):
            candidates += [str(v) for k, v in value.items() if str(k).lower() in ("label", "category", "intent")]
    for c in candidates:
        hit = by_norm.get(_norm_label(c))
        if hit is not None:
            return hit
    flat = f" {_norm_label(text)} "
    named = [n for n in by_norm if f" {n} " in flat]
    # "lost or stolen card" also names "card": the longer label is the one meant
    longest = [n for n in named if not any(n != o and f" {n} " in f" {o} " for o in named)]
    if len(longest) == 1:
        return by_norm[longest[0]]
    raise ParseError(f"reply names {'several labels' if longest else 'no label'}: {text.strip()[:80]!r}")
