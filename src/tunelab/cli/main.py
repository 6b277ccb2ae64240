"""The `tunelab` command: one thin module per command."""

from __future__ import annotations

import typer

from ..config.reference import keys_help
from . import config as config_cli
from . import data as data_cli
from . import jobs as jobs_cli
from .common import quiet_libraries
from .estimate import estimate_cmd
from .eval import eval_cmd
from .export import export_cmd
from .generate import chat_cmd, generate_cmd
from .init import init_cmd
from .probe import probe_cmd
from .quickstart import quickstart_cmd
from .report import report_cmd
from .serve import feedback_app, monitor_cmd, serve_cmd
from .status import status_cmd
from .sweep import sweep_cmd
from .train import train_cmd

app = typer.Typer(
    help="Fine-tune language models for your domain: data -> train -> validate -> try it.",
    no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
)
app.callback()(lambda: quiet_libraries())
app.command("quickstart")(quickstart_cmd)
app.command("init")(init_cmd)
app.add_typer(data_cli.app, name="data")
app.command("estimate", epilog=keys_help())(estimate_cmd)
app.command("train", epilog=keys_help())(train_cmd)
app.command("sweep", epilog=keys_help())(sweep_cmd)
app.command("status")(status_cmd)
app.command("generate")(generate_cmd)
app.command("chat")(chat_cmd)
app.command("report")(report_cmd)
app.command("eval")(eval_cmd)
app.command("probe")(probe_cmd)
app.command("export")(export_cmd)
app.command("serve")(serve_cmd)
app.command("monitor")(monitor_cmd)
app.add_typer(feedback_app, name="feedback")
app.add_typer(jobs_cli.app, name="jobs")
app.command("worker")(jobs_cli.worker_cmd)
app.add_typer(config_cli.app, name="config")

if __name__ == "__main__":
    app()
