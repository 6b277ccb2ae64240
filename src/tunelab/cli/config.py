"""`tunelab config schema|reference|show`."""

from __future__ import annotations

import typer

from .common import out, user_errors

app = typer.Typer(help="Config schema and reference.", no_args_is_help=True)


@app.command("schema")
def schema_cmd() -> None:
    """Print the config's JSON schema (for editors and validation)."""
    from ..config.reference import json_schema

    print(json_schema())


@app.command("reference")
def reference_cmd() -> None:
    """Print the config reference (markdown): every key, default and meaning."""
    from ..config.reference import markdown_reference

    print(markdown_reference())


@app.command("show")
def show_cmd(
    config: str = typer.Argument(..., help="YAML config."),
    overrides: list[str] = typer.Argument(None, help="Dotted overrides."),
) -> None:
    """Validate a config and print it with every default filled in."""
    from ..config import dump_config, load_config

    with user_errors():
        out.print(dump_config(load_config(config, overrides or [])), highlight=False, markup=False)
