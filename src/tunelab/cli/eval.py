"""`tunelab eval RUN_OR_MODEL --data FILE [--compare-base] [--json]`."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from ..config import default
from .common import console, out, parse_columns, user_errors

SHOWN = ("loss", "perplexity", "accuracy", "macro_f1", "exact_match", "token_f1", "rouge_l", "chrf", "bleu",
         "numeric_accuracy", "empty_rate", "repetition_rate", "avg_words")


def eval_cmd(
    model: str = typer.Argument(..., help="Run directory, model directory, .gguf file or alias."),
    data: str = typer.Option(..., "--data", "-d", help="Evaluation data (any format tunelab reads)."),
    format: str = typer.Option("auto", "--format", "-f", help="Row format, if not auto-detected."),
    column: list[str] = typer.Option([], "--column", help="Column mapping ours=yours, e.g. label=category."),
    text_column: str | None = typer.Option(None, "--text-column", help="Your column holding the text."),
    label_column: str | None = typer.Option(None, "--label-column", help="Your column holding the label."),
    compare_base: bool = typer.Option(False, "--compare-base", help="Also score the run's base model."),
    limit: int | None = typer.Option(None, "--limit", help="Score only the first N rows."),
    max_new_tokens: int = typer.Option(default("eval.max_new_tokens"), "--max-new-tokens",
                                      help="Longest generated answer."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON on stdout."),
) -> None:
    """Task metrics on held-out data: loss, accuracy/F1 or EM/F1/ROUGE-L/chrF/BLEU, base vs tuned."""
    from ..eval.evaluate import evaluate

    with user_errors():
        res = evaluate(model, data, fmt=format, columns=parse_columns(column, text_column, label_column),
                       compare_base=compare_base, limit=limit, max_new_tokens=max_new_tokens, console=console)
    if as_json:
        out.print_json(json.dumps(res))
        return
    t = Table(title=f"{res['task']} on {res['rows']} rows of {data}")
    t.add_column("metric")
    t.add_column("tuned" if "base" in res else "model", justify="right")
    if "base" in res:
        t.add_column("base", justify="right")
    for key in SHOWN:
        if key in res["model"]:
            row = [key, f"{res['model'][key]:.4f}"]
            if "base" in res:
                row.append(f"{res['base'].get(key, float('nan')):.4f}")
            t.add_row(*row)
    console.print(t)
    if "comparison" in res:
        c = res["comparison"]
        console.print(f"{c['metric']}: tuned {c['tuned']:.3f} vs base {c['base']:.3f}, difference {c['diff']:+.3f} "
                      f"(95% CI {c['ci95'][0]:+.3f} to {c['ci95'][1]:+.3f}); per example: {c['wins']} wins, "
                      f"{c['losses']} losses, {c['ties']} ties")
