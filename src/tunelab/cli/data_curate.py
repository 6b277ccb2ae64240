"""`tunelab data curate`."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from .common import console, out, parse_columns, user_errors


def _overrides(similarity: float | None, duplicates: bool | None, leaks: str | None, personal_data: str | None,
               labels: str | None, language: str | None, evaluation: str | None) -> list[str]:
    given = {"similarity": similarity, "duplicates": duplicates, "leaks": leaks, "personal_data": personal_data,
             "labels": labels, "quality.language": language, "evaluation": evaluation}
    return [f"data.curate.{k}={json.dumps(v) if isinstance(v, str) else str(v).lower()}"
            for k, v in given.items() if v is not None]


def curate_cmd(
    files: list[str] = typer.Argument(None, help="Training data: files, directories or saved datasets (default: "
                                      "data.train of --config)."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Directory for the curated copy and the findings "
                                 "(JSON and an HTML page); new, empty, or an earlier curated copy."),
    validation: str | None = typer.Option(None, "--validation", help="Validation data: rows that copy training rows "
                                          "are leaks."),
    evaluation: str | None = typer.Option(None, "--eval", help="Evaluation/test data: training rows that overlap "
                                          "it are contamination and are removed."),
    config: Path | None = typer.Option(None, "--config", "-c", help="A training config: its data section (files, "
                                       "format, columns, curate settings) is used."),
    set_: list[str] = typer.Option([], "--set", help="Any data.curate setting, e.g. --set "
                                   "data.curate.quality.max_chars=2000."),
    format: str = typer.Option("auto", "--format", "-f", help="Row format (auto, chat, classification, ...)."),
    column: list[str] = typer.Option([], "--column", help="Column mapping ours=yours, e.g. label=category."),
    text_column: str | None = typer.Option(None, "--text-column", help="Your column holding the text."),
    label_column: str | None = typer.Option(None, "--label-column", help="Your column holding the label."),
    similarity: float | None = typer.Option(None, "--similarity", help="Near-duplicate threshold (0-1, default "
                                            "0.8)."),
    duplicates: bool | None = typer.Option(None, "--duplicates/--no-duplicates", help="Remove near-duplicates."),
    leaks: str | None = typer.Option(None, "--leaks", help="Validation rows copying training rows: drop|warn|off."),
    personal_data: str | None = typer.Option(None, "--personal-data", help="redact|pseudonymize|report|off."),
    labels: str | None = typer.Option(None, "--labels", help="Suspect labels: flag|drop|off."),
    language: str | None = typer.Option(None, "--language", help="Keep only rows in this language (e.g. en)."),
    seed: int = typer.Option(0, "--seed", help="Seed for the suspect-label search's folds."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Remove near-duplicates and leaks, redact personal data, flag suspect labels and low-quality rows; write a
    curated copy with a report listing every row removed or changed, and why."""
    from ..config.curate import CurateConfig
    from ..config.load import load_config
    from ..data.curate.run import FINDINGS_HTML, curate_files, write
    from ..report.curation import render, summary_lines

    with user_errors():
        cfg = load_config(config, ["data.curate={}"] * (config is None) + list(set_) +
                          _overrides(similarity, duplicates, leaks, personal_data, labels, language, evaluation))
        settings = cfg.data.curate or CurateConfig()
        train = list(files or ([cfg.data.train] if cfg.data.train else []))
        if not train:
            raise typer.BadParameter("give the training data: FILE arguments or --config with data.train")
        columns = parse_columns(column, text_column, label_column) or cfg.data.columns
        fmt = format if format != "auto" else cfg.data.format
        with console.status("Curating...") as status:
            result = curate_files(train, settings, validation=validation or cfg.data.validation, fmt=fmt,
                                  columns=columns, seed=seed, progress=lambda s: status.update(f"Curating: {s}..."))
            written = write(result, out_dir, render)
    if as_json:
        out.print_json(json.dumps(result.summary() | {"files": written}, default=str))
        return
    t = Table(title="Curation", show_header=True)
    for col in ("step", "removed", "changed", "flagged"):
        t.add_column(col, justify="left" if col == "step" else "right")
    for step, acts in result.counts().items():
        t.add_row(step.replace("_", " "), *(str(acts.get(a, 0)) for a in ("drop", "change", "flag")))
    console.print(t)
    for step in result.counts():
        for f in [f for f in result.findings if f.step == step][:3]:
            console.print(f"  [dim]{f.where}[/]: {f.reason}", highlight=False)
    for line in summary_lines(result.summary()):
        console.print(line, highlight=False)
    for src, dst in written.items():
        console.print(f"{src} -> [bold]{dst}[/]", highlight=False)
    console.print(f"Every row removed or changed, with the reason: [bold]{out_dir / FINDINGS_HTML}[/]")
