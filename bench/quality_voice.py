"""Marketing voice ("write like us") on the 18F blog: held-out perplexity and a style check of the recipe
configs/marketing/voice-completion.yaml (continued pre-training, LoRA, plain-text rows).

Posts dated 2021 or later are held out (56; a seeded 10% if there were fewer than 40), never split. A seeded
sample of the other posts, one row per whole post, is trained through the recipe (data.too_long: split cuts each
post into consecutive pieces of model.max_length tokens, all trained). Then, on the held-out posts:
  - perplexity in the same pieces, base (the adapter disabled) vs tuned, with a bootstrap 95% interval over posts
    of the per-post log-perplexity difference;
  - style: a TF-IDF + logistic-regression classifier, 18F training-post paragraphs (brand) vs Rust blog
    paragraphs (generic), scored on held-out paragraphs of both; then the share of new copy classified as brand,
    written by base and tuned from held-out titles (prompt "<title>\n\n", sampled at temperature 0.7 with the
    same seed for both, 150 new tokens), Wilson 95% intervals, and a paired bootstrap interval of the
    brand-probability difference.
    python bench/quality_voice.py [--train-posts 25] [--epochs E] [--titles 40] [--set KEY=VALUE] [--quick]
Data: bench/data/voice (bench/prepare_voice.py). Goal: tuned perplexity below base with the interval of the
difference below 0, and more tuned copy classified as brand than base copy.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import shutil
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from quality_common import machine, save

from tunelab.config import load_config
from tunelab.data.records import Record
from tunelab.data.templates import encode_record
from tunelab.device import use_bf16
from tunelab.eval.metrics import bootstrap_diff, sanity_metrics
from tunelab.eval.scoring import generate_answers, text_perplexity
from tunelab.models.load import load, load_tokenizer, resolve, tokenizer_path
from tunelab.recipes.dispatch import run

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "bench" / "data" / "voice"
CONFIG = ROOT / "configs" / "marketing" / "voice-completion.yaml"
HOLDOUT_FROM = "2021"
MIN_HELD = 40  # fewer held-out posts than this: a seeded 10% instead
MIN_PARAGRAPH_WORDS = 12  # headings and list stubs say little about style
SAMPLES = 5  # side-by-side samples kept in the JSON
GEN_BATCH = 20  # titles generated together: fewer sequential decoding steps on a CPU
# as the recipe suggests writing copy (-t 0.7): greedy decoding of a 135M model loops, base and tuned alike
SAMPLING = {"temperature": 0.7, "top_p": 0.95, "repetition_penalty": 1.1}

Post = dict[str, Any]


def read(name: str) -> list[Post]:
    with gzip.open(DATA / f"{name}.jsonl.gz", "rt") as f:
        return [json.loads(line) for line in f]


def split_posts(posts: list[Post], seed: int = 0) -> tuple[list[Post], list[Post], str]:
    """By time: 2021 on held out; a seeded 10% of posts when that is too few. Whole posts either side."""
    held = [p for p in posts if p["date"] >= HOLDOUT_FROM]
    if len(held) >= MIN_HELD:
        return [p for p in posts if p["date"] < HOLDOUT_FROM], held, f"dated {HOLDOUT_FROM} or later"
    order = list(range(len(posts)))
    random.Random(seed).shuffle(order)
    test = set(order[: round(len(posts) * 0.1)])
    return ([p for i, p in enumerate(posts) if i not in test], [p for i, p in enumerate(posts) if i in test],
            "a seeded 10%")


def post_text(p: Post) -> str:
    return f"{p['title']}\n\n{p['body']}"


def pieces(text: str, tok: Any, max_length: int) -> list[str]:
    """A post cut on paragraph boundaries (sentences, for a paragraph too long alone) into texts of at most
    max_length tokens as tunelab encodes a text row (its end-of-text token included)."""
    budget = max_length - 1  # the end-of-text token tunelab appends to every text row
    units: list[str] = []
    for para in text.split("\n\n"):
        if len(tok(para, add_special_tokens=False)["input_ids"]) <= budget:
            units.append(para)
        else:
            units += re.split(r"(?<=[.!?])\s+", para)
    out: list[str] = []
    cur: list[str] = []
    for unit in units:
        if cur and len(tok("\n\n".join([*cur, unit]), add_special_tokens=False)["input_ids"]) > budget:
            out.append("\n\n".join(cur))
            cur = []
        cur.append(unit)  # a single sentence over the budget stays whole: tunelab truncates it
    if cur:
        out.append("\n\n".join(cur))
    return out


def paragraphs(posts: list[Post]) -> list[str]:
    return [para for p in posts for para in p["body"].split("\n\n") if len(para.split()) >= MIN_PARAGRAPH_WORDS]


def wilson(k: int, n: int) -> list[float]:
    from scipy.stats import binomtest

    if not n:
        return [0.0, 0.0]
    ci = binomtest(k, n).proportion_ci(method="wilson")
    return [round(float(ci.low), 4), round(float(ci.high), 4)]


def style_classifier(brand: list[str], generic: list[str]) -> Any:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    clf = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, max_features=200_000),
                        LogisticRegression(C=4.0, class_weight="balanced", max_iter=2000))
    return clf.fit(brand + generic, [1] * len(brand) + [0] * len(generic))


def brand_share(clf: Any, texts: list[str]) -> dict[str, Any]:
    prob = clf.predict_proba(texts)[:, 1]
    k = int((prob >= 0.5).sum())
    return {"brand_share": round(k / max(len(texts), 1), 4), "ci95": wilson(k, len(texts)), "n": len(texts),
            "mean_brand_probability": round(float(prob.mean()), 4) if len(texts) else 0.0,
            "probabilities": [round(float(x), 4) for x in prob]}


def perplexities(model: Any, tok: Any, posts: list[list[str]], max_length: int) -> tuple[list[float], list[int]]:
    """Per-post log-perplexity over all of its pieces (token-weighted), and the tokens each post scores."""
    log_ppl, counts = [], []
    for ps in posts:
        log_ppl.append(float(np.log(text_perplexity(model, tok, ps, max_length=max_length))))
        counts.append(sum(max(len(tok(p, truncation=True, max_length=max_length)["input_ids"]) - 1, 0) for p in ps))
    return log_ppl, counts


def corpus_ppl(log_ppl: list[float], counts: list[int]) -> float:
    return float(np.exp(np.dot(log_ppl, counts) / max(sum(counts), 1)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train-posts", type=int, default=25,
                    help="seeded sample of the training posts to train on (25: about 7 min of training on 2 cores)")
    ap.add_argument("--epochs", type=float, default=None, help="override the recipe's train.epochs")
    ap.add_argument("--titles", type=int, default=40, help="held-out titles to write new copy from")
    ap.add_argument("--new-tokens", type=int, default=150)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="more config overrides, e.g. train.threads=1 on a machine shared with other work")
    ap.add_argument("--quick", action="store_true", help="smoke run: 6 posts, 4 steps, 8 held-out posts, 6 titles")
    ap.add_argument("--work", default="runs/bench-quality-voice")
    ap.add_argument("--json", default="bench/results/quality_voice.json")
    a = ap.parse_args()
    t_start = time.perf_counter()
    work = Path(a.work)
    shutil.rmtree(work, ignore_errors=True)  # the bench's own folder: a fresh run, not name-2, name-3...
    work.mkdir(parents=True)

    brand, generic = read("brand"), read("generic")
    train_pool, held, split_rule = split_posts(brand)
    n_train, n_ppl, n_titles = (6, 8, 6) if a.quick else (a.train_posts, len(held), a.titles)
    train_posts = sorted(random.Random(0).sample(train_pool, min(n_train, len(train_pool))), key=lambda p: p["path"])
    rng = random.Random(1)
    ppl_posts = sorted(rng.sample(held, min(n_ppl, len(held))), key=lambda p: p["path"])
    title_posts = sorted(rng.sample(held, min(n_titles, len(held))), key=lambda p: p["path"])

    overrides = ["name=bench-voice", f"output_dir={work / 'runs'}", f"data.train={work / 'train.jsonl'}",
                 "eval.probes.enabled=false"]  # the probes take minutes on a CPU and measure something else
    if a.epochs is not None:
        overrides.append(f"train.epochs={a.epochs}")
    if a.quick:
        overrides += ["train.max_steps=4", "train.eval_every=2"]
    overrides += a.set
    cfg = load_config(str(CONFIG), overrides)
    if cfg.train.threads:  # scoring and generating on as many threads as training
        torch.set_num_threads(cfg.train.threads)
    max_length = cfg.model.max_length
    tok = load_tokenizer(tokenizer_path(resolve(cfg.model.base)))
    rows = [post_text(p) for p in train_posts]  # whole posts: the recipe splits them (data.too_long: split)
    with (work / "train.jsonl").open("w") as f:
        f.writelines(json.dumps({"text": r}, ensure_ascii=False) + "\n" for r in rows)
    whole = [len(encode_record(Record("p", "text", text=r), tok).input_ids) for r in rows]
    train_tokens = sum(whole)
    t_prep = time.perf_counter() - t_start
    print(f"{len(train_posts)} training posts, {train_tokens:,} tokens "
          f"({sum(min(n, max_length) for n in whole) / max(sum(whole), 1):.0%} of them would survive truncation)")

    t0 = time.perf_counter()
    result = run(cfg)
    t_train = time.perf_counter() - t0

    t0 = time.perf_counter()
    lm = load(str(result.run_dir))
    model, tok = lm.model, lm.tokenizer
    # bf16 where tunelab trains in it (measured ~2x the fp32 rate here; perplexity within ~1%, base and tuned alike)
    bf16 = use_bf16(cfg.model.precision)
    autocast = partial(torch.autocast, "cpu", dtype=torch.bfloat16, enabled=bf16)
    held_pieces = [pieces(post_text(p), tok, max_length) for p in ppl_posts]
    with autocast():
        tuned_lp, counts = perplexities(model, tok, held_pieces, max_length)
    with autocast(), model.disable_adapter():
        base_lp, _ = perplexities(model, tok, held_pieces, max_length)
    diff, lo, hi = bootstrap_diff(tuned_lp, base_lp)
    t_ppl = time.perf_counter() - t0

    t0 = time.perf_counter()
    rust_order = list(range(len(generic)))
    random.Random(2).shuffle(rust_order)
    rust_held = {generic[i]["path"] for i in rust_order[: round(len(generic) * 0.2)]}  # whole posts, as for 18F
    clf = style_classifier(paragraphs(train_pool), paragraphs([p for p in generic if p["path"] not in rust_held]))
    test_brand = paragraphs(held)
    test_generic = paragraphs([p for p in generic if p["path"] in rust_held])
    acc_brand = float((clf.predict(test_brand) == 1).mean())
    acc_generic = float((clf.predict(test_generic) == 0).mean())
    t_clf = time.perf_counter() - t0

    t0 = time.perf_counter()
    prompts = [f"{p['title']}\n\n" for p in title_posts]
    write = partial(generate_answers, tokenizer=tok, prompts=prompts, max_new_tokens=a.new_tokens,
                    batch_size=GEN_BATCH, sampling=SAMPLING)
    torch.manual_seed(0)
    with autocast():
        tuned_copy = write(model)
    torch.manual_seed(0)
    with autocast(), model.disable_adapter():
        base_copy = write(model)
    real = [tok.decode(tok(p["body"], add_special_tokens=False)["input_ids"][: a.new_tokens]) for p in title_posts]
    t_gen = time.perf_counter() - t0
    tuned_s, base_s, real_s = brand_share(clf, tuned_copy), brand_share(clf, base_copy), brand_share(clf, real)
    p_diff = bootstrap_diff(tuned_s["probabilities"], base_s["probabilities"])

    figures = {
        "heldout_posts": len(held), "ppl_posts": len(ppl_posts), "ppl_tokens": sum(counts),
        "base_ppl": round(corpus_ppl(base_lp, counts), 3), "tuned_ppl": round(corpus_ppl(tuned_lp, counts), 3),
        "log_ppl_diff_mean": round(diff, 4), "log_ppl_diff_ci95": [round(lo, 4), round(hi, 4)],
        "ppl_ratio_mean": round(float(np.exp(diff)), 4), "posts_tuned_better": int(np.sum(np.less(tuned_lp, base_lp))),
        "style_classifier_accuracy": {"brand_paragraphs": round(acc_brand, 4),
                                      "generic_paragraphs": round(acc_generic, 4),
                                      "balanced": round((acc_brand + acc_generic) / 2, 4)},
        "brand_share_tuned": tuned_s["brand_share"], "brand_share_tuned_ci95": tuned_s["ci95"],
        "brand_share_base": base_s["brand_share"], "brand_share_base_ci95": base_s["ci95"],
        "brand_share_real_openings": real_s["brand_share"],
        "brand_probability_diff": round(p_diff[0], 4), "brand_probability_diff_ci95": [round(p_diff[1], 4),
                                                                                      round(p_diff[2], 4)],
        "train_seconds": result.summary.get("train_seconds"), "tokens_per_s": result.summary.get("tokens_per_s"),
    }
    out = {
        "figures": figures,
        "corpus": {"brand_posts": len(brand), "brand_words": sum(len(p["body"].split()) for p in brand),
                   "generic_posts": len(generic), "generic_words": sum(len(p["body"].split()) for p in generic),
                   "split": split_rule, "train_pool_posts": len(train_pool), "heldout_posts": len(held),
                   "train_posts": len(train_posts), "train_rows": len(rows), "train_tokens": train_tokens,
                   "train_tokens_if_truncated": sum(min(n, max_length) for n in whole),
                   "classifier_paragraphs": {"brand_train": len(paragraphs(train_pool)),
                                             "generic_train": len(paragraphs(generic)) - len(test_generic),
                                             "brand_test": len(test_brand), "generic_test": len(test_generic)}},
        "perplexity": {"per_post": [{"path": p["path"], "tokens": n, "base_log_ppl": round(b, 4),
                                     "tuned_log_ppl": round(t, 4)}
                                    for p, n, b, t in zip(ppl_posts, counts, base_lp, tuned_lp, strict=True)]},
        "generation": {"tuned": tuned_s, "base": base_s, "real_openings": real_s,
                       "sanity": {"tuned": sanity_metrics(tuned_copy), "base": sanity_metrics(base_copy)},
                       "new_tokens": a.new_tokens, "decoding": SAMPLING},
        "eval_precision": "bf16 autocast" if bf16 else "fp32",
        "samples": [{"title": p["title"], "real": r, "base": b, "tuned": t}
                    for p, r, b, t in list(zip(title_posts, real, base_copy, tuned_copy, strict=True))[:SAMPLES]],
        "run_dir": str(result.run_dir), "summary": result.summary, "config": cfg.model_dump(mode="json"),
        "overrides": overrides, "quick": a.quick,
        "wall_s": {"prepare": round(t_prep, 1), "train": round(t_train, 1), "perplexity": round(t_ppl, 1),
                   "classifier": round(t_clf, 1), "generate": round(t_gen, 1),
                   "total": round(time.perf_counter() - t_start, 1)},
        "machine": machine(),
    }
    print(json.dumps(figures, indent=1))
    print(f"wall: {out['wall_s']}")
    save(Path(a.json), out)


if __name__ == "__main__":
    main()
