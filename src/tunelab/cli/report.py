"""`tunelab report RUN [--open]`: a self-contained HTML report of a run (and report.json beside it)."""

from __future__ import annotations

import typer

from .common import console, out, run_path, user_errors


def report_cmd(
    run: str = typer.Argument(..., help="Run directory, e.g. runs/my-run (or a run name under ./runs)."),
    open_: bool = typer.Option(False, "--open/--no-open", help="Open the report in a web browser."),
) -> None:
    """Write report.html and report.json into the run directory and print the HTML file's path."""
    from ..report import write_report

    path = run_path(run)
    with user_errors():
        html_path, json_path = write_report(path)
    import json

    facts = json.loads(json_path.read_text())
    verdict = facts.get("verdict", {}).get("text")
    if facts.get("caveat"):  # medical or legal data: the model's limits first
        console.print(f"Limits: {facts['caveat']}", highlight=False, markup=False)
    if verdict:
        console.print(verdict, highlight=False, markup=False)
    out.print(str(html_path), highlight=False, markup=False)
    if open_:
        import webbrowser

        webbrowser.open(html_path.resolve().as_uri())
