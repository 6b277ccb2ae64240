"""`tunelab data check`."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from ..config import default
from .common import console, out, parse_columns, user_errors

if TYPE_CHECKING:
    from ..data.records import Problem
    from ..data.report import PreferenceReport

app = typer.Typer(help="Inspect and validate training data.", no_args_is_help=True)


def _estimate(file: str, model: str | None) -> Any:
    from ..plan.init import estimate_file

    with user_errors(), console.status("Estimating: a few real training steps on your rows..."):
        return estimate_file(file, model)


def _print_estimate(measured: Any) -> None:
    if measured is None:
        return
    from ..plan.estimate import describe

    console.print("[bold]Training on it here[/] (the config `tunelab init` would write):")
    for line in describe(measured):
        console.print("  " + line, highlight=False)


@app.command("check")
def check_cmd(
    file: str = typer.Argument(..., help="Data file, directory, or saved datasets dataset."),
    format: str = typer.Option("auto", "--format", "-f", help="chat|alpaca|sharegpt|completion|text|classification; "
                               "preference: trl|openai_dpo|hh_rlhf"),
    model: str | None = typer.Option(None, "--model", "-m", help="Model whose tokenizer counts tokens."),
    max_length: int | None = typer.Option(None, "--max-length", help="Longest example in tokens (default: the "
                                          f"config's model.max_length, else {default('model.max_length')})."),
    too_long: str | None = typer.Option(None, "--too-long", help="Rows over max-length: truncate | drop | split "
                                        "(default: the config's data.too_long, else truncate)."),
    config: str | None = typer.Option(None, "--config", "-c", help="Check the file as this config trains on it: "
                                      "its format, columns, max_length, too_long and model."),
    column: list[str] = typer.Option([], "--column", help="Column mapping ours=yours, e.g. label=category."),
    text_column: str | None = typer.Option(None, "--text-column", help="Your column holding the text."),
    label_column: str | None = typer.Option(None, "--label-column", help="Your column holding the label."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    estimate: bool = typer.Option(False, "--estimate", help="Also measure what training on it takes here: a few "
                                  "real steps with the config `tunelab init` would choose (memory, time)."),
) -> None:
    """Check every row; report each problem with file:line, then a summary. Exit 1 on errors."""
    from ..data.check import check
    from ..data.report import PreferenceReport

    with user_errors():
        columns = parse_columns(column, text_column, label_column)
        if config:
            from ..config import load_config

            cfg = load_config(config)
            fmt = cfg.data.format if format == "auto" else format
            columns, model = columns or cfg.data.columns, model or cfg.model.base
            max_length, too_long = max_length or cfg.model.max_length, too_long or cfg.data.too_long
            system = cfg.data.system_prompt if cfg.task != "classification" else None  # as training renders rows
        else:
            fmt, system = format, None
        if too_long not in (None, "truncate", "drop", "split"):
            raise typer.BadParameter(f"--too-long {too_long!r}: choose truncate, drop or split")
        rep = check(file, fmt=fmt, model=model, max_length=max_length or default("model.max_length"),
                    columns=columns, too_long=too_long or default("data.too_long"), system_prompt=system)
    measured = _estimate(file, model) if estimate and not rep.errors else None
    if as_json:
        out.print_json(json.dumps(rep.to_dict() | ({"estimate": measured.to_dict()} if measured else {}),
                                  default=str))
        raise typer.Exit(1 if rep.errors else 0)
    _print_problems(rep.errors, rep.warnings)
    if isinstance(rep, PreferenceReport):
        _print_preference(rep, file)
        _print_curation(rep.curation, file)
        _print_estimate(measured)
        raise typer.Exit(1 if rep.errors else 0)
    t = Table(title=f"Data report: {file}", show_header=False)
    t.add_row("format", ", ".join(sorted(set(rep.formats.values()))) or "?")
    t.add_row("rows", str(rep.rows))
    t.add_row("valid rows", str(rep.valid_rows))
    t.add_row("errors", f"[red]{len(rep.errors)}[/]" if rep.errors else "0")
    t.add_row("exact duplicates", str(rep.duplicates))
    t.add_row(f"over {rep.max_length} tokens", f"{rep.truncated} truncated, {rep.dropped_too_long} dropped"
              + (f", {rep.split_rows} split into pieces" if rep.split_rows else ""))
    t.add_row("prompt tokens", f"{rep.prompt_tokens:,}")
    t.add_row("trained (completion) tokens", f"{rep.completion_tokens:,}")
    t.add_row("training tokens per epoch", f"{rep.est_tokens_per_epoch:,}")
    if rep.est_seconds_per_epoch is not None:
        t.add_row("time per epoch here (rough: --estimate measures it)", f"~{rep.est_seconds_per_epoch / 60:.1f} min")
    if rep.labels:
        t.add_row("labels", f"{len(rep.labels)} (smallest {min(rep.labels.values())} rows, "
                  f"largest {max(rep.labels.values())})")
    console.print(t)
    _print_histogram(rep.length_histogram, "length in tokens")
    _print_curation(rep.curation, file)
    _print_estimate(measured)
    console.print("[red bold]FAILED[/]" if rep.errors else "[green bold]OK[/]")
    raise typer.Exit(1 if rep.errors else 0)


def _print_curation(cur: dict[str, Any], file: str) -> None:
    steps = cur.get("steps") or {}
    if not steps:
        if cur:
            console.print("[bold]Curation:[/] no duplicates, personal data, suspect labels or low-quality rows found")
        return
    names = {"duplicates": "exact or near-duplicates", "leaks": "leaks", "personal_data": "rows with personal data",
             "labels": "suspect labels", "quality": "low-quality rows", "unreadable": "unreadable rows"}
    console.print(f"[bold]Curation[/] (`tunelab data curate {file} --out DIR` fixes these and lists every row):")
    for step, acts in steps.items():
        console.print(f"  {names.get(step, step)}: [yellow]{sum(acts.values())}[/]", highlight=False)
        for f in cur.get("examples", {}).get(step, []):
            console.print(f"    [dim]{f['where']}[/]: {f['reason']}", highlight=False)


def _print_problems(errors: list[Problem], warnings: list[Problem]) -> None:
    for p in errors:
        console.print(f"[red]{p.where}[/]: {p.message}", highlight=False)
    shown = warnings[:50]
    for p in shown:
        console.print(f"[yellow]{p.where}[/]: warning: {p.message}", highlight=False)
    if len(warnings) > len(shown):
        console.print(f"[yellow]... and {len(warnings) - len(shown)} more warnings (--json lists all)[/]")


def _print_histogram(hist: list[tuple[int, int, int]], title: str) -> None:
    if hist:
        top = max(c for _, _, c in hist) or 1
        console.print(f"[bold]{title}[/]")
        for lo, hi, c in hist:
            console.print(f"  {lo:>6}-{hi:<6} {'█' * round(30 * c / top):<30} {c}", highlight=False)


def _print_preference(rep: PreferenceReport, file: str) -> None:
    t = Table(title=f"Preference data report: {file}", show_header=False)
    t.add_row("format", ", ".join(sorted(set(rep.formats.values()))) or "?")
    t.add_row("rows", str(rep.rows))
    t.add_row("valid pairs", str(rep.pairs))
    t.add_row("errors", f"[red]{len(rep.errors)}[/]" if rep.errors else "0")
    t.add_row("exact duplicates", str(rep.duplicates))
    t.add_row(f"over {rep.max_length} tokens", str(rep.over_max_length))
    for side in ("prompt", "chosen", "rejected"):
        total = getattr(rep, f"{side}_tokens")
        s = rep.token_lengths.get(side)
        detail = f" (per pair min {s['min']:g}, mean {s['mean']:g}, max {s['max']:g})" if s else ""
        t.add_row(f"{side} tokens", f"{total:,}{detail}")
    t.add_row("training tokens per epoch", f"{rep.est_tokens_per_epoch:,}")
    if rep.est_seconds_per_epoch is not None:
        t.add_row("time per epoch here (rough: --estimate measures it)", f"~{rep.est_seconds_per_epoch / 60:.1f} min")
    console.print(t)
    _print_histogram(rep.length_histogram, "prompt + longer reply, in tokens")
    console.print("[red bold]FAILED[/]" if rep.errors else "[green bold]OK[/]")


from .data_curate import curate_cmd  # noqa: E402  (after `app`, which it is registered on)

app.command("curate")(curate_cmd)

from .data_synth import synth_cmd  # noqa: E402

app.command("synth")(synth_cmd)
