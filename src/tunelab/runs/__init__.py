"""A run's directory as a typed object (paths, readers, atomic writers) and its progress seen from outside."""

from .directory import RunDir, RunDirError, RunResult, open_run, resumable
from .progress import Observation, Reporter, observe

__all__ = ["Observation", "Reporter", "RunDir", "RunDirError", "RunResult", "observe", "open_run", "resumable"]
