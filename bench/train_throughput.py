"""Training throughput: tunelab vs TRL's SFTTrainer on the same model, data, LoRA config and tokens.

Arms, each in its own process (so peak memory is its own), one after the other on an otherwise idle machine:
  trl_default  TRL SFTTrainer with its defaults (on a CPU: bf16 autocast, gradient checkpointing, batch 8,
               rows padded per random batch, logits and loss over the whole sequence's vocabulary)
  trl_best     TRL tuned for speed here: no gradient checkpointing, bf16, length-grouped batches
  trl_padding_free  TRL tuned the other way: no gradient checkpointing, bf16, padding-free batches (correct
               here: transformers turns the packed position ids into a block-diagonal mask)
               The ratio "vs TRL best" is against the faster of these two.
  tunelab      tunelab's recipe with its defaults (this run is too short for `auto` to compile: eager layers)
  tunelab_compiled  the same with train.compile=true, a second run: the cold arm's inductor cache when that arm ran
                    just before, else the cache as the machine has it
  tunelab_compiled_cold  the same with an empty inductor cache (a first run on a machine: compilation included)
Optimisation settings that change the result rather than the speed are the same for all (learning rate and
schedule, epochs, batches of 8 rows as TRL's default, LoRA r16/alpha 32 on all linear layers), so that
validation loss after the same tokens compares like with like (tunelab's own `auto` batch size would take
fewer, larger steps).
Validation loss is computed the same way for every arm (fp32, mean cross-entropy over held-out reply tokens).

    python bench/train_throughput.py [--quick] [--json PATH] [--arms trl_default,trl_best,tunelab]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
LR, BATCH, EPOCHS, WARMUP = 5e-4, 8, 1, 0.03
LORA = {"r": 16, "alpha": 32, "dropout": 0.0}


# --- data ------------------------------------------------------------------------------------------

def _conversations(n_each: int, seed: int) -> list[dict[str, Any]]:
    """Half banking77 (short questions, the intent as the answer), half bitext customer support (long,
    long-tailed answers)."""
    rng = random.Random(seed)
    with (SHARED / "banking77" / "train.csv").open() as f:
        bank = [(r["text"], r["category"].replace("_", " ")) for r in csv.DictReader(f)]
    with (SHARED / "bitext-customer-support" / "Bitext_Sample_Customer_Support_Training_Dataset.csv").open() as f:
        support = [(r["instruction"], r["response"]) for r in csv.DictReader(f)]
    rows = rng.sample(bank, n_each) + rng.sample(support, n_each)
    rng.shuffle(rows)
    return [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in rows]


def prepare(work: Path, n_each: int, seed: int) -> dict[str, Any]:
    rows = _conversations(n_each, seed)
    n_val = max(8, len(rows) // 10)
    splits = {"train": rows[n_val:], "val": rows[:n_val]}
    for name, part in splits.items():
        (work / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    return {"train_rows": len(splits["train"]), "val_rows": n_val}


def _encoded(path: Path, tokenizer: Any) -> list[dict[str, list[int]]]:
    from tunelab.data.records import Record
    from tunelab.data.templates import encode_record

    out = []
    for i, line in enumerate(path.read_text().splitlines()):
        enc = encode_record(Record(f"{path}:{i + 1}", "chat", messages=json.loads(line)["messages"]), tokenizer)
        out.append({"input_ids": enc.input_ids, "labels": enc.labels})
    return out


# --- the common yardstick --------------------------------------------------------------------------

def validation_loss(adapter: Path, work: Path) -> float:
    """Mean cross-entropy over the reply tokens of the held-out rows, fp32, base + the arm's adapter."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tunelab.models.load import load_tokenizer, resolve
    from tunelab.training.collate import PadCollator
    from tunelab.training.trainer import causal_lm_loss

    base = resolve(None).path
    tok = load_tokenizer(base)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), str(adapter))
    model.eval()
    rows = _encoded(work / "val.jsonl", tok)
    collate = PadCollator(tok.pad_token_id)
    total, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(rows), 8):
            batch = collate(rows[i:i + 8])
            k = int((batch["labels"][:, 1:] != -100).sum())
            total += causal_lm_loss(model, batch, k, label_only=True).item() * k
            n += k
    return total / n


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- arms (each runs in a child process) -----------------------------------------------------------

def arm_trl(work: Path, variant: str) -> dict[str, Any]:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from tunelab.models.load import load_tokenizer, resolve

    base = resolve(None).path
    tok = load_tokenizer(base)
    rows = [json.loads(ln) for ln in (work / "train.jsonl").read_text().splitlines()]
    ds = Dataset.from_list([{"prompt": r["messages"][:1], "completion": r["messages"][1:]} for r in rows])
    kw: dict[str, Any] = {}
    if variant in ("best", "padding_free"):
        kw.update(gradient_checkpointing=False, bf16=True)
    if variant == "best":
        kw.update(train_sampling_strategy="group_by_length")
    if variant == "padding_free":
        kw.update(padding_free=True, max_length=None)  # rows here are all shorter than TRL's 1024 anyway
    args = SFTConfig(output_dir=str(work / f"trl-{variant}"), use_cpu=True, per_device_train_batch_size=BATCH,
                     learning_rate=LR, lr_scheduler_type="cosine", warmup_steps=WARMUP, num_train_epochs=EPOCHS,
                     save_strategy="no", report_to="none", disable_tqdm=True, seed=42, **kw)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                      target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=peft)
    tokens = sum(len(r["input_ids"]) for r in trainer.train_dataset)
    t0 = time.perf_counter()
    out = trainer.train()
    seconds = time.perf_counter() - t0
    rss = _peak_rss_mib()
    trainer.model.save_pretrained(str(work / f"trl-{variant}" / "adapter"))
    return {"tokens": tokens, "seconds": seconds, "train_loss": out.training_loss, "peak_rss_mib": rss,
            "steps": trainer.state.global_step, "val_loss": validation_loss(work / f"trl-{variant}" / "adapter", work),
            "settings": {k: str(v) for k, v in kw.items()} | {"bf16": args.bf16,
                                                               "gradient_checkpointing": args.gradient_checkpointing}}


def arm_tunelab(work: Path, extra: list[str]) -> dict[str, Any]:
    from rich.console import Console

    from tunelab.config import load_config
    from tunelab.recipes.dispatch import run

    cfg = load_config(None, [
        "name=throughput", f"output_dir={work / 'tunelab-runs'}", f"data.train={work / 'train.jsonl'}",
        "data.val_fraction=0", f"train.learning_rate={LR}", f"train.epochs={EPOCHS}", f"train.batch_size={BATCH}",
        f"train.warmup_ratio={WARMUP}", "train.lr_scheduler=cosine", f"peft.r={LORA['r']}",
        f"peft.alpha={LORA['alpha']}", f"peft.dropout={LORA['dropout']}", "model.max_length=1024",
        "eval.probes.enabled=false",
        "eval.compare_base=false", *extra])
    result = run(cfg, console=Console(stderr=True, quiet=True))
    s = result.summary
    return {"tokens": s["tokens_seen"], "seconds": s["train_seconds"], "train_loss": s["train_loss"],
            "peak_rss_mib": _peak_rss_mib(), "steps": s["steps"], "precision": s["precision"],
            "val_loss": validation_loss(result.run_dir / "adapter", work),
            "settings": {"overrides": extra, "precision": s["precision"]}}


def child(arm: str, work: Path, out: Path, extra: list[str]) -> None:
    torch.manual_seed(0)
    compiled = ["train.compile=true"] if arm.startswith("tunelab_compiled") else []
    res = arm_tunelab(work, extra + compiled) if arm.startswith("tunelab") else arm_trl(work, arm.removeprefix("trl_"))
    out.write_text(json.dumps(res))


# --- the parent: machine peak, arms, ratios --------------------------------------------------------

def model_flops_per_token(work: Path) -> dict[str, float]:
    """FLOPs each real token needs in LoRA training: forward and input-gradient matmuls of the decoder's
    linear layers (4 x their weights; frozen weights need no weight gradient), attention over each row's own
    context, and the LM head where a token carries a label. `conventional_6n` is the 6 x parameters rule that
    counts weight gradients too (what full fine-tuning needs), for comparison with published MFU figures."""
    from transformers import AutoConfig

    from tunelab.models.load import load_tokenizer, resolve

    base = resolve(None).path
    c = AutoConfig.from_pretrained(base)
    h, L, inter = c.hidden_size, c.num_hidden_layers, c.intermediate_size
    kv = c.num_key_value_heads * (h // c.num_attention_heads)
    linear = L * (2 * h * h + 2 * h * kv + 3 * h * inter)
    rows = _encoded(work / "train.jsonl", load_tokenizer(base))
    tokens = sum(len(r["input_ids"]) for r in rows)
    labels = sum(sum(x != -100 for x in r["labels"][1:]) for r in rows)
    attention = sum(6 * h * L * len(r["input_ids"]) ** 2 for r in rows) / tokens  # fwd + bwd, causal
    head = 4 * c.vocab_size * h * labels / tokens
    n_params = linear + c.vocab_size * h  # tied embeddings: one copy
    return {"lora_required": 4 * linear + attention + head, "conventional_6n": 6 * n_params + attention,
            "tokens": tokens, "label_tokens": labels}


def machine() -> dict[str, Any]:
    from tunelab.device import cpu_flags

    model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("model name")), platform.machine())
    return {"cpu": model, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "avx512_bf16": "avx512_bf16" in cpu_flags(), "amx": "amx_bf16" in cpu_flags(),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="32 + 32 rows: a few minutes")
    ap.add_argument("--rows", type=int, default=96, help="rows from each source (banking77, customer support)")
    ap.add_argument("--arms", default="trl_default,trl_best,trl_padding_free,tunelab,tunelab_compiled_cold,"
                    "tunelab_compiled")
    ap.add_argument("--tunelab-extra", default="", help="extra tunelab overrides for the tunelab arm, ';'-separated")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--work", type=Path, help="reuse a work directory: its data and the arms measured there")
    ap.add_argument("--child", nargs=3, metavar=("ARM", "WORK", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    extra = [x for x in a.tunelab_extra.split(";") if x]
    if a.child:
        child(a.child[0], Path(a.child[1]), Path(a.child[2]), extra)
        return

    from tunelab.device import measure_matmul_gflops

    n_each = 32 if a.quick else a.rows
    work = a.work or Path(tempfile.mkdtemp(prefix="tunelab-throughput-"))
    if a.work and (work / "data.json").exists():
        data = json.loads((work / "data.json").read_text())
    else:
        work.mkdir(parents=True, exist_ok=True)
        data = prepare(work, n_each, seed=0)
        (work / "data.json").write_text(json.dumps(data))
    flops = model_flops_per_token(work)
    print(f"{data['train_rows']} training rows ({flops['tokens']:,} tokens, {flops['label_tokens']:,} with a label), "
          f"{data['val_rows']} validation rows; work dir {work}", flush=True)
    peak = {"fp32": measure_matmul_gflops(False), "bf16": measure_matmul_gflops(True)}
    print(f"matmul peak: fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} GFLOP/s", flush=True)
    results: dict[str, Any] = {}
    cold_cache = None
    for arm in a.arms.split(","):
        out = work / f"{arm}.json"
        t0 = time.perf_counter()
        cmd = [sys.executable, __file__, "--child", arm, str(work), str(out)]
        if a.tunelab_extra:
            cmd += ["--tunelab-extra", a.tunelab_extra]
        env = dict(os.environ)
        if arm.endswith("_cold") and not out.exists():
            env["TORCHINDUCTOR_CACHE_DIR"] = cold_cache = tempfile.mkdtemp(prefix="inductor-cold-")
        elif arm == "tunelab_compiled" and cold_cache:  # the same machine's second run
            env["TORCHINDUCTOR_CACHE_DIR"] = cold_cache
        if not out.exists():
            proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
            if proc.returncode:  # one arm failing must not lose the others' figures
                print(f"{arm}: failed\n{proc.stderr[-2000:]}", flush=True)
                results[arm] = {"failed": proc.stderr[-2000:]}
                continue
        r = json.loads(out.read_text())
        r["tok_s"] = r["tokens"] / r["seconds"]
        results[arm] = r
        print(f"{arm:<16} {r['tok_s']:7.1f} tok/s  {r['seconds']:7.1f} s  peak RSS {r['peak_rss_mib']:6.0f} MiB  "
              f"train loss {r['train_loss']:.4f}  val loss {r['val_loss']:.4f}  "
              f"(wall {time.perf_counter() - t0:.0f} s)", flush=True)
    figures = summarise(results, peak, flops) | {"machine": machine(), "data": data | {"tokens": flops["tokens"]},
                                                   "arms": results, "quick": a.quick,
                                                   "settings": {"lr": LR, "batch": BATCH, "epochs": EPOCHS,
                                                                "warmup_ratio": WARMUP, "lora": LORA}}
    for k, v in figures.items():
        if not isinstance(v, dict):
            print(f"{k}: {v}")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"wrote {a.json}")


def summarise(results: dict[str, Any], peak: dict[str, float], flops: dict[str, float]) -> dict[str, Any]:
    out: dict[str, Any] = {"peak_gflops_fp32": round(peak["fp32"], 1), "peak_gflops_bf16": round(peak["bf16"], 1)}
    ok = {k: v for k, v in results.items() if "failed" not in v}
    d = ok.get("trl_default")
    tuned = [k for k in ("trl_best", "trl_padding_free") if k in ok]  # TRL's best: the fastest tuned setting
    best_arm = max(tuned, key=lambda k: ok[k]["tok_s"]) if tuned else None
    b = ok.get(best_arm) if best_arm else None
    if best_arm:
        out["trl_best_arm"] = best_arm
    for name, r in (("trl_default", d), ("trl_best", b)):  # trl_best: the fastest of the two
        if r:
            out[f"{name}_tok_s"] = round(r["tok_s"], 1)
    for arm in ("tunelab", "tunelab_compiled", "tunelab_compiled_cold"):
        t, p = ok.get(arm), "" if arm == "tunelab" else arm.removeprefix("tunelab_") + "_"
        if not t:
            continue
        out[f"{arm}_tok_s"] = round(t["tok_s"], 1)
        if d:
            out[f"{p}ratio_vs_trl_default"] = round(t["tok_s"] / d["tok_s"], 2)
            out[f"{p}peak_rss_ratio_vs_trl_default"] = round(t["peak_rss_mib"] / d["peak_rss_mib"], 2)
            out[f"{p}val_loss_rel_diff_vs_trl_default"] = round((t["val_loss"] - d["val_loss"]) / d["val_loss"], 4)
        if b:
            out[f"{p}ratio_vs_trl_best"] = round(t["tok_s"] / b["tok_s"], 2)
            out[f"{p}val_loss_rel_diff_vs_trl_best"] = round((t["val_loss"] - b["val_loss"]) / b["val_loss"], 4)
        achieved = t["tok_s"] * flops["lora_required"] / 1e9
        out[f"{p}tunelab_gflops"] = round(achieved, 1)
        out[f"{p}mfu_bf16"] = round(achieved / peak["bf16"], 3)
        out[f"{p}mfu_fp32"] = round(achieved / peak["fp32"], 3)
        out[f"{p}mfu_bf16_conventional_6n"] = round(t["tok_s"] * flops["conventional_6n"] / 1e9 / peak["bf16"], 3)
    return out


if __name__ == "__main__":
    main()
