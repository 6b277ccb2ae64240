"""What the teacher is asked. Short, with the expected JSON shown literally: small local teachers follow an example
better than a description."""

from __future__ import annotations

import json

from .teacher import Message

SYSTEM = "You write training data for a machine learning model. Follow the requested output format exactly."
CHUNK_START, CHUNK_END = "<<<DOCUMENT", "DOCUMENT>>>"  # the chunk's bounds, for the teacher (and test fakes)


def _qa(question: str, answer: str) -> str:
    return json.dumps({"question": question, "answer": answer}, ensure_ascii=False)


def new_example(examples: list[tuple[str, str]]) -> list[Message]:
    """Self-instruct: a few seed question/answer pairs, asking for one new, different pair in their style."""
    shown = "\n".join(_qa(q, a) for q, a in examples)
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": (
                f"Here are examples of questions and their answers:\n\n{shown}\n\n"
                "Write ONE new example in the same style, topic and length: a question different from all of the "
                "above, and its correct answer. Reply with only a JSON object:\n"
                '{"question": "...", "answer": "..."}')}]


def new_utterances(label: str, examples: list[str], others: list[str], count: int) -> list[Message]:
    """New inputs for one label of a classification task, with the other labels named so that they stay apart."""
    shown = "\n".join(f"- {t}" for t in examples)
    avoid = f" They must not fit these other labels: {', '.join(others)}." if others else ""
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": (
                f"Here are examples of texts with the label \"{label}\":\n{shown}\n\n"
                f"Write {count} new, different texts that also have the label \"{label}\", in the same style and "
                f"length.{avoid} Reply with only a JSON list of strings:\n"
                '["...", "..."]')}]


def relabel(text: str, labels: list[str], examples: dict[str, str]) -> list[Message]:
    """The consistency check of a new utterance: the teacher labels it again, not knowing the intended label."""
    shown = "\n".join(f"{examples[lb]!r} -> {lb}" for lb in labels if lb in examples)
    return [{"role": "system", "content": "You classify texts. Reply with only the label."},
            {"role": "user", "content": (
                f"Labels: {', '.join(labels)}\n\nExamples:\n{shown}\n\n"
                f"Text: {text!r}\nWhich label fits the text? Reply with only one label from the list.")}]


def document_questions(chunk: str, count: int) -> list[Message]:
    """Question/answer pairs grounded in one chunk of a document."""
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": (
                f"Read this text:\n{CHUNK_START}\n{chunk}\n{CHUNK_END}\n\n"
                f"Write {count} questions that this text answers, each with its answer taken from the text. Each "
                "question must make sense on its own, without the text. Reply with only a JSON list:\n"
                '[{"question": "...", "answer": "..."}]')}]
