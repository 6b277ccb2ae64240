"""The quickstart: tune the default model on a customer-support intent task (banking77, shipped)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .config import TunelabConfig, load_config
from .recipes.dispatch import run
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


def quickstart(rows: int = 3000, output_dir: str = "runs", console: Console | None = None,
               eval_rows: int = 300) -> RunResult:
    console = console or Console(stderr=True)
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
