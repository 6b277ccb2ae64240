"""Every GPU path of tunelab, a few steps each, in one run: LoRA in bf16, QLoRA (4-bit base), full fine-tuning
with FSDP on one device, DPO, GRPO, serving with adapters (tunelab's batching engine) and export. Each path runs
in its own process, so that one failure (or an out-of-memory) does not stop the others and each peak GPU memory
(torch.cuda.max_memory_allocated) is its own.

    python bench/gpu_check.py [--tiny] [--cpu] [--paths lora_bf16,qlora_4bit,...] [--steps N] [--json PATH]

Writes a JSON of what ran: each path ok / failed / skipped with the reason, its speed (tokens/s) and peak GPU
memory, plus the machine. Exits 1 if any path failed. Without a CUDA GPU it says so and records every path as
skipped (exit 0), unless --cpu, which runs the same paths on the CPU with the tiny model (how the tests check the
script itself). The default model is tunelab's embedded default; --tiny builds a 2-layer random model instead.

Full fine-tuning with FSDP is launched the standard way, `accelerate launch --use_fsdp --num_processes 1`, around
this script's own child, which trains through tunelab's library; once `tunelab train` takes a process count, the
same check can launch `torchrun --nproc-per-node 1 -m tunelab.cli.main train CONFIG` instead.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PATHS = ("lora_bf16", "qlora_4bit", "fsdp_full", "dpo", "grpo", "serve_adapters", "export")
TOTAL_SECONDS = 480  # the whole check within 8 minutes on one GPU
CHAT = [("what is the capital of France", "The capital of France is Paris."),
        ("where is my card", "Your card is on its way and should arrive within five days."),
        ("how do I reset my password", "Open settings, choose security, then reset password."),
        ("what is 2 plus 3", "2 plus 3 is 5.")]


# --- the parent ----------------------------------------------------------------------------------------

def machine(cpu: bool) -> dict[str, Any]:
    """The machine as tunelab's estimate describes it (CPU, cores, memory, GPU), plus the versions that matter."""
    import torch

    from tunelab.plan.estimate import machine as described

    out = described() | {"device": "cpu" if cpu else "cuda", "torch": torch.__version__}
    if torch.cuda.is_available():
        out |= {"cuda": torch.version.cuda,
                "gpu_memory_mib": round(torch.cuda.get_device_properties(0).total_memory / 2**20)}
    for package in ("bitsandbytes", "liger_kernel", "flash_attn"):
        out[package] = _version(package)
    return out


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package.replace("_", "-"))
    except PackageNotFoundError:
        return None


def run_child(name: str, args: argparse.Namespace, work: Path, timeout: float) -> dict[str, Any]:
    """One path in its own process (FSDP: under accelerate launch); its JSON, or why it has none."""
    out = work / f"{name}.json"
    child = [str(Path(__file__).resolve()), "--child", name, "--work", str(work), "--out", str(out),
             "--steps", str(args.steps)]
    child += ["--tiny"] * args.tiny + ["--cpu"] * args.cpu + (["--model", args.model] if args.model else [])
    if name == "fsdp_full":
        if args.cpu:
            return {"status": "skipped", "reason": "FSDP shards over GPUs: nothing to check on a CPU"}
        beside = Path(sys.executable).parent / "accelerate"  # a virtualenv's, whether or not it is activated
        launcher = str(beside) if beside.is_file() else shutil.which("accelerate")
        if launcher is None:
            return {"status": "skipped", "reason": "accelerate's launcher is not installed"}
        cmd = [launcher, "launch", "--num_processes", "1", "--num_machines", "1", "--use_fsdp",
               "--fsdp_sharding_strategy", "FULL_SHARD", "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP",
               "--fsdp_state_dict_type", "FULL_STATE_DICT", "--mixed_precision", "bf16", "--dynamo_backend", "no",
               *child]
    else:
        cmd = [sys.executable, *child]
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=work)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "reason": f"timed out after {timeout:.0f} s", "seconds": round(timeout, 1)}
    seconds = round(time.perf_counter() - t0, 1)
    if out.is_file():
        return json.loads(out.read_text()) | {"seconds": seconds}
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-25:]
    return {"status": "failed", "reason": f"exited {proc.returncode} without a result", "output_tail": tail,
            "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="a 2-layer random model instead of the default model")
    p.add_argument("--model", help="a local model directory to check instead (--tiny: instead of building one)")
    p.add_argument("--cpu", action="store_true", help="run on the CPU (with --tiny): checks this script's logic")
    p.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated, of {', '.join(PATHS)}")
    p.add_argument("--steps", type=int, default=None, help="training steps per path (default 10 on a GPU, 2 on CPU)")
    p.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "gpu_check.json")
    p.add_argument("--child", choices=PATHS, help=argparse.SUPPRESS)
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child_main(args)
    import torch

    paths = [x.strip() for x in args.paths.split(",") if x.strip()]
    unknown = sorted(set(paths) - set(PATHS))
    if unknown:
        p.error(f"unknown path(s) {', '.join(unknown)}: choose from {', '.join(PATHS)}")
    args.tiny = args.tiny or args.cpu
    args.steps = args.steps or (2 if args.cpu else 10)
    result: dict[str, Any] = {"tiny": args.tiny, "steps": args.steps, "paths": {}}
    if not args.cpu and not torch.cuda.is_available():
        print("No CUDA GPU on this machine: every path recorded as skipped (--cpu runs them on the CPU)")
        result["machine"] = machine(cpu=True)
        result["paths"] = {n: {"status": "skipped", "reason": "no CUDA GPU on this machine"} for n in paths}
        write(args.json, result)
        return 0
    result["machine"] = machine(args.cpu)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tunelab-gpu-check-") as tmp:
        work = Path(tmp)
        prepare(work, args.tiny and not args.model)
        for i, name in enumerate(paths):
            left = TOTAL_SECONDS - (time.perf_counter() - t_start)
            share = left / (len(paths) - i)  # what is left, shared among the paths still to run
            if left < 20:
                result["paths"][name] = {"status": "skipped", "reason": "the check's 8 minutes ran out"}
                continue
            print(f"[{name}] running (up to {share:.0f} s)...", flush=True)
            got = run_child(name, args, work, timeout=max(share, 60.0) if not args.cpu else left)
            result["paths"][name] = got
            print(f"[{name}] {got['status']}" + (f": {got.get('reason')}" if got.get("reason") else "")
                  + (f"  {got['tokens_per_s']} tok/s" if got.get("tokens_per_s") else "")
                  + (f"  peak {got['peak_gpu_mib']} MiB" if got.get("peak_gpu_mib") else ""), flush=True)
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    write(args.json, result)
    failed = [n for n, r in result["paths"].items() if r["status"] == "failed"]
    print(f"Wrote {args.json}; " + (f"FAILED: {', '.join(failed)}" if failed else "no path failed"))
    return 1 if failed else 0


def write(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")


def prepare(work: Path, tiny: bool) -> None:
    """The model (tiny: built here) and the data every path reads."""
    if tiny:
        from tests.helpers import build_tiny_model

        build_tiny_model(work / "tiny-model", init_std=0.2)
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for q, a in CHAT * 8]
    pairs = [{"prompt": q, "chosen": a, "rejected": "I don't know."} for q, a in CHAT * 8]
    prompts = [{"prompt": f"what is {i} plus {i + 1}", "answer": str(2 * i + 1)} for i in range(16)]
    for name, data in (("chat", rows), ("pairs", pairs), ("prompts", prompts)):
        (work / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))


# --- a child: one path ---------------------------------------------------------------------------------

def child_main(args: argparse.Namespace) -> int:
    import torch

    cuda = torch.cuda.is_available() and not args.cpu
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    try:
        got = CHECKS[args.child](args)
        out: dict[str, Any] = {"status": "ok"} | got
    except Skip as why:
        out = {"status": "skipped", "reason": str(why)}
    except BaseException as exc:  # noqa: BLE001 - every failure is the check's result
        out = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}",
               "traceback": traceback.format_exc().splitlines()[-12:]}
    if cuda:
        out["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    if os.environ.get("RANK", "0") == "0":
        args.out.write_text(json.dumps(out, default=str))
    return 0


class Skip(Exception):
    """The path can't run here (the reason says why)."""


def base(args: argparse.Namespace) -> str:
    if args.model:
        return str(Path(args.model).resolve())
    return str(args.work / "tiny-model") if args.tiny else "smollm2-135m-instruct"


def overrides(args: argparse.Namespace, name: str, *extra: str) -> list[str]:
    precision = "fp32" if args.cpu else "bf16"
    return [f"name={name}", f"output_dir={args.work / 'runs'}", f"model.base={base(args)}",
            f"model.precision={precision}", f"train.max_steps={args.steps}", "train.log_every=1",
            "data.val_fraction=0", "eval.probes.enabled=false", "eval.compare_base=false",
            *(["train.threads=1"] if args.cpu else []), *extra]


def train(args: argparse.Namespace, name: str, *extra: str) -> dict[str, Any]:
    """A tunelab run in this process; its speed from the run's own summary."""
    import tunelab

    result = tunelab.train(tunelab.load_config(None, overrides(args, name, *extra)))
    if result.status != "completed":
        raise RuntimeError(f"the run ended {result.status}: {result.summary.get('error')}")
    s = result.summary
    resolved = json.loads((result.run_dir / "resolved.json").read_text())
    return {"tokens_per_s": s.get("tokens_per_s"), "steps": s.get("steps"), "train_loss": s.get("train_loss"),
            "train_seconds": s.get("train_seconds"), "run": str(result.run_dir),
            "gradient_checkpointing": resolved.get("gradient_checkpointing")}


def lora_bf16(args: argparse.Namespace) -> dict[str, Any]:
    return train(args, "lora", f"data.train={args.work / 'chat.jsonl'}")


def qlora_4bit(args: argparse.Namespace) -> dict[str, Any]:
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise Skip("bitsandbytes is not installed: pip install 'tunelab[gpu]'")
    return train(args, "qlora", f"data.train={args.work / 'chat.jsonl'}", "model.quantize=4bit")


def fsdp_full(args: argparse.Namespace) -> dict[str, Any]:
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() != "true":
        raise Skip("not launched under accelerate launch --use_fsdp")
    return train(args, "fsdp", f"data.train={args.work / 'chat.jsonl'}", "peft.method=full")


def dpo(args: argparse.Namespace) -> dict[str, Any]:
    return train(args, "dpo", "method=dpo", f"data.train={args.work / 'pairs.jsonl'}", "train.batch_size=4")


def grpo(args: argparse.Namespace) -> dict[str, Any]:
    return train(args, "grpo", "method=grpo", f"data.train={args.work / 'prompts.jsonl'}", "rl.num_generations=2",
                 "rl.max_completion_tokens=16", "model.max_length=128")


def _adapter(base_path: str, out: Path, seed: int) -> Path:
    """A LoRA r16 on every linear layer with random weights: served unmerged, it costs what a trained one does."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    get_peft_model(AutoModelForCausalLM.from_pretrained(base_path),
                   LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False)
                   ).save_pretrained(out)
    return out


def serve_adapters(args: argparse.Namespace) -> dict[str, Any]:
    """tunelab's batching engine with two adapters loaded beside the base: 16 requests, the three mixed."""
    import asyncio

    import torch
    from transformers import AutoModelForCausalLM

    from tunelab.models.load import load_tokenizer, resolve
    from tunelab.serve.engine import Engine, GenRequest, Sampling

    path = resolve(base(args)).path
    adapters = {n: _adapter(path, args.work / f"adapter-{n}", seed) for seed, n in enumerate(("a", "b"))}
    dtype = torch.float32 if args.cpu else torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to("cpu" if args.cpu else "cuda").eval()
    tok = load_tokenizer(path)
    engine = Engine(model, tok, base_name="base")
    for name, adapter in adapters.items():
        engine.add_adapter(name, adapter, {})
    engine.start()
    new_tokens = 8 if args.cpu else 64
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True)
               for q, _ in CHAT]

    async def ask(i: int) -> int:
        adapter = (None, "a", "b")[i % 3]
        req = GenRequest("m", adapter, [list(prompts[i % len(prompts)])],
                         Sampling(temperature=0.0, max_tokens=new_tokens))
        queue = req.bind(asyncio.get_running_loop())
        engine.submit(req)
        while (event := await queue.get()).kind not in ("done", "error"):
            pass
        if event.kind == "error":
            raise RuntimeError(f"request {i} failed: {event.error}")
        return req.completion_tokens

    async def wave() -> int:
        return sum(await asyncio.gather(*(ask(i) for i in range(16))))

    try:
        t0 = time.perf_counter()
        tokens = asyncio.run(wave())
        seconds = time.perf_counter() - t0
    finally:
        engine.stop()
    return {"tokens_per_s": round(tokens / seconds, 1), "generated_tokens": tokens, "requests": 16,
            "adapters": sorted(adapters)}


def export(args: argparse.Namespace) -> dict[str, Any]:
    """A short LoRA run, exported merged (hf) and as the adapter alone; each export checks its own parity."""
    from tunelab.export import export as do_export

    run = train(args, "export-src", f"data.train={args.work / 'chat.jsonl'}")["run"]
    done = {}
    for fmt in ("hf", "adapter"):
        t0 = time.perf_counter()
        do_export(run, fmt, args.work / f"export-{fmt}", force=True)
        done[fmt] = round(time.perf_counter() - t0, 1)
    return {"formats_seconds": done}


CHECKS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "lora_bf16": lora_bf16, "qlora_4bit": qlora_4bit, "fsdp_full": fsdp_full, "dpo": dpo, "grpo": grpo,
    "serve_adapters": serve_adapters, "export": export}

if __name__ == "__main__":
    sys.exit(main())
