"""Key terms of a long answer and how far an answer keeps to its reference's: a simple factual-overlap and
hallucination measure for answers whose wording may differ (medical, legal, product answers).

A key term is a number or a word that is rare in general English (wordfreq's Zipf frequency below
RARE_ZIPF: 'leukemia', 'autosomal', 'BRCA1', but not 'disease' or 'treatment'). Recall is the share of the
reference's key terms the answer contains; the unsupported rate is the share of the answer's key terms the
reference does not contain, which is where a made-up drug, gene or figure shows. Surface forms only: a
synonym counts as missing, so compare models with it rather than read it as an absolute rate.
"""

from __future__ import annotations

import re
from functools import lru_cache

RARE_ZIPF = 4.0  # ~ fewer than 10 per million words: 'mutation' 3.6, 'symptoms' 4.5
_NUMBER = r"\d+(?:[.,]\d+)*"
_ENUMERATOR = re.compile(r"^\s*(?:\d+|[a-zA-Z])[.)]\s", re.MULTILINE)  # "1. ", "b) ": list numbering
_TOKEN = re.compile(rf"(?P<number>{_NUMBER})|(?P<word>[A-Za-z][A-Za-z0-9'-]*[A-Za-z0-9]|[A-Za-z])")


@lru_cache(maxsize=200_000)
def _rare(word: str) -> bool:
    from wordfreq import zipf_frequency

    return len(word) >= 3 and zipf_frequency(word, "en") < RARE_ZIPF


def _normal(word: str) -> str:
    """Lower case, possessive and plural 's' off, so 'Platelets' and 'platelet' are one term."""
    word = word.lower().removesuffix("'s")
    return word[:-1] if len(word) > 4 and word.endswith("s") and not word.endswith("ss") else word


def key_terms(text: str) -> set[str]:
    terms = set()
    for m in _TOKEN.finditer(_ENUMERATOR.sub(" ", text)):
        number, word = m.group("number"), m.group("word")
        if number:
            terms.add(number.replace(",", "").rstrip("."))  # '6,000' and '6000' are one figure
        elif any(c.isdigit() for c in word):  # BRCA1, COVID-19, type-2
            terms.add(word.lower())
        elif _rare(_normal(word)):  # "doctor's" and "fluids" are judged as "doctor" and "fluid"
            terms.add(_normal(word))
    return terms


def term_overlap(reference: str, answer: str) -> dict[str, float | None]:
    """key_term_recall (None when the reference has no key term) and unsupported_terms (0 for an answer
    without key terms: it claims nothing specific)."""
    ref, ans = key_terms(reference), key_terms(answer)
    return {"key_term_recall": len(ref & ans) / len(ref) if ref else None,
            "unsupported_terms": len(ans - ref) / len(ans) if ans else 0.0}
