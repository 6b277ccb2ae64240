"""The domain of a data file (medical, legal, or a writer's own prose), so that `tunelab init` starts from that
domain's recipe (configs/medical, configs/legal, configs/marketing; docs/recipes.md): its system prompt, its
probes, the caveats a team in that domain must hear. Judged from words typical of the domain in the rows'
text; a file that is none of these keeps the generic choices.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

MIN_SHARE = 0.3  # a domain's words in at least this share of the rows
PROSE_WORDS = 150  # plain-text rows this long (median) are someone's own writing: documents, posts, copy

_MEDICAL = (r"symptoms?|diseases?|treatments?|treated|diagnos\w*|patients?|doctors?|medications?|medicines?|"
            r"clinical|therapy|syndrome|infections?|cancer|chronic|dos(?:e|age)|blood|genetic|disorders?|"
            r"surgery|prescri\w+|health")
_LEGAL = (r"shall|agreement|part(?:y|ies)|hereby|hereunder|thereof|herein|licensee|licensor|indemnif\w*|"
          r"liabilit(?:y|ies)|terminat\w+|governing law|contract\w*|clauses?|warrant\w*|obligations?|breach")


@dataclass
class Domain:
    name: str  # medical | legal | prose
    share: float  # of the rows with the domain's words (prose: 1.0)
    recipe: str
    caveat: str | None = None  # said in the run's report and the exported model's card
    choices: list[tuple[str, Any, str]] = field(default_factory=list)  # (key, value, why)
    notes: list[str] = field(default_factory=list)


def _share(pattern: str, texts: list[str]) -> float:
    rx = re.compile(rf"\b(?:{pattern})\b", re.IGNORECASE)
    return sum(bool(rx.search(t)) for t in texts) / max(len(texts), 1)


def referral_questions() -> str:
    return str(resources.files("tunelab").joinpath("examples", "medical", "referral_questions.jsonl"))


MEDICAL_PROMPT = ("You give general health information from trusted medical sources. You are not a doctor: when "
                  "someone asks about their own symptoms, medicines or treatment, tell them to talk to their doctor "
                  "or another clinician.")


MEDICAL_CAVEAT = ("Tuned on health questions, this model is not a medical device: it gives general information and "
                  "can be wrong or out of date. Anything it says about a person's own symptoms, medicines or "
                  "treatment must be checked by a clinician.")
LEGAL_CAVEAT = ("Tuned on contract clauses, this model sorts and drafts text; it does not give legal advice, and a "
                "lawyer must check what it says about a particular contract.")


def record_text(rec: Any) -> str:
    """The words of a data record (tunelab.data.records.Record), whatever its format, less its system message
    (one medical word in a system prompt would make every row look medical)."""
    parts = [rec.text, rec.prompt, rec.completion, rec.label] + [
        str(m.get("content") or "") for m in rec.messages if m.get("role") != "system"]  # the rows, not the prompt
    return " ".join(p for p in parts if isinstance(p, str))


def detect(rows: list[dict[str, Any]], kind: str, plain_text: bool = False) -> Domain | None:
    """The domain of the sampled rows of a chat, completion or classification file, or None. plain_text: the
    rows are plain texts (no prompt), which alone can be someone's prose."""
    return detect_texts([" ".join(str(v) for v in r.values() if isinstance(v, str | list)) for r in rows], kind,
                        plain_text)


def detect_texts(texts: list[str], kind: str, plain_text: bool = False) -> Domain | None:
    if not texts:
        return None
    medical, legal = _share(_MEDICAL, texts), _share(_LEGAL, texts)
    if kind in ("chat", "completion") and not plain_text and medical >= MIN_SHARE and medical > legal:
        return Domain("medical", medical, "configs/medical/answers-lora.yaml", MEDICAL_CAVEAT, [
            ("data.system_prompt", MEDICAL_PROMPT, "health questions: general information, and people sent to a "
             "clinician for their own case (the server uses the same prompt)"),
            ("eval.probes", {"questions": [referral_questions()], "max_new_tokens": 96}, "probes that the tuned "
             "model sends people to a clinician under that prompt (base vs tuned, in the report), with room for "
             "a sentence of information before the referral")], [
            f"medical data ({medical:.0%} of the rows): a tuned 135M model is not a medical device; keep a "
            "clinician in the loop (docs/recipes.md#medical-question-answering)",
            "hold out whole diseases or documents (data.validation), not random rows: answers about the same "
            "disease are alike, and a random split flatters the scores"])
    if kind == "classification" and legal >= MIN_SHARE and legal > medical:
        return Domain("legal", legal, "configs/legal/clause-types.yaml", LEGAL_CAVEAT, [], [
            f"legal text ({legal:.0%} of the rows): the model sorts clauses, it does not give legal advice "
            "(docs/recipes.md#legal-clauses)",
            "hold out whole contracts (data.validation), not random clauses: clauses of one contract are alike"])
    if kind == "completion" and plain_text:
        words = sorted(len(t.split()) for t in texts)
        if words[len(words) // 2] >= PROSE_WORDS:
            return Domain("prose", 1.0, "configs/marketing/voice-completion.yaml", None, [
                ("data.too_long", "split", "long texts are split into pieces of model.max_length tokens, every "
                 "piece trained, rather than cut")], [
                "long plain texts: continued pre-training teaches the model your voice; then write new copy with "
                "`tunelab generate RUN_DIR --prompt 'A title'` (docs/recipes.md#marketing-voice)",
                "hold out whole documents written later (data.validation) to see whether new texts read like yours"])
    return None
