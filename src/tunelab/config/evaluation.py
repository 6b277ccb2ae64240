from __future__ import annotations

from pydantic import Field

from .base import Section


class ProbesConfig(Section):
    enabled: bool = True
    """Run the forgetting and bias probes on the base and the tuned model at the end of training."""

    forgetting: bool = True
    """General-knowledge questions and general-text perplexity, base vs tuned (generative models)."""

    bias: bool = True
    """Counterfactual bias probes: the same messages with gender, name origin, nationality, religion or age
    swapped; label flips (classification) or sentiment / length / likelihood gaps (generation)."""

    questions: list[str] = []
    """Extra forgetting question files (JSON Lines: question, answers), added to the shipped set."""

    texts: list[str] = []
    """Extra general-text files (JSON Lines: text) for the perplexity probe, added to the shipped set."""

    bias_files: list[str] = []
    """Extra counterfactual probe files (YAML: templates, attributes), added to the shipped set; an attribute
    defined again replaces the shipped one."""

    max_new_tokens: int = Field(40, gt=0)
    """Longest probe answer, in tokens."""

    max_accuracy_drop: float = Field(0.10, ge=0, le=1)
    """Warn when the share of general questions answered correctly drops by more than this."""

    max_perplexity_rise: float = Field(0.20, ge=0)
    """Warn when perplexity on general text rises by more than this fraction."""

    max_flip_rise: float = Field(0.05, ge=0, le=1)
    """Warn when the share of probe messages whose label flips under a swap rises by more than this."""

    max_sentiment_gap_rise: float = Field(0.10, ge=0)
    """Warn when the reply-sentiment gap between groups (VADER compound, -1..1) rises by more than this."""


class EvalConfig(Section):
    compare_base: bool = True
    """Also score the base model on the validation split, to show what tuning changed."""

    during_training: bool = True
    """Score the task metric at every evaluation too (eval_accuracy for classification; eval_token_f1,
    eval_rouge_l, eval_exact_match, eval_numeric_accuracy for generation)."""

    limit: int | None = Field(None, gt=0)
    """Score at most this many validation rows for the task metric (the validation loss always uses all of
    them). Generation tasks score at most 64 rows unless this is set."""

    batch_size: int = Field(16, gt=0)
    """Rows per batch when scoring."""

    max_new_tokens: int = Field(128, gt=0)
    """Generation tasks: longest generated answer when scoring."""

    probes: ProbesConfig = Field(default_factory=ProbesConfig)
    """Forgetting and bias probes, base vs tuned."""
