"""`tunelab probe RUN_OR_MODEL`: forgetting and bias probes, base vs tuned, into the run's probes.json."""

from __future__ import annotations

import json

import typer

from .common import console, out, user_errors


def probe_cmd(
    model: str = typer.Argument(..., help="Run directory (compared with its base), model directory or alias."),
    questions: list[str] = typer.Option([], "--questions", help="Extra forgetting questions (JSON Lines: "
                                        "question, answers). Repeatable."),
    texts: list[str] = typer.Option([], "--texts", help="Extra general text for perplexity (JSON Lines: text)."),
    bias_file: list[str] = typer.Option([], "--bias-file", help="Extra counterfactual probes (YAML: templates, "
                                        "attributes). Repeatable."),
    no_forgetting: bool = typer.Option(False, "--no-forgetting", help="Skip the forgetting probes."),
    no_bias: bool = typer.Option(False, "--no-bias", help="Skip the bias probes."),
    max_new_tokens: int | None = typer.Option(None, "--max-new-tokens", min=1, help="Longest probe answer in "
                                              "tokens (default: the run's eval.probes.max_new_tokens, else 40)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """Did tuning make the model forget general knowledge, or treat people differently? Base vs tuned."""
    from ..config.evaluation import ProbesConfig
    from ..models.load import load
    from ..probes.run import run_probes, subject_for, summary_line
    from ..runs import RunDir

    with user_errors():
        lm = load(model)
        cfg = lm.run_config()
        # a run's own probe settings (its question files, thresholds), with what is asked here added
        own = cfg.eval.probes if cfg is not None else ProbesConfig()
        settings = own.model_copy(update={
            "questions": [*own.questions, *questions], "texts": [*own.texts, *texts],
            "bias_files": [*own.bias_files, *bias_file], "forgetting": own.forgetting and not no_forgetting,
            "bias": own.bias and not no_bias, "max_new_tokens": max_new_tokens or own.max_new_tokens})
        result = run_probes(subject_for(lm), settings, console=console)
        if lm.resolved.run is not None:
            path = RunDir(lm.resolved.run).write_probes(result)
            console.print(f"Wrote {path}; `tunelab report {lm.resolved.run}` shows it", highlight=False)
    if as_json:
        out.print_json(json.dumps(result))
    else:
        console.print(summary_line(result), highlight=False)
