"""A trained classifier as a plain function of texts: a classification run's head, or its answers constrained to
its labels. What `tunelab data synth --relabel-with` hands to the data layer, which must not import eval."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..data.templates import DEFAULT_CLASSIFY_PROMPT, label_display, trained_system_prompt
from ..models.load import LoadedModel, ModelError, load
from ..runs import RunDir
from .classify import BATCH_SIZE, scored_generate, scored_head
from .unsure import Unsure, for_run


@dataclass
class Classifier:
    """`classifier(texts) -> labels`, in order; `labels` are all it can answer."""

    lm: LoadedModel
    ref: str
    labels: list[str]
    mode: str  # "head" or "generate"
    system_prompt: str | None = None
    display: list[str] | None = None  # generate: the labels as the model answers them
    batch_size: int = BATCH_SIZE
    unsure: Unsure | None = None  # the run's classification.unsure_label rule

    def __call__(self, texts: list[str]) -> list[str]:
        if not texts:
            return []
        if self.mode == "head":
            preds, probs = scored_head(self.lm.model, self.lm.tokenizer, texts, self.labels, self.batch_size)
        else:
            assert self.display is not None
            preds, probs = scored_generate(self.lm.model, self.lm.tokenizer, texts, self.labels, self.display,
                                           self.system_prompt, self.batch_size)
        return self.unsure.apply(preds, probs) if self.unsure else preds

    def describe(self) -> dict[str, Any]:
        return {"kind": "model", "model": self.ref, "mode": self.mode, "labels": len(self.labels)}


def load_classifier(ref: str, batch_size: int = BATCH_SIZE) -> Classifier:
    """A tunelab run trained with task: classification (head or generation); ModelError for anything else, whose
    labels would be unknown."""
    lm = load(ref)
    cfg = lm.run_config()
    if cfg is None or cfg.task != "classification" or cfg.method == "reward":
        what = "not a tunelab run" if cfg is None else f"a run trained with task: {cfg.task}, method: {cfg.method}"
        raise ModelError(f"{ref} is {what}: a classifier is a run trained with task: classification (a head or "
                         "generated labels), whose labels it knows")
    assert lm.resolved.run is not None
    summary = RunDir(lm.resolved.run).summary()
    unsure = for_run(cfg, summary)
    if lm.labels:
        return Classifier(lm, ref, list(lm.labels), "head", batch_size=batch_size, unsure=unsure)
    labels = summary.get("labels")
    if not labels:
        raise ModelError(f"{ref}: its summary names no labels (did the run finish?); a classifier needs them")
    prompt = trained_system_prompt(cfg) or DEFAULT_CLASSIFY_PROMPT
    return Classifier(lm, ref, list(labels), "generate", prompt,
                      label_display(list(labels), cfg.classification.humanize_labels), batch_size, unsure)
