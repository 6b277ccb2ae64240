"""`tunelab export`: a run as a merged HF model, its adapter alone, or a GGUF for llama.cpp / Ollama."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from .common import console, out, user_errors


def export_cmd(
    run: str = typer.Argument(..., help="Run directory (or any model reference: model directory, .gguf, alias)."),
    format: str = typer.Option(..., "--format", "-f",
                               help="hf: merged transformers model | adapter: the PEFT adapter alone | "
                                    "gguf: one file for llama.cpp / Ollama, with a Modelfile."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Directory to write (built as OUT.partial, then renamed)."),
    dtype: str | None = typer.Option(None, "--dtype",
                                     help="f32 | f16 | bf16. Default: f32 for hf (exact), f16 for gguf, "
                                          "the adapter's own for adapter."),
    quantize: str | None = typer.Option(None, "--quantize", help="gguf only: q8_0 (norms stay f32)."),
    force: bool = typer.Option(False, "--force", help="Replace --out if it exists and is not empty."),
    parity_check: bool = typer.Option(True, "--parity-check/--no-parity-check",
                                      help="Run the export against the trained model before keeping it (same "
                                           "tokens, template, stops and answers). Skipping it is not recommended."),
) -> None:
    """Export a run for use outside tunelab."""
    from ..export import export, read_manifest

    with user_errors(), console.status(f"exporting {run} as {format}") as status:
        def log(msg: str) -> None:
            status.update(msg)
            console.print(f"[dim]{msg}[/]", highlight=False)

        written = export(run, format, out_dir, dtype=dtype, quantize=quantize, force=force,
                         parity=parity_check, log=log)
    folder = written if written.is_dir() else written.parent
    _print_parity((read_manifest(folder) or {}).get("parity") or {})
    console.print(f"[green bold]exported[/] {run} -> {folder}", highlight=False)
    for p in sorted(folder.iterdir()):
        size = p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        console.print(f"  {p.name}  [dim]{size / 1e6:.1f} MB[/]", highlight=False)
    if format == "gguf":
        console.print(f"run it: [bold]llama-cli -m {written} -cnv[/]  or  "
                      f"[bold]cd {folder} && ollama create {written.name.split('.')[0].lower()} -f Modelfile[/]",
                      highlight=False)
    out.print(str(written), highlight=False, markup=False)


def _print_parity(parity: dict[str, Any]) -> None:
    if not parity.get("checked"):
        console.print("[yellow]parity check skipped[/]: nothing confirms this export answers as the run does",
                      highlight=False)
        return
    for t in parity.get("targets", []):
        if "skipped" in t:
            console.print(f"[dim]parity: {t['target']} not run: {t['skipped']}[/]", highlight=False)
            continue
        bound = f"tolerance {t['tolerance']:g}" if "tolerance" in t else f"floor {t['floor']:.0%}"
        console.print(f"parity: {t['target']} {t['precision']}: {t['answers_identical']} answers identical, "
                      f"{t['token_agreement']:.0%} of answer tokens agree, max |logit diff| "
                      f"{t['max_logit_diff']:.2g} ({bound})", highlight=False)
