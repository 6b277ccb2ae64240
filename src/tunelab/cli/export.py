"""`tunelab export`: a run as a merged HF model, its adapter alone, or a GGUF for llama.cpp / Ollama."""

from __future__ import annotations

from pathlib import Path

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
) -> None:
    """Export a run for use outside tunelab."""
    from ..export import export

    with user_errors(), console.status(f"exporting {run} as {format}") as status:
        def log(msg: str) -> None:
            status.update(msg)
            console.print(f"[dim]{msg}[/]", highlight=False)

        written = export(run, format, out_dir, dtype=dtype, quantize=quantize, force=force, log=log)
    folder = written if written.is_dir() else written.parent
    console.print(f"[green bold]exported[/] {run} -> {folder}", highlight=False)
    for p in sorted(folder.iterdir()):
        size = p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        console.print(f"  {p.name}  [dim]{size / 1e6:.1f} MB[/]", highlight=False)
    if format == "gguf":
        console.print(f"run it: [bold]llama-cli -m {written} -cnv[/]  or  "
                      f"[bold]cd {folder} && ollama create {written.name.split('.')[0].lower()} -f Modelfile[/]",
                      highlight=False)
    out.print(str(written), highlight=False, markup=False)
