"""`tunelab generate` and `tunelab chat`."""

from __future__ import annotations

import typer
from rich.prompt import Prompt

from .common import console, out, user_errors


def generate_cmd(
    model: str = typer.Argument(..., help="Run directory, model directory, .gguf file or alias."),
    prompt: str = typer.Argument(..., help="The user message."),
    system: str | None = typer.Option(None, "--system", help="System message (defaults to the run's own)."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", "-n"),
    temperature: float = typer.Option(0.0, "--temperature", "-t", help="0 is greedy."),
) -> None:
    """One reply, streamed to stdout."""
    from ..inference import generate

    with user_errors():
        generate(model, prompt, system=system, max_new_tokens=max_new_tokens, temperature=temperature,
                 on_text=lambda s: out.print(s, end="", highlight=False, markup=False))
    out.print()


def chat_cmd(
    model: str = typer.Argument(..., help="Run directory, model directory, .gguf file or alias."),
    system: str | None = typer.Option(None, "--system", help="System message (defaults to the run's own)."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", "-n"),
    temperature: float = typer.Option(0.0, "--temperature", "-t"),
) -> None:
    """Talk to a model; /reset clears the history, /exit or Ctrl-D leaves."""
    from ..data.templates import trained_system_prompt
    from ..inference import describe, stream_reply
    from ..models.load import load

    with user_errors():
        lm = load(model)
    console.print(f"[bold]{describe(lm)}[/]  (/reset, /exit)")
    system = system or trained_system_prompt(lm.run_config())
    history: list[dict[str, str]] = []
    while True:
        try:
            text = Prompt.ask("[bold cyan]you[/]", console=console)
        except (EOFError, KeyboardInterrupt):
            break
        if text.strip() in ("/exit", "/quit"):
            break
        if text.strip() == "/reset":
            history.clear()
            continue
        if not text.strip():
            continue
        history.append({"role": "user", "content": text})
        msgs = ([{"role": "system", "content": system}] if system else []) + history
        out.print("[bold green]model[/] ", end="")
        reply = ""
        for piece in stream_reply(lm, msgs, max_new_tokens=max_new_tokens, temperature=temperature):
            reply += piece
            out.print(piece, end="", highlight=False, markup=False)
        out.print()
        history.append({"role": "assistant", "content": reply.strip()})
