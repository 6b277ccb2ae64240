"""`tunelab train CONFIG [key=value ...] [--resume]`."""

from __future__ import annotations

import typer

from .common import console, user_errors


def train_cmd(
    config: str = typer.Argument(..., help="YAML config (see `tunelab init`)."),
    overrides: list[str] = typer.Argument(None, help="Dotted overrides, e.g. train.learning_rate=1e-4"),
    resume: bool = typer.Option(False, "--resume", help="Continue this config's run from its last checkpoint."),
    nproc: int = typer.Option(1, "--nproc", min=1, help="Train in N processes on this machine (data-parallel, "
                              "through torchrun: gloo on CPU, nccl on GPUs). The batch is the whole step's: N "
                              "processes train the same model as one. Several machines: see docs/distributed.md."),
) -> None:
    """Fine-tune a model as the config says; writes runs/<name>/."""
    from .. import distributed
    from ..config import ConfigError, load_config
    from ..plan import fit

    if not distributed.is_main():
        console.quiet = True  # one of several processes: the main one speaks for the run
    with user_errors():
        cfg = load_config(config, overrides or [])
        if resume:  # the same run: its saved config, with any overrides given now
            from ..runs.directory import resume_config

            cfg = resume_config(cfg, overrides or [])
        # FSDP (train.sharding) needs a process group, also for one process (a GPU with its shards offloaded)
        if nproc > 1 or (cfg.train.sharding != "none" and not distributed.launched()):
            if distributed.launched():
                raise ConfigError(f"--nproc {nproc} given to a process that a launcher started already (as one of "
                                  f"{distributed.world_size()}): leave --nproc out, the launcher sets the count")
            from .launch import launch

            code = launch(["train", config, *(overrides or []), *(["--resume"] if resume else [])], nproc)
            raise typer.Exit(code)
        result = fit.run(cfg, resume=resume, console=console)
    s = result.summary
    if result.status != "completed":
        raise typer.Exit(130)
    if not distributed.is_main():
        return
    console.print(f"\n[green bold]Done[/] in {s.get('train_seconds', 0):.0f} s: {result.run_dir}")
    for key in ("train_loss", "eval_loss", "base_accuracy", "tuned_accuracy"):
        if key in s:
            val = s[key]
            console.print(f"  {key:<15} {val:.1%}" if "accuracy" in key else f"  {key:<15} {val:.4f}")
    console.print(f"Try it:  tunelab chat {result.run_dir}\n"
                  f"         tunelab generate {result.run_dir} \"your prompt\"")
