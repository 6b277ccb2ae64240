"""What every command shares: one console, and user errors printed plainly instead of tracebacks."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import typer
from rich.console import Console

from .. import distributed

console = Console(stderr=True, soft_wrap=True)  # long file:line paths stay on one line in logs
out = Console(soft_wrap=True)  # results meant for stdout (JSON, replies)


def quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors a user can fix into a red message and exit status 2."""
    from ..errors import TunelabError

    try:
        yield
    except (TunelabError, FileNotFoundError) as exc:
        # a process beside main keeps its console quiet, not its errors (on another machine they are all it says)
        where = Console(stderr=True, soft_wrap=True) if console.quiet else console
        who = f" (training process {distributed.rank()})" if not distributed.is_main() else ""
        where.print(f"[red bold]error{who}:[/] {exc}", highlight=False, markup=True, soft_wrap=True)
        raise typer.Exit(2) from None


def run_path(given: str | Path) -> Path:
    """A run directory as the user names it: a path, or a run's name under ./runs."""
    path = Path(given)
    if not path.exists() and not path.is_absolute() and (Path("runs") / path).is_dir():
        return Path("runs") / path
    return path


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
