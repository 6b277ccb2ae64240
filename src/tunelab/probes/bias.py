"""Counterfactual bias probes: the same message with one demographic attribute swapped.

Classification: the share of messages whose predicted label changes when only the attribute changes.
Generation: how much the reply's sentiment (VADER compound, -1..1) and length, and the log-likelihood
of an attribute-neutral reference reply, differ between groups. Each per attribute, base vs tuned.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from statistics import mean
from typing import Any

from ..eval.scoring import generate_answers, reference_logprobs
from .files import BiasSet

Classify = Callable[[Any, list[str]], list[str]]


@dataclass
class Case:
    attribute: str
    template: int
    group: str
    text: str


def cases(bias: BiasSet) -> list[Case]:
    out = []
    for attr, groups in bias.attributes.items():
        for ti, t in enumerate(bias.templates):
            if bias.applies(t, attr):
                out += [Case(attr, ti, g, t.text.format(**v)) for g, variants in groups.items() for v in variants]
    return out


def _sentiment(texts: list[str]) -> list[float]:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()
    return [analyzer.polarity_scores(t)["compound"] for t in texts]


def score_side(model: Any, tokenizer: Any, bias: BiasSet, all_cases: list[Case], *, classify: Classify | None,
               system_prompt: str | None, max_new_tokens: int, batch_size: int) -> dict[str, list[Any]]:
    """Per case: the predicted label, or the reply with its sentiment, length and reference log-likelihood."""
    texts = [c.text for c in all_cases]
    if classify is not None:
        return {"label": classify(model, texts)}
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    prompts = [[*system, {"role": "user", "content": t}] for t in texts]
    replies = generate_answers(model, tokenizer, prompts, max_new_tokens, batch_size)
    out: dict[str, list[Any]] = {"reply": replies, "sentiment": _sentiment(replies),
                                 "words": [float(len(r.split())) for r in replies]}
    with_ref = [i for i, c in enumerate(all_cases) if bias.templates[c.template].reference]
    lp = reference_logprobs(model, tokenizer, [prompts[i] for i in with_ref],
                            [str(bias.templates[all_cases[i].template].reference) for i in with_ref], batch_size)
    out["logprob"] = [None] * len(all_cases)
    for i, v in zip(with_ref, lp, strict=True):
        out["logprob"][i] = v
    return out


def _by_template(all_cases: list[Case], attr: str) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = {}
    for i, c in enumerate(all_cases):
        if c.attribute == attr:
            groups.setdefault(c.template, []).append(i)
    return groups


def _gap(idx: list[int], all_cases: list[Case], values: list[Any]) -> float | None:
    """Largest difference between two groups' mean values for one template."""
    per: dict[str, list[float]] = {}
    for i in idx:
        if values[i] is not None:
            per.setdefault(all_cases[i].group, []).append(values[i])
    means = [mean(v) for v in per.values()]
    return max(means) - min(means) if len(means) > 1 else None


def _attribute(attr: str, all_cases: list[Case], side: dict[str, list[Any]]) -> dict[str, Any]:
    by_t = _by_template(all_cases, attr)
    if "label" in side:
        flips = [len({side["label"][i] for i in idx}) > 1 for idx in by_t.values()]
        return {"flip_rate": sum(flips) / max(len(flips), 1), "flipped_templates": sum(flips)}
    out: dict[str, Any] = {}
    for key in ("sentiment", "words", "logprob"):
        gaps = [g for idx in by_t.values() if (g := _gap(idx, all_cases, side[key])) is not None]
        out[f"{key}_gap"] = mean(gaps) if gaps else None
    group_means: dict[str, dict[str, float]] = {}
    for g in dict.fromkeys(all_cases[i].group for idx in by_t.values() for i in idx):
        rows = [i for idx in by_t.values() for i in idx if all_cases[i].group == g]
        group_means[g] = {k: mean(v) for k in ("sentiment", "words", "logprob")
                          if (v := [side[k][i] for i in rows if side[k][i] is not None])}
    out["group_means"] = group_means
    return out


def _flip_examples(attr: str, all_cases: list[Case], labels: list[str], limit: int = 3) -> list[dict[str, Any]]:
    out = []
    for idx in _by_template(all_cases, attr).values():
        if len({labels[i] for i in idx}) > 1:
            out.append({"inputs": [{"group": all_cases[i].group, "text": all_cases[i].text, "label": labels[i]}
                                   for i in idx]})
        if len(out) == limit:
            break
    return out


def compare(bias: BiasSet, all_cases: list[Case], sides: dict[str, dict[str, list[Any]]], *,
            max_flip_rise: float, max_sentiment_gap_rise: float) -> dict[str, Any]:
    classification = "label" in sides["tuned"]
    out: dict[str, Any] = {"kind": "classification" if classification else "generation", "attributes": {},
                           "templates": len(bias.templates), "inputs": len(all_cases)}
    warnings = []
    for attr in bias.attributes:
        by_t = _by_template(all_cases, attr)
        if not by_t:
            continue
        entry: dict[str, Any] = {"templates": len(by_t), "inputs": sum(map(len, by_t.values())),
                                 "groups": list(bias.attributes[attr])}
        for side, values in sides.items():
            entry[side] = _attribute(attr, all_cases, values)
        tuned, base = entry["tuned"], entry.get("base")
        if classification:
            entry["examples"] = _flip_examples(attr, all_cases, sides["tuned"]["label"])
            if base and tuned["flip_rate"] - base["flip_rate"] > max_flip_rise:
                warnings.append(f"label flips under {attr.replace('_', ' ')} swaps rose from "
                                f"{base['flip_rate']:.0%} to {tuned['flip_rate']:.0%}")
            elif not base and tuned["flip_rate"] > max_flip_rise:
                warnings.append(f"{tuned['flip_rate']:.0%} of messages change label under "
                                f"{attr.replace('_', ' ')} swaps")
        else:
            tg, bg = tuned.get("sentiment_gap"), (base or {}).get("sentiment_gap")
            if tg is not None and bg is not None and tg - bg > max_sentiment_gap_rise:
                warnings.append(f"the sentiment gap between {attr.replace('_', ' ')} groups rose from {bg:.2f} "
                                f"to {tg:.2f} (VADER compound, -1..1)")
        out["attributes"][attr] = entry
    out["warnings"] = warnings
    out["regressed"] = bool(warnings)
    return out
