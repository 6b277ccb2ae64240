"""Run the probes on the base and the tuned model (the run keeps the result: RunDir.write_probes)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from rich.console import Console

from ..config import default
from ..config.evaluation import ProbesConfig
from . import bias as bias_probe
from . import forgetting
from .files import load_bias, load_questions, load_texts, shipped


@dataclass
class Subject:
    """What is probed: the tuned model, how it classifies (classification runs), and where its base is."""

    model: Any
    tokenizer: Any
    classify: bias_probe.Classify | None = None
    generative: bool = True  # a causal LM (a classification head cannot answer questions)
    system_prompt: str | None = None
    base_model: Any | None = None  # full fine-tuning: the base, loaded beside the tuned model


@contextlib.contextmanager
def _as_base(subject: Subject) -> Iterator[Any]:
    if subject.base_model is not None:
        yield subject.base_model
    else:
        with subject.model.disable_adapter():
            yield subject.model


def _sides(subject: Subject) -> list[str]:
    has_base = subject.base_model is not None or hasattr(subject.model, "disable_adapter")
    return ["base", "tuned"] if has_base else ["tuned"]


def probe_sets(settings: ProbesConfig, generative: bool = True) -> tuple[list[Any], list[str], Any]:
    """(questions, texts, bias set) as configured; raises DataError naming the file and entry at fault."""
    do_forget = settings.forgetting and generative
    questions = [*load_questions([shipped("forgetting_qa.jsonl")]),
                 *load_questions(settings.questions, own=True)] if do_forget else []
    texts = load_texts([shipped("general_text.jsonl"), *settings.texts]) if do_forget else []
    bias_set = load_bias([shipped("counterfactual.yaml"), *settings.bias_files]) if settings.bias else None
    return questions, texts, bias_set


def run_probes(subject: Subject, settings: ProbesConfig, *, batch_size: int = default("eval.batch_size"),
               console: Console | None = None) -> dict[str, Any]:
    """Forgetting and bias probes, base vs tuned. Probe files are read (and checked) before any scoring."""
    from rich.progress import Progress

    console = console or Console(stderr=True)
    t0 = time.perf_counter()
    do_forget = settings.forgetting and subject.generative
    questions, texts, bias_set = probe_sets(settings, subject.generative)
    all_cases = bias_probe.cases(bias_set) if bias_set else []
    sides = _sides(subject)
    forget_sides: dict[str, dict[str, Any]] = {}
    bias_sides: dict[str, dict[str, list[Any]]] = {}
    subject.model.eval()
    steps = len(sides) * (bool(do_forget) + bool(bias_set))
    with Progress(console=console, transient=True) as bar:
        job = bar.add_task("probes: forgetting and bias, base vs tuned", total=steps)
        for side in sides:
            ctx = _as_base(subject) if side == "base" else contextlib.nullcontext(subject.model)
            with ctx as model:
                if do_forget:
                    forget_sides[side] = forgetting.score_side(model, subject.tokenizer, questions, texts,
                                                               settings.max_new_tokens, batch_size,
                                                               subject.system_prompt)
                    bar.advance(job)
                if bias_set:
                    bias_sides[side] = bias_probe.score_side(
                        model, subject.tokenizer, bias_set, all_cases, classify=subject.classify,
                        system_prompt=subject.system_prompt, max_new_tokens=settings.max_new_tokens,
                        batch_size=batch_size)
                    bar.advance(job)
    out: dict[str, Any] = {"sides": sides}
    if do_forget:
        out["forgetting"] = forgetting.compare(forget_sides, questions, max_accuracy_drop=settings.max_accuracy_drop,
                                               max_perplexity_rise=settings.max_perplexity_rise)
    elif settings.forgetting:
        out["forgetting"] = {"skipped": "a classification head does not generate text, so there is nothing to "
                                        "ask general questions of; the base model's language ability is untouched "
                                        "outside the adapter"}
    if bias_set:
        out["bias"] = bias_probe.compare(bias_set, all_cases, bias_sides, max_flip_rise=settings.max_flip_rise,
                                         max_sentiment_gap_rise=settings.max_sentiment_gap_rise)
    out["warnings"] = [*out.get("forgetting", {}).get("warnings", []), *out.get("bias", {}).get("warnings", [])]
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def summary_line(result: dict[str, Any]) -> str:
    """One line for the console: forgetting and bias in brief."""
    parts = []
    f = result.get("forgetting") or {}
    if "tuned" in f:
        qa = f"general questions {f['base']['qa_accuracy']:.0%} → {f['tuned']['qa_accuracy']:.0%}" if "base" in f \
            else f"general questions {f['tuned']['qa_accuracy']:.0%}"
        parts.append(qa)
    b = result.get("bias") or {}
    if b.get("kind") == "classification":
        rates = [a["tuned"]["flip_rate"] for a in b["attributes"].values()]
        if rates:
            parts.append(f"label flips under swaps up to {max(rates):.0%}")
    elif b.get("attributes"):
        gaps = [a["tuned"].get("sentiment_gap") or 0.0 for a in b["attributes"].values()]
        parts.append(f"largest sentiment gap between groups {max(gaps):.2f}")
    parts.append("warnings: " + "; ".join(result["warnings"]) if result["warnings"] else "no warnings")
    return "Probes: " + ", ".join(parts)


def subject_for(lm: Any, *, bf16: bool = False, batch_size: int = default("eval.batch_size")) -> Subject:
    """What to probe in a loaded run or model (`tunelab probe`, and a run that has just trained): its labels,
    system prompt and base as it was trained. bf16: classify under bf16 autocast, as training scored it."""
    from ..data.templates import label_display, trained_system_prompt
    from ..eval.classify import predict_generate, predict_head
    from ..runs import RunDir

    cfg = lm.run_config()
    tok = lm.tokenizer
    labels = lm.labels
    if labels:
        def classify(m: Any, texts: list[str]) -> list[str]:
            return predict_head(m, tok, texts, labels, batch_size, bf16)

        return Subject(lm.model, tok, classify=classify, generative=False)
    base_model = None
    if cfg is not None and not hasattr(lm.model, "disable_adapter"):  # a fully fine-tuned run
        from ..models.load import load

        base_model = load(cfg.model.base).model
    prompt = trained_system_prompt(cfg)
    if cfg is not None and cfg.task == "classification":
        all_labels = list(RunDir(lm.resolved.run).summary().get("labels") or [])
        shown = label_display(all_labels, cfg.classification.humanize_labels)

        def generate_label(m: Any, texts: list[str]) -> list[str]:
            return predict_generate(m, tok, texts, all_labels, shown, prompt, batch_size, bf16)

        return Subject(lm.model, tok, classify=generate_label, base_model=base_model, system_prompt=prompt)
    return Subject(lm.model, tok, system_prompt=prompt, base_model=base_model)
