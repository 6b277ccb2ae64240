"""A run's directory as a typed object (paths, readers, atomic writers) and its progress seen from outside."""

from .directory import RunDir, RunDirError, RunResult, checkpoint_step, open_run, resumable
from .progress import Observation, Reporter, SilentReporter, observe

__all__ = ["Observation", "Reporter", "RunDir", "RunDirError", "RunResult", "SilentReporter", "checkpoint_step",
           "observe", "open_run", "resumable"]
