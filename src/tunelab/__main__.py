"""`python -m tunelab …`, as launchers start it: `torchrun --nproc-per-node 2 -m tunelab train CONFIG`."""

from tunelab.cli.main import app

app(prog_name="tunelab")
