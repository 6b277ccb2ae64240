"""The quickstart: tune the default model on a customer-support intent task (banking77, shipped)."""

from __future__ import annotations

import os
import time
from importlib import resources
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .config import TunelabConfig, load_config
from .plan.fit import run
from .runs import RunDir, RunResult


def banking77_csv() -> Path:
    return Path(str(resources.files("tunelab").joinpath("examples", "banking77", "train.csv")))


def quickstart_config(rows: int, output_dir: str, eval_rows: int = 300,
                      name: str = "quickstart-banking77") -> TunelabConfig:
    return load_config(None, [
        f"name={name}", f"output_dir={output_dir}", "task=classification",
        f"data.train={banking77_csv()}", "data.columns={text: text, label: category}",
        "data.val_fraction=0.05", f"data.limit={rows}",
        "data.system_prompt=Classify the banking customer's message.",
        "train.epochs=1", "train.batch_size=16", f"eval.limit={eval_rows}",
        "eval.during_training=false",  # one epoch, one evaluation: the final scoring says the same
    ])


def side_by_side(run_dir: Path, console: Console, n: int = 8) -> None:
    preds = RunDir(run_dir).predictions() or []
    t = Table(title="Validation examples: base vs tuned", show_lines=False)
    for col in ("customer message", "true intent", "base model", "tuned model"):
        t.add_column(col, overflow="fold")
    for p in preds[:: max(1, len(preds) // n)][:n]:  # spread over the (label-sorted) file
        base, tuned = p.get("base_predicted", "-"), p["predicted"]
        shown = [f"[green]{x}[/]" if x == p["label"] else f"[red]{x}[/]" for x in (base, tuned)]
        t.add_row(p["text"][:70], p["label"], *shown)
    console.print(t)


MAX_ROWS, MIN_ROWS = 3000, 1000  # 3000 rows: +70 points on 2 cores; 1000 still shows well over +30
STARTED_ENV = "TUNELAB_QUICKSTART_SINCE"  # when `make quickstart` began (setup included), in epoch seconds


def sized_rows(output_dir: str, eval_rows: int, minutes: float, console: Console) -> int:
    """As many rows (up to MAX_ROWS) as let the whole quickstart, setup included, end within `minutes` on this
    machine: the estimate of the full-size run, its training time scaled down to the rows that fit."""
    from .plan.estimate import duration, estimate

    since = float(os.environ.get(STARTED_ENV) or time.time())
    with console.status("Sizing the run to this machine: a few real training steps..."):
        est = estimate(quickstart_config(MAX_ROWS, output_dir, eval_rows))
    left = minutes * 60 - (time.time() - since)
    per_row_part = est.phases["training"] + est.phases["evaluation"] + est.phases["checkpoints"]
    fixed = est.total_seconds - per_row_part
    per_row = per_row_part / max(est.train["rows"], 1)
    rows = int(max(MIN_ROWS, min(MAX_ROWS, (0.9 * left - fixed) / per_row)))
    rows = min(rows, est.train["rows"])
    console.print(f"Sized to this machine: {rows} training rows, about {duration(fixed + per_row * rows)} "
                  f"(at {est.train['tokens_per_s'] or 0:.0f} tokens/s; {duration(left)} left of {minutes:g} min)")
    return rows


def quickstart(rows: int | None = None, output_dir: str = "runs", console: Console | None = None,
               eval_rows: int = 300, minutes: float = 15) -> RunResult:
    """rows None: sized to end the quickstart within `minutes` here (sized_rows)."""
    console = console or Console(stderr=True)
    if rows is None:
        rows = sized_rows(output_dir, eval_rows, minutes, console)
    cfg = quickstart_config(rows, output_dir, eval_rows)
    console.rule("[bold]tunelab quickstart: customer-support intents (banking77, 77 intents)")
    console.print(f"Base model: {cfg.model.base} (embedded). Training on {rows} messages; scoring on "
                  f"held-out messages before and after.\nData: PolyAI banking77, CC-BY-4.0 "
                  f"(see {banking77_csv().parent / 'NOTICE.md'})")
    result = run(cfg, console=console)
    if result.status != "completed":
        return result
    s = result.summary
    side_by_side(result.run_dir, console)
    console.rule("[bold]Result")
    console.print(f"Accuracy on {s['eval_rows']} held-out messages: base [bold]{s['base_accuracy']:.1%}[/] -> "
                  f"tuned [bold green]{s['tuned_accuracy']:.1%}[/]  (trained {s['train_rows']} rows in "
                  f"{s['train_seconds'] / 60:.1f} min)")
    console.print(f"Report:        {RunDir(result.run_dir).report_html}\n"
                  f"Run directory: {result.run_dir}\n"
                  f"Chat with it:  tunelab chat {result.run_dir}\n"
                  f"Ask once:      tunelab generate {result.run_dir} \"I still haven't received my card\"")
    return result
