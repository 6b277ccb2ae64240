"""A run's report: what tuning did, in plain words, with curves, metrics, examples and probes."""

from .build import build, write_report
from .source import load_run

__all__ = ["build", "load_run", "write_report"]
