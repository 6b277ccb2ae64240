"""Medical question answering: the default model before and after the shipped recipe
(configs/medical/answers-lora.yaml), on MedQuAD questions about diseases it never saw in training.

MedQuAD (../shared/data/medquad, NIH sources, CC-BY-4.0) is split by disease (`focus`): every answer about
a disease is on one side, so no answer leaks between training and scoring. Trains on a seeded sample of
the training side, then generates answers to held-out questions with the base and the tuned model and
scores them against the references: ROUGE-L, token F1, key terms kept (the reference's rare words and
numbers that the answer contains) and unsupported key terms (the answer's that the reference lacks: a
simple hallucination rate), answer length; means with 95% bootstrap intervals and the paired difference.
The run's own probes add forgetting (general questions, prose perplexity) and whether the tuned model
still sends people to a clinician under the recipe's system prompt.
    python bench/quality_medquad.py [--train-rows 800] [--test-rows 120] [--epochs 1] [--no-referrals] [--quick]
                                    [--json PATH]
    python bench/quality_medquad.py --write-sample src/tunelab/examples/medical   # the shipped sample
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import shutil
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from quality_common import SHARED, machine, save

from tunelab.config import load_config
from tunelab.data.load import load_records
from tunelab.eval.evaluate import EvalTask, score
from tunelab.eval.metrics import bootstrap_diff, per_example_generation, repetition
from tunelab.models.load import LoadedModel, load
from tunelab.recipes.dispatch import run
from tunelab.runs import RunDir

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "medical" / "answers-lora.yaml"
REFERRALS = ROOT / "src" / "tunelab" / "examples" / "medical" / "train" / "referrals.jsonl"
SOURCE = SHARED / "medquad" / "medquad-train.jsonl.gz"
MAX_WORDS = 250  # answers longer than this are cut at max_length in training; scored rows keep them whole
LOOP = 0.3  # an answer whose word 3-grams repeat more than this loops (as tunelab's repetition_rate counts)
FIELDS = ("question", "answer", "qtype", "focus", "source", "document_id", "url")


def read_medquad() -> list[dict[str, Any]]:
    with gzip.open(SOURCE, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def split_by_disease(rows: list[dict[str, Any]], fraction: float = 0.1, seed: int = 0
                     ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A seeded `fraction` of the diseases (focus) held out, with every row about them."""
    foci = sorted({r["focus"].strip().lower() for r in rows})
    random.Random(seed).shuffle(foci)
    held = set(foci[: round(len(foci) * fraction)])
    train = [r for r in rows if r["focus"].strip().lower() not in held]
    return train, [r for r in rows if r["focus"].strip().lower() in held]


def sample(rows: list[dict[str, Any]], n: int, seed: int, spread: bool = False) -> list[dict[str, Any]]:
    """A seeded sample of rows with answers of at most MAX_WORDS words; spread: one question per disease
    first, so that a few diseases with many questions do not fill the sample."""
    ok = [r for r in rows if 0 < len(r["answer"].split()) <= MAX_WORDS and r["question"].strip()]
    rng = random.Random(seed)
    rng.shuffle(ok)
    if not spread:
        return ok[:n]
    by_focus: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in ok:
        by_focus[r["focus"].strip().lower()].append(r)
    out: list[dict[str, Any]] = []
    while len(out) < n and any(by_focus.values()):
        for group in list(by_focus.values()):
            if group and len(out) < n:
                out.append(group.pop())
    return out


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps({k: r[k] for k in FIELDS if k in r}, ensure_ascii=False) + "\n")


def with_intervals(values: list[float]) -> dict[str, float]:
    from scipy.stats import bootstrap

    mean = sum(values) / len(values)
    ci = bootstrap((values,), lambda x: sum(x) / len(x), confidence_level=0.95, n_resamples=2000,
                   method="percentile", random_state=0, vectorized=False).confidence_interval
    return {"mean": mean, "ci95": [float(ci.low), float(ci.high)]}


def compare(refs: list[str], tuned: list[str], base: list[str]) -> dict[str, Any]:
    """Each metric's mean with its interval for both models, and the paired difference's interval."""
    per_t = [per_example_generation(r, p) for r, p in zip(refs, tuned, strict=True)]
    per_b = [per_example_generation(r, p) for r, p in zip(refs, base, strict=True)]
    for rows, preds in ((per_t, tuned), (per_b, base)):
        for row, p in zip(rows, preds, strict=True):
            row["words"] = float(len(p.split()))
    out: dict[str, Any] = {}
    for key in ("rouge_l", "token_f1", "key_term_recall", "unsupported_terms", "words"):
        pairs = [(t[key], b[key]) for t, b in zip(per_t, per_b, strict=True)
                 if t[key] is not None and b[key] is not None]
        t_vals, b_vals = [float(t) for t, _ in pairs], [float(b) for _, b in pairs]
        diff, lo, hi = bootstrap_diff(t_vals, b_vals)
        out[key] = {"rows": len(pairs), "base": with_intervals(b_vals), "tuned": with_intervals(t_vals),
                    "diff": diff, "diff_ci95": [lo, hi]}
    out["reference_words"] = sum(len(r.split()) for r in refs) / len(refs)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train-rows", type=int, default=800)
    ap.add_argument("--test-rows", type=int, default=120)
    ap.add_argument("--epochs", type=float, default=1)
    ap.add_argument("--max-new-tokens", type=int, default=192)
    ap.add_argument("--no-referrals", dest="referrals", action="store_false",
                    help="train on the MedQuAD rows alone, without the recipe's 30 referral answers")
    ap.add_argument("--quick", action="store_true", help="60 training rows, 12 scored: a first look")
    ap.add_argument("--write-sample", type=Path, help="write the shipped sample (train/validation) here and stop")
    ap.add_argument("--work", default="runs/bench-quality-medquad")
    ap.add_argument("--json", default="bench/results/quality_medquad.json")
    a = ap.parse_args()
    train_side, test_side = split_by_disease(read_medquad())
    if a.write_sample:
        write_jsonl(a.write_sample / "train" / "medquad.jsonl", sample(train_side, 240, seed=1, spread=True))
        write_jsonl(a.write_sample / "validation.jsonl", sample(test_side, 40, seed=1, spread=True))
        print(f"wrote the sample to {a.write_sample}")
        return
    if a.quick:
        a.train_rows, a.test_rows, a.max_new_tokens = 60, 12, 48
    work = Path(a.work)
    train, test = sample(train_side, a.train_rows, seed=0), sample(test_side, a.test_rows + 16, seed=0, spread=True)
    test, val = test[: a.test_rows], test[a.test_rows :]  # val: the run's own loss, other held-out diseases
    for name, rows in (("train/medquad", train), ("validation", val), ("test", test)):
        write_jsonl(work / f"{name}.jsonl", rows)
    if a.referrals:  # the recipe's rows that show the model sending people to a clinician
        shutil.copy(REFERRALS, work / "train" / REFERRALS.name)
    else:
        (work / "train" / REFERRALS.name).unlink(missing_ok=True)
    cfg = load_config(RECIPE, [
        f"output_dir={work / 'runs'}", f"data.train={work / 'train'}",
        f"data.validation={work / 'validation.jsonl'}", f"train.epochs={a.epochs}",
        "eval.compare_base=false", "eval.during_training=false", "eval.limit=4", "eval.probes.bias=false",
        *(["train.max_steps=4"] if a.quick else [])])
    t0 = time.perf_counter()
    result = run(cfg)
    train_wall = time.perf_counter() - t0
    lm = load(str(result.run_dir))
    records = load_records(work / "test.jsonl", "auto", cfg.data.columns, cfg.data.system_prompt).records
    task = EvalTask("generation", records)
    t1 = time.perf_counter()
    settings = {"max_new_tokens": a.max_new_tokens, "max_length": cfg.model.max_length, "batch_size": 16}
    tuned_metrics, tuned_preds, _ = score(lm, task, **settings)
    with lm.model.disable_adapter():
        base_metrics, base_preds, _ = score(LoadedModel(lm.model, lm.tokenizer, lm.resolved, lm.labels), task,
                                            **settings)
    score_wall = time.perf_counter() - t1
    refs = [r.messages[-1]["content"] for r in records]
    probes = RunDir(result.run_dir).probes() or {}
    forgetting = probes.get("forgetting") or {}
    # greedy answers of a 135M model often loop, and a loop repeats few terms: the same figures on the rows where
    # neither answer loops show what is left when that is taken out
    plain = [i for i, (t, b) in enumerate(zip(tuned_preds, base_preds, strict=True))
             if repetition(t) <= LOOP and repetition(b) <= LOOP]
    unlooped = compare([refs[i] for i in plain], [tuned_preds[i] for i in plain], [base_preds[i] for i in plain]) \
        if len(plain) > 2 else None
    figures = {"scored_rows": len(records), "diseases_held_out": len({r["focus"].strip().lower() for r in test_side}),
               **compare(refs, tuned_preds, base_preds), "without_loops": unlooped, "rows_without_loops": len(plain),
               "loss": {"base": base_metrics["loss"], "tuned": tuned_metrics["loss"]},
               "repetition_rate": {"base": base_metrics["repetition_rate"], "tuned": tuned_metrics["repetition_rate"]},
               "general_questions": {k: forgetting.get(k, {}).get("qa_accuracy") for k in ("base", "tuned")},
               "general_text_perplexity": {k: forgetting.get(k, {}).get("perplexity") for k in ("base", "tuned")},
               "referral_probes": forgetting.get("by_topic"), "probe_warnings": probes.get("warnings"),
               "train_seconds": result.summary.get("train_seconds"),
               "train_wall_s": round(train_wall, 1), "score_wall_s": round(score_wall, 1)}
    examples = [{"question": r["question"], "focus": r["focus"], "reference": ref, "base": b, "tuned": t}
                for r, ref, b, t in zip(test[:6], refs, base_preds, tuned_preds, strict=False)]
    out = {"figures": figures, "examples": examples,
           "predictions": [{"focus": r["focus"], "tuned": t, "base": b}
                           for r, t, b in zip(test, tuned_preds, base_preds, strict=False)],
           "train_rows": len(train), "referral_rows": a.referrals,
           "test_rows": len(test),
           "run_dir": str(result.run_dir), "summary": result.summary, "config": cfg.model_dump(mode="json"),
           "metrics": {"base": base_metrics, "tuned": tuned_metrics}, "machine": machine()}
    print(json.dumps({k: figures[k] for k in ("rouge_l", "token_f1", "key_term_recall", "unsupported_terms")},
                     indent=1))
    save(Path(a.json), out)


if __name__ == "__main__":
    main()
