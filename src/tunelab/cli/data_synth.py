"""`tunelab data synth`: more training rows from a teacher model, from a few seed rows or from documents."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from ..data.synth.teacher import DEFAULT_BASE_URL
from .common import console, out, parse_columns, user_errors

if TYPE_CHECKING:
    from rich.progress import Progress

    from ..data.synth.teacher import Answer



class _Bar:
    """One rich progress bar per phase of requests; replies from the cache are counted apart."""

    def __init__(self, progress: Progress) -> None:
        self.progress, self.task, self.cached = progress, None, 0

    def start(self, what: str, total: int) -> None:
        if self.task is not None:
            self.progress.update(self.task, visible=False)
        self.cached = 0
        self.task = self.progress.add_task(what, total=total, cached=0)

    def advance(self, answer: Answer) -> None:
        self.cached += answer.cached
        assert self.task is not None
        self.progress.update(self.task, advance=1, cached=self.cached)


def synth_cmd(
    seeds: str | None = typer.Argument(None, help="Seed rows (chat, alpaca, completion, or text + label for "
                                       "classification): a file or directory, as `data check` reads it."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Output directory: synthetic.jsonl, synth.json (the "
                                 "summary, written last) and teacher-cache.sqlite (re-runs and resumes are free)."),
    documents: str | None = typer.Option(None, "--documents", "-d", help="Instead of seed rows: a folder of .txt, "
                                         ".md, .pdf or .html files to ask questions about."),
    n: int = typer.Option(200, "--n", min=1, help="Rows to make (classification: spread over the labels)."),
    per_label: int | None = typer.Option(None, "--per-label", min=1, help="Classification: new rows per label."),
    base_url: str = typer.Option(DEFAULT_BASE_URL, "--base-url", help="The teacher: any OpenAI-compatible API "
                                 "(`tunelab serve`, llama.cpp, vLLM, a hosted one)."),
    model: str | None = typer.Option(None, "--model", "-m", help="Teacher model (default: the first it lists)."),
    api_key_env: str = typer.Option("OPENAI_API_KEY", "--api-key-env", help="Environment variable with the "
                                    "teacher's API key (local servers need none)."),
    concurrency: int = typer.Option(4, "--concurrency", min=1, help="Requests in flight at once."),
    timeout: float = typer.Option(120.0, "--timeout", min=0.1, help="Seconds per request attempt."),
    max_retries: int = typer.Option(2, "--max-retries", min=0, help="Retries of a request that failed."),
    temperature: float = typer.Option(0.9, "--temperature", min=0.0, help="Teacher sampling temperature."),
    max_tokens: int = typer.Option(512, "--max-tokens", min=1, help="Longest teacher reply, in tokens."),
    examples: int = typer.Option(3, "--examples", min=1, help="Seed rows shown in each request."),
    per_chunk: int = typer.Option(3, "--per-chunk", min=1, help="Documents: question/answer pairs per chunk."),
    chunk_words: int = typer.Option(200, "--chunk-words", min=20, help="Documents: words per chunk (about)."),
    overlap: int = typer.Option(40, "--overlap", min=0, help="Documents: words shared by consecutive chunks."),
    grounded: float = typer.Option(0.5, "--grounded", min=0.0, max=1.0, help="Documents: share of an answer's "
                                   "content words that must occur in its chunk."),
    similarity: float = typer.Option(0.8, "--similarity", min=0.01, max=1.0, help="Near-duplicate threshold "
                                     "(to the seeds and to each other)."),
    max_answer_chars: int = typer.Option(2000, "--max-answer-chars", min=1, help="Longer answers are dropped."),
    relabel: bool = typer.Option(True, "--relabel/--no-relabel", help="Classification: the teacher (or the model "
                                 "of --relabel-with) labels each new row again; rows where it disagrees are dropped."),
    relabel_with: str | None = typer.Option(None, "--relabel-with", help="Classification: a run trained with task: "
                                            "classification (head or generated labels) labels the new rows again "
                                            "instead of the teacher; better than a small teacher."),
    teacher_check: int = typer.Option(0, "--teacher-check", min=0, help="With --relabel-with: the teacher also "
                                      "labels this many of the same rows, to count in synth.json how many it would "
                                      "have kept (nothing is dropped for it)."),
    seed: int = typer.Option(0, "--seed", help="Which seed rows each request shows, and the teacher's seed."),
    format: str = typer.Option("auto", "--format", "-f", help="Seed rows: chat|alpaca|completion|classification."),
    column: list[str] = typer.Option([], "--column", help="Column mapping ours=yours, e.g. label=category."),
    text_column: str | None = typer.Option(None, "--text-column", help="Your column holding the text."),
    label_column: str | None = typer.Option(None, "--label-column", help="Your column holding the label."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Make more training data with a teacher model: new rows like a few seed rows, or question/answer pairs
    grounded in documents; filtered, curated and checked, with provenance in each row's `tunelab_synth`."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..data.synth.run import SynthOptions, synthesize
    from ..data.synth.teacher import TeacherSettings

    if teacher_check and relabel_with is None:
        raise typer.BadParameter("--teacher-check counts against a model's relabelling: give --relabel-with too")

    teacher = TeacherSettings(base_url=base_url, model=model, api_key_env=api_key_env, timeout=timeout,
                              max_retries=max_retries, concurrency=concurrency)
    opts = SynthOptions(n=n, per_label=per_label, examples_per_prompt=examples, per_chunk=per_chunk,
                        chunk_words=chunk_words, overlap_words=overlap, temperature=temperature,
                        max_tokens=max_tokens, similarity=similarity, max_answer_chars=max_answer_chars,
                        grounded=grounded, relabel=relabel, teacher_check=teacher_check, seed=seed, fmt=format,
                        columns=parse_columns(column, text_column, label_column))
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("({task.fields[cached]} cached)"), TimeElapsedColumn(), console=console,
                   transient=True)
    try:
        with user_errors():
            relabeller = _classifier(relabel_with) if relabel_with else None
        with user_errors(), bar:
            summary = synthesize(out_dir, teacher, opts, seeds=seeds, documents=documents, progress=_Bar(bar),
                                 relabel=relabeller)
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted[/]: the replies so far are cached in {out_dir}; run the same command "
                      "again to go on from there", highlight=False)
        raise typer.Exit(130) from None
    if as_json:
        out.print_json(json.dumps(summary, default=str))
    else:
        _print(summary)
    raise typer.Exit(0 if summary["check"]["ok"] else 1)


def _classifier(ref: str) -> Any:
    from ..eval.classifier import load_classifier

    with console.status(f"loading {ref} to relabel the new rows"):
        return load_classifier(ref)


def _print(s: dict[str, Any]) -> None:
    t = Table(title=f"Synthetic data: {s['files']['rows']}", show_header=False)
    t.add_row("teacher", f"{s['teacher']['model']} at {s['teacher']['base_url']}")
    t.add_row("rows requested", str(s["requested"]))
    t.add_row("requests", f"{s['requests']} ({s['answered']} answered, {s['cache_hits']} from the cache)")
    failed = {k: v for p in s["phases"].values() for k, v in p["failed"].items()}
    for msg, count in failed.items():
        t.add_row("  failed", f"[yellow]{count}[/]: {msg}")
    t.add_row("replies parsed", f"{s['parsed']} ({s['unparsable']} unparsable)")
    t.add_row("rows proposed", str(s["candidates"]))
    by = s.get("relabel", {}).get("by", {})
    if by.get("kind") in ("teacher", "model"):
        t.add_row("relabelled by", f"the teacher ({by['model']})" if by["kind"] == "teacher" else
                  f"{by['model']} ({by.get('mode', 'model')})")
    check = s.get("relabel", {}).get("teacher_check")
    if check:
        t.add_row("  teacher check", f"the teacher agrees on {check['teacher_agrees']} of {check['rows']} sampled "
                  f"rows, the model on {check['model_agrees']}")
    for reason, count in s["dropped"].items():
        t.add_row(f"  dropped: {reason}", str(count))
    t.add_row("rows kept", f"[bold]{s['kept']}[/]")
    t.add_row("time", f"{s['seconds']:.0f} s")
    console.print(t)
    check = s["check"]
    for err in check["errors"]:
        console.print(f"[red]{err}[/]", highlight=False)
    console.print("[green bold]OK[/] (`tunelab data check` reads every row)" if check["ok"] else
                  "[red bold]FAILED[/]: rows that `tunelab data check` refuses")
