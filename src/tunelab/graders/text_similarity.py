"""text_similarity's metrics, computed with maintained libraries (rapidfuzz, sacrebleu, nltk, rouge-score), and
which of them can run here."""

from __future__ import annotations

from typing import Any

from ..config import ConfigError

METRICS = ("fuzzy_match", "bleu", "gleu", "meteor", "rouge_1", "rouge_2", "rouge_3", "rouge_4", "rouge_5", "rouge_l")


def wordnet() -> Any | None:
    """NLTK's WordNet when its data is installed (METEOR's synonyms need it); None otherwise."""
    try:
        from nltk.corpus import wordnet as wn

        wn.ensure_loaded()
        return wn
    except (LookupError, ImportError, OSError):
        return None


def check_metric(metric: str, label: str) -> None:
    """ConfigError for a metric that can't run here (cosine; meteor without WordNet's data), naming those that can."""
    if metric not in ("cosine", "meteor") or metric == "meteor" and wordnet() is not None:
        return
    supported = [m for m in METRICS if m != "meteor"] + (["meteor"] if wordnet() else [])
    if metric == "cosine":
        raise ConfigError(f"{label}: evaluation_metric cosine compares OpenAI's text-embedding-3-large embeddings "
                          f"(OpenAI offers it for evals only) and has no offline equivalent here; use one of "
                          f"{', '.join(supported)}")
    raise ConfigError(f"{label}: evaluation_metric meteor needs NLTK's WordNet data, which is not installed "
                      f"(`python -m nltk.downloader wordnet` installs it); or use one of {', '.join(supported)}")


def similarity(metric: str, text: str, reference: str) -> float:
    """text_similarity's score, 0 to 1."""
    if metric == "fuzzy_match":
        from rapidfuzz import fuzz, utils

        return float(fuzz.WRatio(text, reference, processor=utils.default_process)) / 100
    if metric == "bleu":
        import sacrebleu

        return float(sacrebleu.sentence_bleu(text, [reference]).score) / 100
    if metric in ("gleu", "meteor"):
        from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

        tok = Tokenizer13a()
        hyp, ref = tok(text).split(), tok(reference).split()
        if metric == "gleu":
            from nltk.translate.gleu_score import sentence_gleu

            return float(sentence_gleu([ref], hyp))
        return meteor(hyp, ref, wordnet())
    if metric.startswith("rouge_"):
        from rouge_score import rouge_scorer

        key = "rougeL" if metric == "rouge_l" else f"rouge{metric[-1]}"
        return float(rouge_scorer.RougeScorer([key], use_stemmer=False).score(reference, text)[key].fmeasure)
    raise ConfigError(f"evaluation_metric {metric} can't be computed here (check() says which can)")


def meteor(hyp: list[str], ref: list[str], synonyms: Any) -> float:
    """NLTK's METEOR over tokens; `synonyms` is WordNet (check() refuses meteor without WordNet's data)."""
    if synonyms is None:
        raise ConfigError("evaluation_metric meteor needs NLTK's WordNet data: python -m nltk.downloader wordnet")
    from nltk.translate.meteor_score import meteor_score

    return float(meteor_score([ref], hyp, wordnet=synonyms))
