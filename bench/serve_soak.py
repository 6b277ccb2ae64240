"""Load and soak: `tunelab serve` (a real server process, on the loopback) with a base model and two LoRA adapters,
driven by N concurrent streaming clients for M minutes by a bounded asyncio driver (httpx, which the openai
client is built on: one connection per client, the server-sent events parsed by hand so the driver costs the
2 cores little).

    python bench/serve_soak.py [--clients 64] [--minutes 10] [--real] [--disconnect 0.1] [--max-tokens 32]
                               [--max-batch 16] [--max-queue 64] [--json PATH]

The model: a tiny random llama built here (2 layers, hidden 64; its greedy answers differ by prompt) with two
random LoRA adapters, so that on 2 CPU cores the server's own machinery (HTTP, streaming, batching of mixed
adapters, the request log, memory) is what gets soaked, at hundreds of requests a minute; `--real` serves the
embedded default model (SmolLM2-135M-Instruct) with two random LoRA r16 adapters instead, at real-model speed.

What is checked (bench/results/serve_soak.json, the summary printed):
- errors: none but 429 (the queue full), each a complete answer or a client's own disconnect;
- answers: every greedy (temperature 0) answer equals the one a single client got for the same prompt and model
  before the soak (the references);
- latency and time to first token (TTFT), p50/p95/p99, of the complete answers, as a client sees them;
- memory: the server's RSS sampled every second; its growth from just after the warm-up to the end < 5%;
- disconnects: a share of the clients close the connection after their first text; each is freed within a
  second: the time until the server saw the disconnect (its request log: when the row was recorded, against
  when the client closed) plus the time the engine took to drop the rows (the server's histogram
  tunelab_cancelled_release_seconds, counted to its bucket's upper bound).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.helpers: the tiny model
from quality_common import machine  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "serve_soak.json"
MODELS = ("base", "alpha", "beta")
TINY_PROMPTS = ["where is my card", "hello", "how do I reset my password", "the capital of France", "top up",
                "my card was stolen", "exchange rate", "hello world", "card arrival", "quick brown fox", "lazy dog",
                "reset it", "Italy is Rome", "tiny tokenizer", "you are a helpful assistant", "0123456789",
                "my card has not arrived yet where is it", "help", "the quick brown fox jumps over the lazy dog",
                "card", "password please help", "what is the exchange rate for a top up", "stolen", "tests"]
REAL_PROMPTS = ["Where is my card?", "How do I reset my password?", "What is the capital of France?",
                "My card was stolen, what should I do?", "What is the exchange rate for euros?",
                "How long does a transfer take?", "Can I cancel my order?", "I was charged twice.",
                "How do I change my address?", "Why was my payment declined?", "Hi!",
                "Tell me a short joke.", "How do I close my account?", "Is there a fee for top ups?",
                "What are your opening hours?", "I forgot my PIN.", "Can I get a refund?",
                "How do I contact support?", "Summarise: the card arrived late and damaged.", "Thank you!",
                "Where can I see my statements?", "How do I add a payee?", "My app keeps crashing.",
                "Explain compound interest in one sentence."]


# --- the models --------------------------------------------------------------------------------------------------

def make_models(work: Path, real: bool) -> tuple[str, dict[str, Path]]:
    """The base model reference and two random LoRA adapters on it (each answers its own way)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    if real:
        from tunelab.models.load import resolve
        from tunelab.models.registry import DEFAULT_MODEL

        base, path, r = DEFAULT_MODEL, resolve(DEFAULT_MODEL).path, 16
    else:
        from tests.helpers import build_tiny_model

        path = str(build_tiny_model(work / "tiny", init_std=0.2))
        base, r = path, 4
    adapters = {}
    for seed, name in enumerate(MODELS[1:], start=1):
        torch.manual_seed(seed)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(path),
                               LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear",
                                          init_lora_weights=False))
        if real:  # random B at full scale would drown the model: a small perturbation still changes the answers
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if "lora_B" in n:
                        p.mul_(0.05)
        model.save_pretrained(work / name)
        adapters[name] = work / name
    return base, adapters


class Server:
    """`tunelab serve` as a user starts it, on a free loopback port."""

    def __init__(self, work: Path, base: str, adapters: dict[str, Path], a: argparse.Namespace) -> None:
        from tests.helpers import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data = work / "serve"
        self.log = (work / "server.log").open("w")
        cmd = [sys.executable, "-m", "tunelab.cli.main", "serve", "--model", base, "--name", "base",
               "--port", str(self.port), "--data", str(self.data), "--no-jobs", "--max-batch", str(a.max_batch),
               "--max-queue", str(a.max_queue)]
        for name, path in adapters.items():
            cmd += ["--adapter", f"{name}={path}"]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=os.environ | {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})

    def __enter__(self) -> Server:
        deadline = time.time() + 300
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tunelab serve exited: {Path(self.log.name).read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2):
                    return self
            except OSError:
                time.sleep(0.3)
        raise RuntimeError("tunelab serve did not come up in 300 s")

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()

    def rss(self) -> int | None:
        try:
            import psutil

            return int(psutil.Process(self.proc.pid).memory_info().rss)
        except ImportError:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except Exception:  # the process is gone
            return None
        return None

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(self.url + "/metrics", timeout=30) as r:
            text = r.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out


# --- the clients -------------------------------------------------------------------------------------------------

class Tally:
    def __init__(self) -> None:
        self.latency: list[float] = []
        self.ttft: list[float] = []
        self.complete = self.rate_limited = self.mismatches = 0
        self.errors: dict[str, int] = {}
        self.error_examples: list[str] = []
        self.mismatch_examples: list[dict[str, str]] = []
        self.disconnects: list[tuple[str, float]] = []  # (request id, when the client closed)

    def error(self, kind: str, detail: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        if len(self.error_examples) < 10:
            self.error_examples.append(f"{kind}: {detail[:300]}")


async def one(client: Any, url: str, model: str, prompt: str, max_tokens: int, leave: bool,
              tally: Tally | None) -> str | None:
    """One streamed greedy chat request; its text (None when it failed, was refused or left on purpose)."""
    import httpx2 as httpx

    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True}
    t0 = time.perf_counter()
    first: float | None = None
    parts: list[str] = []
    try:
        async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
            if r.status_code == 429:
                if tally is not None:
                    tally.rate_limited += 1
                await r.aread()
                await asyncio.sleep(min(2.0, float(r.headers.get("retry-after", "1"))))
                return None
            if r.status_code != 200:
                if tally is not None:
                    tally.error(f"http {r.status_code}", (await r.aread()).decode(errors="replace"))
                return None
            done = False
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                    break
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    if tally is not None:
                        tally.error("error event", json.dumps(chunk["error"]))
                    return None
                text = "".join(c["delta"].get("content") or "" for c in chunk.get("choices", []))
                if text:
                    first = first or time.perf_counter()
                    parts.append(text)
                    if leave:  # close the connection mid-answer: the server must free the slot
                        if tally is not None:
                            tally.disconnects.append((chunk["id"], time.time()))
                        return None
            if not done:
                if tally is not None:
                    tally.error("stream cut", f"{model} {prompt!r}: no [DONE]")
                return None
    except httpx.HTTPError as exc:
        if tally is not None:
            tally.error(type(exc).__name__, str(exc))
        return None
    end = time.perf_counter()
    answer = "".join(parts)
    if tally is not None:
        tally.complete += 1
        tally.latency.append(end - t0)
        tally.ttft.append((first or end) - t0)
    return answer


async def references(url: str, jobs: list[tuple[str, str]], max_tokens: int) -> dict[tuple[str, str], str]:
    """Each (model, prompt)'s greedy answer with one client, one request at a time."""
    import httpx2 as httpx

    out = {}
    async with httpx.AsyncClient(timeout=600) as client:
        for model, prompt in jobs:
            answer = await one(client, url, model, prompt, max_tokens, False, None)
            if answer is None:
                raise RuntimeError(f"no reference answer for {model} {prompt!r}")
            out[(model, prompt)] = answer
    return out


async def soak(url: str, refs: dict[tuple[str, str], str], a: argparse.Namespace, tally: Tally,
               deadline: float) -> None:
    import httpx2 as httpx

    jobs = list(refs)

    async def client_loop(k: int) -> None:
        rng = random.Random(k)
        i = k
        async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=1)) as client:
            while time.time() < deadline:
                model, prompt = jobs[i % len(jobs)]
                i += a.clients
                leave = rng.random() < a.disconnect
                answer = await one(client, url, model, prompt, a.max_tokens, leave, tally)
                if answer is None:
                    continue
                if answer != refs[(model, prompt)]:
                    tally.mismatches += 1
                    if len(tally.mismatch_examples) < 10:
                        tally.mismatch_examples.append({"model": model, "prompt": prompt,
                                                        "alone": refs[(model, prompt)], "under_load": answer})

    await asyncio.gather(*(client_loop(k) for k in range(a.clients)))


# --- figures -----------------------------------------------------------------------------------------------------

def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(p * len(v)))]


def percentiles(values: list[float]) -> dict[str, float | None]:
    return {f"p{int(p * 100)}": (round(x, 4) if (x := pct(values, p)) is not None else None)
            for p in (0.5, 0.95, 0.99)}


def disconnect_figures(db: Path, left: list[tuple[str, float]], before: dict[str, float],
                       after: dict[str, float]) -> dict[str, Any]:
    """When the server saw each disconnect (its request-log row: created + latency) against when the client closed;
    and how long the engine took to drop the rows after that (its histogram, counted to the bucket's upper bound)."""
    con = sqlite3.connect(db, timeout=60)
    try:
        rows = {r[0]: r[1:] for r in con.execute("select id, created, latency_ms, status from requests "
                                                 "where status = 499")}
    finally:
        con.close()
    seen = [max(0.0, created + latency_ms / 1000 - closed) for rid, closed in left
            if (row := rows.get(rid)) is not None and (created := row[0]) is not None and
            (latency_ms := row[1]) is not None]
    name = "tunelab_cancelled_release_seconds_bucket"
    buckets = sorted((float(k.split('le="')[1].split('"')[0]), after[k] - before.get(k, 0.0))
                     for k in after if k.startswith(name) and 'le="+Inf"' not in k)
    count = after.get("tunelab_cancelled_release_seconds_count", 0) - before.get(
        "tunelab_cancelled_release_seconds_count", 0)
    total = after.get("tunelab_cancelled_release_seconds_sum", 0) - before.get(
        "tunelab_cancelled_release_seconds_sum", 0)
    worst = next((le for le, n in buckets if n >= count), float("inf")) if count else 0.0
    worst_seen = max(seen) if seen else None
    return {"clients_left": len(left), "logged_499": len(seen),
            "seen_after_close_s": percentiles(seen) | {"max": round(worst_seen, 4) if worst_seen is not None else None},
            "released": int(count), "release_mean_s": round(total / count, 4) if count else None,
            "release_at_most_s": worst, "release_buckets": {f"le {le:g} s": int(n) for le, n in buckets},
            "freed_within_s": round((worst_seen or 0.0) + worst, 4) if seen else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--real", action="store_true", help="the embedded default model instead of the tiny one")
    ap.add_argument("--disconnect", type=float, default=0.1, help="share of requests whose client leaves "
                    "after the first text")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--max-batch", type=int, default=16, help="the server's --max-batch")
    ap.add_argument("--max-queue", type=int, default=64, help="the server's --max-queue")
    ap.add_argument("--prompts", type=int, default=24, help="distinct prompts (each asked of 3 models)")
    ap.add_argument("--warmup", type=float, default=None, help="seconds before the memory baseline (default: "
                    "a tenth of the soak, 15 to 60 s)")
    ap.add_argument("--json", type=Path, default=RESULTS)
    a = ap.parse_args()
    duration = a.minutes * 60
    warmup = a.warmup if a.warmup is not None else min(60.0, max(15.0, duration / 10))
    prompts = (REAL_PROMPTS if a.real else TINY_PROMPTS)[: a.prompts]
    jobs = [(m, p) for p in prompts for m in MODELS]

    with tempfile.TemporaryDirectory(prefix="tunelab-soak-") as tmp:
        work = Path(tmp)
        base, adapters = make_models(work, a.real)
        with Server(work, base, adapters, a) as server:
            t = time.perf_counter()
            refs = asyncio.run(references(server.url, jobs, a.max_tokens))
            ref_s = time.perf_counter() - t
            print(f"{len(refs)} reference answers with one client in {ref_s:.1f} s; soaking {a.clients} clients "
                  f"for {a.minutes:g} min", flush=True)
            before = server.metrics()
            samples: list[tuple[float, int]] = []
            stop = threading.Event()
            start = time.time()

            def sample() -> None:
                while not stop.is_set():
                    rss = server.rss()
                    if rss is not None:
                        samples.append((time.time() - start, rss))
                    stop.wait(1.0)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            tally = Tally()
            deadline = start + duration

            async def run() -> None:
                task = asyncio.ensure_future(soak(server.url, refs, a, tally, deadline))
                while not task.done():
                    await asyncio.wait({task}, timeout=30)
                    if not task.done():
                        rss = samples[-1][1] / 2**20 if samples else 0
                        print(f"  {time.time() - start:5.0f} s: {tally.complete} answers, {tally.rate_limited} x 429, "
                              f"{sum(tally.errors.values())} errors, {tally.mismatches} mismatches, "
                              f"{len(tally.disconnects)} left; RSS {rss:.0f} MiB", flush=True)
                await task

            asyncio.run(run())
            wall = time.time() - start
            time.sleep(1.5)  # the last disconnects reach the request log
            stop.set()
            sampler.join()
            after = server.metrics()
            alive = server.proc.poll() is None
            with urllib.request.urlopen(server.url + "/health", timeout=10) as r:
                healthy = r.status == 200
            left = disconnect_figures(server.data / "tunelab-serve.db", tally.disconnects, before, after)

    tokens = sum(v for k, v in after.items() if k.startswith("tunelab_completion_tokens_total")) - sum(
        v for k, v in before.items() if k.startswith("tunelab_completion_tokens_total"))
    statuses: dict[str, int] = {}  # over every model and endpoint
    for k, v in after.items():
        if k.startswith("tunelab_requests_total") and v - before.get(k, 0):
            status = k.split('status="')[1].split('"')[0]
            statuses[status] = statuses.get(status, 0) + int(v - before.get(k, 0))
    base_window = [r for t_, r in samples if warmup <= t_ < warmup + 10] or [samples[0][1]]
    end_window = [r for t_, r in samples if t_ >= samples[-1][0] - 10]
    rss_base, rss_end = statistics.median(base_window), statistics.median(end_window)
    growth = (rss_end - rss_base) / rss_base
    step = max(1, len(samples) // 300)
    other_errors = sum(tally.errors.values())
    checks = {
        "no_error_but_429": other_errors == 0,
        "answers_equal_single_client": tally.mismatches == 0 and tally.complete > 0,
        "rss_growth_under_5pct": growth < 0.05,
        "disconnects_freed_within_1s": bool(left["logged_499"]) and (left["freed_within_s"] or 0) <= 1.0,
        "server_alive_and_healthy": alive and healthy,
        "request_log_kept_up": after.get("tunelab_request_log_dropped_rows_total", 0) == 0,
    }
    result = {
        "machine": machine(),
        "model": "default (SmolLM2-135M-Instruct)" if a.real else "tiny random llama (2 layers, hidden 64)",
        "settings": {"clients": a.clients, "minutes": a.minutes, "disconnect_share": a.disconnect,
                     "max_tokens": a.max_tokens, "max_batch": a.max_batch, "max_queue": a.max_queue,
                     "models": list(MODELS), "prompts": len(prompts), "warmup_s": warmup},
        "references": {"answers": len(refs), "seconds": round(ref_s, 1)},
        "soak": {"wall_s": round(wall, 1), "complete_answers": tally.complete, "rate_limited_429": tally.rate_limited,
                 "errors": tally.errors, "error_examples": tally.error_examples,
                 "server_statuses": statuses, "completion_tokens": int(tokens),
                 "tokens_per_s": round(tokens / wall, 1), "answers_per_s": round(tally.complete / wall, 2)},
        "correctness": {"mismatches": tally.mismatches, "examples": tally.mismatch_examples},
        "latency_s": percentiles(tally.latency),
        "ttft_s": percentiles(tally.ttft),
        "memory": {"rss_after_warmup_mib": round(rss_base / 2**20, 1), "rss_end_mib": round(rss_end / 2**20, 1),
                   "rss_start_mib": round(samples[0][1] / 2**20, 1), "growth": round(growth, 4),
                   "samples_mib": [(round(t_, 1), round(r / 2**20, 1)) for t_, r in samples[::step]]},
        "disconnects": left,
        "request_log": {"write_failures": after.get("tunelab_request_log_write_failures_total", 0),
                        "dropped_rows": after.get("tunelab_request_log_dropped_rows_total", 0)},
        "checks": checks,
        "passed": all(checks.values()),
    }
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(result, indent=2) + "\n")

    lat, ttft = result["latency_s"], result["ttft_s"]
    print(f"\n{result['model']} on {result['machine']['cpu']}: {a.clients} streaming clients, {wall / 60:.1f} min")
    print(f"  {tally.complete} complete answers ({result['soak']['answers_per_s']}/s, {result['soak']['tokens_per_s']} "
          f"tok/s), {tally.rate_limited} x 429, other errors {tally.errors or 0}, {tally.mismatches} answers unlike "
          f"the single client's")
    print(f"  latency p50/p95/p99 {lat['p50']}/{lat['p95']}/{lat['p99']} s; TTFT {ttft['p50']}/{ttft['p95']}/"
          f"{ttft['p99']} s")
    print(f"  RSS {result['memory']['rss_after_warmup_mib']} MiB after warm-up -> {result['memory']['rss_end_mib']} "
          f"MiB at the end ({growth:+.2%})")
    print(f"  {left['clients_left']} clients left mid-answer: seen by the server within "
          f"{left['seen_after_close_s']['max']} s (p50 {left['seen_after_close_s']['p50']}), rows dropped "
          f"{left['release_mean_s']} s later on average (all within {left['release_at_most_s']} s): freed within "
          f"{left['freed_within_s']} s")
    for name, ok in checks.items():
        print(f"  [{'ok' if ok else 'FAIL'}] {name}")
    print(f"-> {a.json}")
    sys.exit(0 if result["passed"] else 1)


if __name__ == "__main__":
    main()
