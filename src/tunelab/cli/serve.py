"""`tunelab serve`, `tunelab monitor` and `tunelab feedback export`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer
from rich.table import Table

from .common import console, out, user_errors

DATA_HELP = "The server's data directory (request log database); default $TUNELAB_HOME/serve."
DB_HELP = "Database URL instead of the SQLite file in the data directory, e.g. postgresql://user@host/db."


def serve_cmd(
    model: str | None = typer.Option(None, "--model", "-m", help="Base model: alias, HF dir, .gguf or run "
                                     "directory (default: the embedded default model)."),
    adapter: list[str] = typer.Option([], "--adapter", "-a", help="NAME=RUN_OR_ADAPTER_DIR; repeat for more."),
    name: str | None = typer.Option(None, "--name", help="The base model's id in the API (default: its alias "
                                    "or directory name)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; 0.0.0.0 exposes the server to "
                             "the network (set --api-key then)."),
    port: int = typer.Option(8000, "--port"),
    api_key: list[str] = typer.Option([], "--api-key", help="Accepted key, as KEY (project 'default') or "
                                      "PROJECT:KEY; repeat for more; also read from TUNELAB_API_KEYS "
                                      "(comma-separated). A project's files, jobs and fine-tuned models are its "
                                      "own. None: no authentication."),
    keys_file: Path | None = typer.Option(None, "--keys-file", help="More keys, one PROJECT:KEY (or KEY) a line."),
    admin_key: list[str] = typer.Option([], "--admin-key", help="Key for loading and unloading adapters "
                                        "(POST/DELETE /v1/adapters); without it any API key may."),
    data: str | None = typer.Option(None, "--data", help=DATA_HELP),
    db: str | None = typer.Option(None, "--db", help=DB_HELP),
    log_content: bool = typer.Option(False, "--log-content", help="Also store prompt and completion text "
                                     "(needed by `tunelab feedback export`)."),
    engine: str = typer.Option("torch", "--engine", help="torch (batches concurrent requests: the most tokens/s "
                               "under many clients) or llama.cpp (one sequence at a time on a GGUF file, adapters "
                               "unmerged: the fastest single stream on a CPU; needs llama-cpp-python)."),
    dtype: str | None = typer.Option(None, "--dtype", help="torch: fp32 (default; answers match evaluation), bf16 "
                                     "(faster on CPUs with fast bf16) or int8 (the base's weights int8, adapters "
                                     "fp32: fastest for few clients). llama.cpp: auto (default: the model's own GGUF "
                                     "file, e.g. the default model's Q4_1, else f16), f32, f16, bf16 or q8_0. "
                                     "Answers can differ from fp32's, least with f32 and f16."),
    max_batch: int = typer.Option(16, "--max-batch", min=1, help="Sequences generated together."),
    max_queue: int = typer.Option(64, "--max-queue", min=1, help="Requests allowed to wait; more get 429."),
    max_tokens: int = typer.Option(256, "--max-tokens", min=1, help="Default max_tokens for chat requests."),
    max_file_mb: int = typer.Option(512, "--max-file-mb", min=1, help="Largest upload to /v1/files."),
    jobs: int = typer.Option(1, "--jobs", min=0, help="Fine-tuning jobs trained at once by this server; 0: none "
                             "here (run `tunelab worker` elsewhere)."),
    job_processes: int = typer.Option(1, "--job-processes", min=1, help="Training processes each job runs in "
                                      "here (data-parallel, as `tunelab train --nproc`)."),
    no_jobs: bool = typer.Option(False, "--no-jobs", help="Serve models only: no files or fine_tuning API."),
    no_python_graders: bool = typer.Option(False, "--no-python-graders", help="Refuse python graders (user code "
                                           "run in a limited subprocess, not a sandbox): for shared servers."),
    strict_adapters: bool = typer.Option(False, "--strict-adapters", help="Refuse to start when an --adapter fails "
                                         "to load (default: say why and serve the base and the other adapters)."),
) -> None:
    """Serve a model and its adapters behind an OpenAI-compatible API."""
    from ..models.load import ModelError
    from ..serve.server import build, serve
    from ..serve.state import ServeSettings

    dtypes = {"torch": ("fp32", "bf16", "fp16", "int8"), "llama.cpp": ("auto", "f32", "f16", "bf16", "q8_0")}
    if engine not in dtypes:
        raise typer.BadParameter(f"{engine!r}: expected torch or llama.cpp", param_hint="--engine")
    dtype = dtype or dtypes[engine][0]
    if dtype not in dtypes[engine]:
        raise typer.BadParameter(f"{dtype!r}: with --engine {engine} expected {', '.join(dtypes[engine])}",
                                 param_hint="--dtype")
    pairs = []
    for spec in adapter:
        adapter_name, sep, ref = spec.partition("=")
        if not sep or not adapter_name or not ref:
            raise typer.BadParameter(f"{spec!r}: expected NAME=PATH, e.g. support=runs/support-bot",
                                     param_hint="--adapter")
        pairs.append((adapter_name, ref))
    keys = list(api_key) + [k.strip() for k in os.environ.get("TUNELAB_API_KEYS", "").split(",") if k.strip()]
    if keys_file is not None:
        if not keys_file.is_file():
            raise typer.BadParameter(f"{keys_file}: no such file", param_hint="--keys-file")
        keys += [ln.strip() for ln in keys_file.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    settings = ServeSettings(api_keys=keys, admin_keys=list(admin_key), log_content=log_content,
                             default_max_tokens=max_tokens, max_file_bytes=max_file_mb * 1024 * 1024,
                             jobs=not no_jobs, worker_jobs=jobs, job_processes=job_processes,
                             python_graders=not no_python_graders, url=f"http://{_local(host)}:{port}")
    with user_errors():
        try:
            app = build(model, adapters=pairs, name=name, data=data, db_url=db, dtype=dtype, max_batch=max_batch,
                        max_queue=max_queue, settings=settings, strict_adapters=strict_adapters, engine_kind=engine)
        except ValueError as exc:
            raise ModelError(str(exc)) from None
    state = app.state.tunelab
    console.print(f"[bold]tunelab serve[/]: models {', '.join(state.engine.model_names)} on http://{host}:{port}/v1"
                  f" ({state.engine.name}, {state.base.dtype})"
                  f"  ({'API keys required' if keys else 'no API key'}; request log: {state.store.engine.url})")
    if host not in ("127.0.0.1", "localhost", "::1") and not keys:
        console.print("[yellow]warning:[/] listening beyond this machine without --api-key")
    serve(app, host, port)


def monitor_cmd(
    since: str = typer.Option("1h", "--since", help="Window: e.g. 15m, 1h, 7d."),
    data: str | None = typer.Option(None, "--data", help=DATA_HELP),
    db: str | None = typer.Option(None, "--db", help=DB_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Latency, errors, token use per model, and drift of recent prompts from each adapter's training data."""
    from ..serve.monitor import parse_since, report
    from ..serve.state import data_dir
    from ..serve.store import Store, database_url

    try:
        seconds = parse_since(since)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--since") from None
    with user_errors():
        rep = report(Store(database_url(data_dir(data), db)), seconds)
    if as_json:
        out.print_json(json.dumps(rep))
        return
    console.print(f"[bold]Last {since}[/]: {rep['requests']} requests, {rep['errors']} errors "
                  f"({rep['error_rate']:.1%}); latency p50 {rep['latency_ms'].get('p50', '-')} ms, "
                  f"p95 {rep['latency_ms'].get('p95', '-')} ms; time to first token p50 "
                  f"{rep['ttft_ms'].get('p50', '-')} ms")
    if rep["models"]:
        t = Table("model", "requests", "errors", "cancelled", "prompt tok", "completion tok", "latency p50/p95 ms",
                  "TTFT p50/p95 ms")
        for m in rep["models"]:
            t.add_row(m["model"], str(m["requests"]), f"{m['errors']} ({m['error_rate']:.1%})", str(m["cancelled"]),
                      str(m["prompt_tokens"]), str(m["completion_tokens"]),
                      f"{m['latency_ms'].get('p50', '-')} / {m['latency_ms'].get('p95', '-')}",
                      f"{m['ttft_ms'].get('p50', '-')} / {m['ttft_ms'].get('p95', '-')}")
        out.print(t)
    for d in rep["drift"]:
        colour = "red" if d["drifted"] else "green" if d["length_ks"] is not None else "dim"
        out.print(f"[{colour}]drift[/] {d['message']}", highlight=False)
    if not rep["drift"]:
        out.print("[dim]drift: no adapter with a training profile (adapters loaded from run directories get "
                  "one)[/]")


feedback_app = typer.Typer(help="Turn feedback sent to /v1/feedback into training data.", no_args_is_help=True)


@feedback_app.command("export")
def feedback_export_cmd(
    out_dir: Path = typer.Option(..., "--out", help="Directory for sft.jsonl and preference.jsonl."),
    adapter: str | None = typer.Option(None, "--adapter", help="Only feedback on this model or adapter id."),
    data: str | None = typer.Option(None, "--data", help=DATA_HELP),
    db: str | None = typer.Option(None, "--db", help=DB_HELP),
) -> None:
    """SFT rows (prompt + corrected or up-rated answer) and preference pairs (better answer over worse)."""
    from ..serve.feedback import collect, write
    from ..serve.state import data_dir
    from ..serve.store import Store, database_url

    with user_errors():
        exported = collect(Store(database_url(data_dir(data), db)), adapter)
    paths = write(exported, out_dir)
    s = exported.summary()
    out.print(f"{s['feedback']} feedback -> {s['sft_rows']} SFT rows in {paths['sft.jsonl']}, "
              f"{s['preference_pairs']} preference pairs in {paths['preference.jsonl']}", highlight=False)
    if exported.no_content:
        console.print(f"[yellow]{exported.no_content} feedback skipped:[/] their requests were logged without "
                      f"text; start `tunelab serve` with --log-content to keep it")
    if s["feedback"] == 0:
        console.print("[yellow]no feedback found[/]" + (f" for {adapter!r}" if adapter else ""))


def _local(host: str) -> str:
    """How this machine reaches a server listening on `host` (an IPv6 literal in brackets)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"[{host}]" if ":" in host else host
