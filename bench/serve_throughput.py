"""Serving throughput on the default model: `tunelab serve` (a real server process, an adapter served
unmerged) with 1, 4 and 16 concurrent clients against plain `model.generate` one prompt at a time on the
same customer-support prompts, in one run; llama.cpp (llama-cpp-python) one stream at a time beside them
when it is installed, on the model exported to GGUF by `tunelab export` and on the shipped Q4_1 file.

    python bench/serve_throughput.py [--prompts 16] [--new-tokens 64] [--clients 1,4,16]
                                     [--dtypes fp32,int8,llama.cpp:auto,llama.cpp:q8_0,llama.cpp:f16]
                                     [--bf16] [--json PATH]

`--dtypes`: one server each, `DTYPE` for the torch engine, `llama.cpp:DTYPE` for `--engine llama.cpp` (left out when
llama-cpp-python is not installed).

Tokens/s = generated tokens of all requests / wall time of the whole wave. Latency and time to first
token (TTFT) are per request, as a client sees them (streaming, with usage in the last chunk).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from generate_throughput import prompts  # noqa: E402
from quality_common import machine  # noqa: E402

from tunelab.models.load import resolve  # noqa: E402
from tunelab.models.registry import DEFAULT_MODEL  # noqa: E402

ADAPTER = "bench-adapter"


def make_adapter(base: str, out: Path) -> Path:
    """A LoRA r16 on every linear layer, as tunelab trains by default: served unmerged, it costs what a
    real adapter costs (its B matrices start at zero, so its answers are the base model's)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    model.save_pretrained(out)
    return out


def sequential_generate(base: str, chats: list[list[dict[str, str]]], new_tokens: int) -> dict[str, Any]:
    """The baseline: what a user writes with transformers alone, one prompt after another."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    answers, tokens, latencies = [], 0, []
    t0 = time.perf_counter()
    for chat in chats:
        t = time.perf_counter()
        enc = tok.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id or tok.eos_token_id)
        new = out[0, enc["input_ids"].shape[1]:].tolist()
        eos = model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos])
        n = next((i for i, t_ in enumerate(new) if t_ in eos_ids), len(new))
        tokens += n
        answers.append(tok.decode(new[:n], skip_special_tokens=True))
        latencies.append(time.perf_counter() - t)
    wall = time.perf_counter() - t0
    return {"tokens": tokens, "wall_s": round(wall, 2), "tok_s": round(tokens / wall, 1),
            "latency_p50_s": round(statistics.median(latencies), 2), "answers": answers}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, work: Path, adapter: Path, spec: str, max_batch: int) -> None:
        """`spec`: DTYPE (the torch engine) or ENGINE:DTYPE."""
        engine, _, dtype = spec.rpartition(":")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tunelab.cli.main", "serve", "--model", DEFAULT_MODEL, "--adapter",
             f"{ADAPTER}={adapter}", "--port", str(self.port), "--data", str(work / f"serve-{spec}"),
             "--engine", engine or "torch", "--dtype", dtype, "--max-batch", str(max_batch)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def __enter__(self) -> Server:
        deadline = time.time() + 300
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tunelab serve exited: {self.proc.stderr.read() if self.proc.stderr else ''}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2):
                    return self
            except OSError:
                time.sleep(0.5)
        raise RuntimeError("tunelab serve did not come up in 300 s")

    def __exit__(self, *exc: object) -> None:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=60)


def one_request(client: Any, chat: list[dict[str, str]], new_tokens: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    first, text, tokens = None, [], 0
    stream = client.chat.completions.create(model=ADAPTER, messages=chat, max_tokens=new_tokens, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
        for choice in chunk.choices:
            if choice.delta.content:
                first = first or time.perf_counter()
                text.append(choice.delta.content)
    end = time.perf_counter()
    return {"latency": end - t0, "ttft": (first or end) - t0, "tokens": tokens, "text": "".join(text)}


def wave(url: str, chats: list[list[dict[str, str]]], clients: int, new_tokens: int) -> dict[str, Any]:
    """`clients` clients, each sending its share of the requests one after another."""
    import openai

    results: list[tuple[int, dict[str, Any]]] = []
    lock = threading.Lock()

    def worker(k: int) -> None:
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600)
        for i in range(k, len(chats), clients):
            r = one_request(client, chats[i], new_tokens)
            with lock:
                results.append((i, r))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    results.sort(key=lambda x: x[0])
    lat = sorted(r["latency"] for _, r in results)
    ttft = sorted(r["ttft"] for _, r in results)
    tokens = sum(r["tokens"] for _, r in results)

    def pct(v: list[float], p: float) -> float:
        return round(v[min(len(v) - 1, int(p * len(v)))], 2)

    return {"clients": clients, "requests": len(results), "tokens": tokens, "wall_s": round(wall, 2),
            "tok_s": round(tokens / wall, 1), "latency_p50_s": pct(lat, 0.5), "latency_p95_s": pct(lat, 0.95),
            "ttft_p50_s": pct(ttft, 0.5), "ttft_p95_s": pct(ttft, 0.95),
            "answers": [r["text"] for _, r in results]}


def run_llama_cpp(gguf: Path, chats: list[list[dict[str, str]]], new_tokens: int) -> dict[str, Any]:
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_ctx=2048, n_threads=torch.get_num_threads(), verbose=False, seed=0)
    llm.create_chat_completion(chats[0], max_tokens=4, temperature=0)  # warm-up
    tokens, latencies, answers = 0, [], []
    t0 = time.perf_counter()
    for chat in chats:
        t = time.perf_counter()
        out = llm.create_chat_completion(chat, max_tokens=new_tokens, temperature=0)
        tokens += out["usage"]["completion_tokens"]
        answers.append(out["choices"][0]["message"]["content"])
        latencies.append(time.perf_counter() - t)
    wall = time.perf_counter() - t0
    return {"gguf": gguf.name, "tokens": tokens, "wall_s": round(wall, 2), "tok_s": round(tokens / wall, 1),
            "latency_p50_s": round(statistics.median(latencies), 2), "answers": answers}


def export_gguf(work: Path, dtype: str) -> Path | None:
    out = work / f"gguf-{dtype}"
    r = subprocess.run([sys.executable, "-m", "tunelab.cli.main", "export", DEFAULT_MODEL, "--format", "gguf",
                        "--out", str(out), "--dtype", dtype, "--force"], capture_output=True, text=True)
    if r.returncode != 0:
        print(f"tunelab export to gguf failed: {r.stderr[-500:]}")
        return None
    return next(out.glob("*.gguf"))


def same(a: list[str], b: list[str]) -> float:
    return round(sum(x.strip() == y.strip() for x, y in zip(a, b, strict=True)) / len(a), 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=32, help="requests per wave (1 client sends a quarter)")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--dtypes", default="fp32,int8,llama.cpp:auto,llama.cpp:q8_0,llama.cpp:f16",
                    help="servers, one each: DTYPE (torch engine) or llama.cpp:DTYPE (--engine llama.cpp)")
    ap.add_argument("--bf16", action="store_true", help="also serve with bf16 weights at the largest client count")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    chats = prompts(args.prompts)
    clients = [int(c) for c in args.clients.split(",")]
    base = resolve(DEFAULT_MODEL).path
    result: dict[str, Any] = {"machine": machine(), "model": DEFAULT_MODEL, "new_tokens": args.new_tokens,
                              "requests": len(chats), "served": "adapter (LoRA r16, all linear layers), unmerged"}
    with tempfile.TemporaryDirectory(prefix="tunelab-serve-bench-") as tmp:
        work = Path(tmp)
        adapter = make_adapter(base, work / "adapter")
        single = chats[: max(len(chats) // 4, 4)]  # one client: fewer requests, same prompts first
        print("sequential model.generate ...", flush=True)
        seq = sequential_generate(base, chats, args.new_tokens)
        result["sequential_generate"] = {k: v for k, v in seq.items() if k != "answers"}
        print(f"  {seq['tok_s']} tok/s", flush=True)
        waves = []
        specs = args.dtypes.split(",")
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            specs = [s for s in specs if not s.startswith("llama.cpp:")]
        for dtype in specs:
            with Server(work, adapter, dtype, max(clients)) as server:
                for c in clients:
                    w = wave(server.url, single if c == 1 else chats, c, args.new_tokens)
                    ref = seq["answers"][: len(w["answers"])]
                    w["same_answers_as_sequential"] = same(w.pop("answers"), ref)
                    w["vs_sequential"] = round(w["tok_s"] / seq["tok_s"], 2)
                    waves.append(w | {"dtype": dtype})
                    print(f"  tunelab serve {dtype}, {c} clients: {w['tok_s']} tok/s ({w['vs_sequential']}x), p50 "
                          f"{w['latency_p50_s']} s, TTFT p50 {w['ttft_p50_s']} s, same answers "
                          f"{w['same_answers_as_sequential']:.0%}", flush=True)
        if args.bf16:
            with Server(work, adapter, "bf16", max(clients)) as server:
                w = wave(server.url, chats, max(clients), args.new_tokens)
                w["same_answers_as_sequential"] = same(w.pop("answers"), seq["answers"])
                w["vs_sequential"] = round(w["tok_s"] / seq["tok_s"], 2)
                waves.append(w | {"dtype": "bf16"})
                print(f"  tunelab serve bf16, {max(clients)} clients: {w['tok_s']} tok/s", flush=True)
        result["serve"] = waves
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            result["llama_cpp"] = "not installed (pip install llama-cpp-python)"
        else:
            from tunelab.models.registry import ALIASES

            runs = []
            for gguf in [export_gguf(work, "f16"), ALIASES[DEFAULT_MODEL].path()]:
                if gguf is None:
                    continue
                r = run_llama_cpp(gguf, single, args.new_tokens)
                r["same_answers_as_sequential"] = same(r.pop("answers"), seq["answers"][: len(single)])
                runs.append(r)
                print(f"  llama.cpp {gguf.name}: {r['tok_s']} tok/s one stream", flush=True)
            result["llama_cpp"] = runs
            best = max(runs, key=lambda r: r["tok_s"])
            result["vs_llama_cpp"] = {"reference": best["gguf"]} | {
                dtype: {"aggregate_top": round(max(w["tok_s"] for w in waves if w["dtype"] == dtype)
                                               / best["tok_s"], 2),
                        "single_stream": round(next(w["tok_s"] for w in waves if w["dtype"] == dtype
                                                    and w["clients"] == 1) / best["tok_s"], 2)}
                for dtype in specs}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
