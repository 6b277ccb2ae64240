"""`tunelab data check`."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from .common import console, out, user_errors

app = typer.Typer(help="Inspect and validate training data.", no_args_is_help=True)


def parse_columns(column: list[str], text_column: str | None, label_column: str | None) -> dict[str, str]:
    cols = {}
    for item in column:
        if "=" not in item:
            raise typer.BadParameter(f"--column {item!r}: expected ours=yours, e.g. label=category")
        k, v = item.split("=", 1)
        cols[k] = v
    if text_column:
        cols["text"] = text_column
    if label_column:
        cols["label"] = label_column
    return cols


@app.command("check")
def check_cmd(
    file: str = typer.Argument(..., help="Data file, directory, or saved datasets dataset."),
    format: str = typer.Option("auto", "--format", "-f", help="chat|alpaca|sharegpt|completion|text|classification"),
    model: str | None = typer.Option(None, "--model", "-m", help="Model whose tokenizer counts tokens."),
    max_length: int = typer.Option(512, "--max-length", help="Longest example in tokens."),
    column: list[str] = typer.Option([], "--column", help="Column mapping ours=yours, e.g. label=category."),
    text_column: str | None = typer.Option(None, "--text-column", help="Your column holding the text."),
    label_column: str | None = typer.Option(None, "--label-column", help="Your column holding the label."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Check every row; report each problem with file:line, then a summary. Exit 1 on errors."""
    from ..data.check import check

    with user_errors():
        rep = check(file, fmt=format, model=model, max_length=max_length,
                    columns=parse_columns(column, text_column, label_column))
    if as_json:
        out.print_json(json.dumps(rep.to_dict(), default=str))
        raise typer.Exit(1 if rep.errors else 0)
    for p in rep.errors:
        console.print(f"[red]{p.where}[/]: {p.message}", highlight=False)
    shown = rep.warnings[:50]
    for p in shown:
        console.print(f"[yellow]{p.where}[/]: warning: {p.message}", highlight=False)
    if len(rep.warnings) > len(shown):
        console.print(f"[yellow]... and {len(rep.warnings) - len(shown)} more warnings (--json lists all)[/]")
    t = Table(title=f"Data report: {file}", show_header=False)
    t.add_row("format", ", ".join(sorted(set(rep.formats.values()))) or "?")
    t.add_row("rows", str(rep.rows))
    t.add_row("valid rows", str(rep.valid_rows))
    t.add_row("errors", f"[red]{len(rep.errors)}[/]" if rep.errors else "0")
    t.add_row("exact duplicates", str(rep.duplicates))
    t.add_row(f"over {rep.max_length} tokens", f"{rep.truncated} truncated, {rep.dropped_too_long} dropped")
    t.add_row("prompt tokens", f"{rep.prompt_tokens:,}")
    t.add_row("trained (completion) tokens", f"{rep.completion_tokens:,}")
    t.add_row("training tokens per epoch", f"{rep.est_tokens_per_epoch:,}")
    if rep.est_seconds_per_epoch is not None:
        t.add_row("estimated time per epoch here", f"~{rep.est_seconds_per_epoch / 60:.1f} min")
    if rep.labels:
        t.add_row("labels", f"{len(rep.labels)} (smallest {min(rep.labels.values())} rows, "
                  f"largest {max(rep.labels.values())})")
    console.print(t)
    if rep.length_histogram:
        top = max(c for _, _, c in rep.length_histogram) or 1
        console.print("[bold]length in tokens[/]")
        for lo, hi, c in rep.length_histogram:
            console.print(f"  {lo:>6}-{hi:<6} {'█' * round(30 * c / top):<30} {c}", highlight=False)
    console.print("[red bold]FAILED[/]" if rep.errors else "[green bold]OK[/]")
    raise typer.Exit(1 if rep.errors else 0)
