"""Greedy generation throughput on the default model: plain `model.generate` one prompt at a time (the
baseline) against batched generation with the KV cache (tunelab's `generate_answers`, left-padded batches),
in fp32 and with bf16 weights, on the same customer-support prompts, in one run.

    python bench/generate_throughput.py [--prompts 16] [--new-tokens 64] [--json PATH]

Tokens/s counts generated tokens up to each row's end-of-turn (padding after a finished row is not counted).
`same_as_baseline` is the share of answers identical to the fp32 one-at-a-time answers.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import time
from pathlib import Path
from typing import Any

import torch

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def prompts(n: int, seed: int = 0) -> list[list[dict[str, str]]]:
    with (SHARED / "bitext-customer-support" / "Bitext_Sample_Customer_Support_Training_Dataset.csv").open() as f:
        rows = [r["instruction"] for r in csv.DictReader(f)]
    return [[{"role": "user", "content": q}] for q in random.Random(seed).sample(rows, n)]


def run_arm(model: Any, tok: Any, chats: list[list[dict[str, str]]], new_tokens: int, batch: int,
            plain: bool) -> tuple[list[str], float, int]:
    from tunelab.eval.scoring import generate_answers

    t0 = time.perf_counter()
    if plain:  # the baseline: what a user writes with transformers alone, one prompt at a time
        answers = []
        for chat in chats:
            enc = tok.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
            out = model.generate(**enc, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
            answers.append(tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    else:
        answers = generate_answers(model, tok, chats, new_tokens, batch_size=batch)
    seconds = time.perf_counter() - t0
    generated = sum(min(new_tokens, len(tok(a, add_special_tokens=False)["input_ids"]) + 1) for a in answers)
    return answers, seconds, generated


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    from transformers import AutoModelForCausalLM

    from tunelab.device import cpu_flags
    from tunelab.models.load import load_tokenizer, resolve

    path = resolve(None).path
    tok = load_tokenizer(path)
    chats = prompts(a.prompts)
    arms = [("model.generate, batch 1, fp32 (baseline)", torch.float32, 1, True),
            ("model.generate, batch 1, bf16 weights", torch.bfloat16, 1, True),
            ("batched + KV cache, batch 4, fp32", torch.float32, 4, False),
            ("batched + KV cache, batch 16, fp32", torch.float32, 16, False),
            ("batched + KV cache, batch 4, bf16 weights", torch.bfloat16, 4, False),
            ("batched + KV cache, batch 16, bf16 weights", torch.bfloat16, 16, False)]
    results: list[dict[str, Any]] = []
    baseline: list[str] = []
    models: dict[torch.dtype, Any] = {}
    for name, dtype, batch, plain in arms:
        if dtype not in models:
            models[dtype] = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
        run_arm(models[dtype], tok, chats[:1], 4, 1, plain)  # warm-up
        with torch.no_grad():
            answers, seconds, generated = run_arm(models[dtype], tok, chats, a.new_tokens, batch, plain)
        baseline = baseline or answers
        r = {"arm": name, "batch": batch, "dtype": str(dtype).removeprefix("torch."), "seconds": round(seconds, 2),
             "generated_tokens": generated, "tok_s": round(generated / seconds, 1),
             "same_as_baseline": sum(x == y for x, y in zip(answers, baseline, strict=True)) / len(answers)}
        r["speedup"] = round(r["tok_s"] / results[0]["tok_s"], 2) if results else 1.0
        results.append(r)
        print(f"{name:<44} {r['tok_s']:7.1f} tok/s  {r['speedup']:5.2f}x  same answers {r['same_as_baseline']:.0%}",
              flush=True)
    figures = {"prompts": a.prompts, "new_tokens": a.new_tokens, "threads": torch.get_num_threads(),
               "torch": torch.__version__, "avx512_bf16": "avx512_bf16" in cpu_flags(), "arms": results}
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
