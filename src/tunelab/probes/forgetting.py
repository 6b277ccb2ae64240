"""Forgetting: short general-knowledge questions with checkable answers, and perplexity on plain prose.

The same probes go through the base and the tuned model; a drop beyond the configured thresholds is
reported as forgetting.
"""

from __future__ import annotations

from typing import Any

from ..eval.metrics import normalize_answer, sanity_metrics
from ..eval.scoring import generate_answers, text_perplexity
from .files import Question


def answered(answer: str, accepted: list[str]) -> bool:
    """Any accepted answer appears in the reply as whole words (case and punctuation ignored)."""
    reply = f" {normalize_answer(answer)} "
    return any(f" {normalize_answer(a)} " in reply for a in accepted if normalize_answer(a))


def _messages(q: Question, system_prompt: str | None) -> list[dict[str, str]]:
    system = [{"role": "system", "content": system_prompt}] if q.system and system_prompt else []
    return [*system, {"role": "user", "content": q.question}]


def score_side(model: Any, tokenizer: Any, questions: list[Question], texts: list[str], max_new_tokens: int,
               batch_size: int, system_prompt: str | None = None) -> dict[str, Any]:
    """One model's answers, accuracy, perplexity and generation sanity. Questions marked with_system_prompt
    are asked with system_prompt (the run's), as the deployed model is asked."""
    replies = generate_answers(model, tokenizer, [_messages(q, system_prompt) for q in questions],
                               max_new_tokens, batch_size)
    correct = [answered(r, q.answers) for r, q in zip(replies, questions, strict=True)]
    return {"qa_accuracy": sum(correct) / max(len(correct), 1),
            "perplexity": text_perplexity(model, tokenizer, texts) if texts else None,
            **sanity_metrics(replies), "replies": replies, "correct": correct}


def compare(sides: dict[str, dict[str, Any]], questions: list[Question], *, max_accuracy_drop: float,
            max_perplexity_rise: float, n_examples: int = 10) -> dict[str, Any]:
    """Base vs tuned figures, the changed answers first, and a warning when the tuned model regressed."""
    tuned, base = sides["tuned"], sides.get("base")
    out: dict[str, Any] = {"questions": len(questions),
                           **{k: {m: v for m, v in s.items() if m not in ("replies", "correct")}
                              for k, s in sides.items()}}
    rows = []
    for i, q in enumerate(questions):
        row = {"question": q.question, "answers": q.answers, "topic": q.topic,
               "tuned": tuned["replies"][i], "tuned_correct": tuned["correct"][i]}
        if base:
            row |= {"base": base["replies"][i], "base_correct": base["correct"][i]}
        rows.append(row)
    rows.sort(key=lambda r: (r.get("base_correct", False) == r["tuned_correct"], not r["tuned_correct"]))
    out["examples"] = rows[:n_examples]
    warnings = []
    if base:
        drop = base["qa_accuracy"] - tuned["qa_accuracy"]
        out["qa_drop"] = drop
        lost = sum(b and not t for b, t in zip(base["correct"], tuned["correct"], strict=True))
        out["answers_lost"], out["answers_gained"] = lost, sum(
            t and not b for b, t in zip(base["correct"], tuned["correct"], strict=True))
        if drop > max_accuracy_drop:
            warnings.append(f"general questions answered correctly fell from {base['qa_accuracy']:.0%} to "
                            f"{tuned['qa_accuracy']:.0%} ({lost} of {len(questions)} answers lost)")
        if base.get("perplexity") and tuned.get("perplexity"):
            rise = tuned["perplexity"] / base["perplexity"] - 1
            out["perplexity_rise"] = rise
            if rise > max_perplexity_rise:
                warnings.append(f"perplexity on general text rose {rise:.0%} ({base['perplexity']:.1f} → "
                                f"{tuned['perplexity']:.1f})")
    out["by_topic"] = _own_topics(sides, questions)
    for topic, t in out["by_topic"].items():
        if "base" in t and t["base"] - t["tuned"] > max_accuracy_drop:
            warnings.append(f"your {topic!r} probes answered as expected fell from {t['base']:.0%} to "
                            f"{t['tuned']:.0%} ({t['questions']} questions)")
    out["regressed"] = bool(warnings)
    out["warnings"] = warnings
    return out


def _own_topics(sides: dict[str, dict[str, Any]], questions: list[Question]) -> dict[str, dict[str, Any]]:
    """Accuracy per topic of the user's own probe questions (a rule kept or lost shows apart from the shipped
    general questions, which would dilute it)."""
    out: dict[str, dict[str, Any]] = {}
    for topic in dict.fromkeys(q.topic or "your questions" for q in questions if q.own):
        idx = [i for i, q in enumerate(questions) if q.own and (q.topic or "your questions") == topic]
        out[topic] = {"questions": len(idx)} | {
            side: sum(s["correct"][i] for i in idx) / len(idx) for side, s in sides.items()}
    return out
