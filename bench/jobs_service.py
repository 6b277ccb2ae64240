"""The jobs service against `tunelab train` on the same job, side by side in one run.

Both arms train the default model (SmolLM2-135M-Instruct) on the same bitext customer-support chat rows with
the same settings. Arm A runs `tunelab train CONFIG`; arm B uploads the file to a `tunelab serve` process and
creates a fine-tuning job with the openai client (validation, queueing, training in the server's worker,
events and checkpoints into the database). Measured: wall clock (A: the command; B: from jobs.create to
`succeeded`), training tokens/s from each run's summary, and for B the time from `succeeded` to the first
answer of the ft: model. Goals: the service's overhead <= 5% (wall clock and tokens/s), first answer <= 2 s.

    python bench/jobs_service.py [--rows 240] [--steps 80] [--repeats 2]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
RESULTS = Path(__file__).parent / "results" / "jobs_service.json"
POLL_S = 1.0
SEED = 42  # the same data order as `tunelab train`'s default: different orders pack into different pieces
ENV = os.environ | {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error"}


def chat_rows(n: int, out: Path) -> Path:
    with (SHARED / "bitext-customer-support" / "Bitext_Sample_Customer_Support_Training_Dataset.csv").open() as f:
        rows = list(csv.DictReader(f))[:: 17][:n]
    out.write_text("".join(json.dumps({"messages": [{"role": "user", "content": r["instruction"]},
                                                    {"role": "assistant", "content": r["response"]}]}) + "\n"
                           for r in rows))
    return out


def settings(steps: int) -> dict[str, object]:
    return {"train.max_steps": steps, "train.batch_size": 8, "data.val_fraction": 0, "eval.probes.enabled": False,
            "model.max_length": 256}


def run_direct(work: Path, data: Path, steps: int, name: str) -> dict[str, float]:
    cfg: dict[str, object] = {"name": name, "output_dir": str(work / "runs")}
    for key, value in (settings(steps) | {"data.train": str(data)}).items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})  # type: ignore[assignment]
        node[leaf] = value  # type: ignore[index]
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "tunelab.cli.main", "train", str(path)], cwd=work, env=ENV,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((work / "runs" / name / "summary.json").read_text())
    return {"wall_s": round(wall, 1), "tokens_per_s": summary["tokens_per_s"], "train_s": summary["train_seconds"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(work: Path, *args: str, api_key: str = "none") -> tuple[subprocess.Popen[bytes], object, str]:
    """A `tunelab serve` process on a free port with the default model, once it answers: (process, openai
    client, URL)."""
    import openai

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "tunelab.cli.main", "serve", "--port", str(port), "--data",
                               str(work / "serve"), *args], cwd=work, env=ENV, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    client = openai.OpenAI(base_url=url + "/v1", api_key=api_key, max_retries=5, timeout=600)
    deadline = time.time() + 300
    while True:
        try:
            client.models.list()
            return server, client, url
        except openai.APIConnectionError:
            if time.time() > deadline or server.poll() is not None:
                server.kill()
                raise
            time.sleep(0.5)


def run_service(client: object, data: Path, steps: int) -> dict[str, float]:
    import openai

    c: openai.OpenAI = client  # type: ignore[assignment]
    f = c.files.create(file=data.open("rb"), purpose="fine-tune")
    t0 = time.perf_counter()
    job = c.fine_tuning.jobs.create(model="smollm2-135m-instruct", training_file=f.id, seed=SEED,
                                    extra_body={"tunelab": {"config": settings(steps)}})
    while job.status not in ("succeeded", "failed", "cancelled"):
        time.sleep(POLL_S)  # as a client would poll; faster polling takes CPU from the training it measures
        job = c.fine_tuning.jobs.retrieve(job.id)
    wall = time.perf_counter() - t0
    assert job.status == "succeeded", job.error
    t1 = time.perf_counter()
    seen_at = time.time()
    while True:
        try:
            c.chat.completions.create(model=job.fine_tuned_model, max_tokens=1,
                                      messages=[{"role": "user", "content": "hello"}])
            break
        except openai.NotFoundError:
            time.sleep(0.02)
    ready = time.perf_counter() - t1
    run_dir = Path((job.model_extra or {})["tunelab"]["run_dir"])
    summary = json.loads((run_dir / "summary.json").read_text())
    # from the moment the client saw `succeeded`, and (to the second) from when the server set it
    return {"wall_s": round(wall, 1), "tokens_per_s": summary["tokens_per_s"], "train_s": summary["train_seconds"],
            "first_answer_s": round(ready, 3), "first_answer_since_finished_at_s": round(seen_at + ready -
                                                                                       job.finished_at, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=240)
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="jobs-bench-"))
    data = chat_rows(args.rows, work / "support.jsonl")
    print("warm-up: conversion and tokenisation cache", flush=True)
    run_direct(work, data, 1, "warmup")
    server, client, _ = start_server(work, "--jobs", "1")
    direct, service = [], []
    try:
        for i in range(args.repeats):  # alternating, so drift in machine speed hits both arms alike
            direct.append(run_direct(work, data, args.steps, f"direct-{i}"))
            print("tunelab train:", direct[-1], flush=True)
            service.append(run_service(client, data, args.steps))
            print("jobs service: ", service[-1], flush=True)
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=120)

    def mean(rows: list[dict[str, float]], key: str) -> float:
        return sum(r[key] for r in rows) / len(rows)

    result = {
        "machine": {"cpu": _cpu(), "cores": os.cpu_count(), "python": platform.python_version()},
        "rows": args.rows, "steps": args.steps, "repeats": args.repeats, "settings": settings(args.steps),
        "direct": direct, "service": service,
        "wall_ratio_service_over_direct": round(mean(service, "wall_s") / mean(direct, "wall_s"), 3),
        "tokens_per_s_ratio_service_over_direct": round(mean(service, "tokens_per_s") / mean(direct, "tokens_per_s"),
                                                        3),
        "first_answer_s_max": max(r["first_answer_s"] for r in service),
    }
    result["goals"] = {"wall_overhead<=5%": result["wall_ratio_service_over_direct"] <= 1.05,
                       "tokens_per_s_overhead<=5%": result["tokens_per_s_ratio_service_over_direct"] >= 0.95,
                       "first_answer<=2s": result["first_answer_s_max"] <= 2.0}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("direct", "service")}, indent=2))


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


if __name__ == "__main__":
    main()
