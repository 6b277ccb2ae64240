"""tunelab's cache root: converted models, tokenised data, hardware measurements, the server's data."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """$TUNELAB_HOME, else ~/.cache/tunelab."""
    return Path(os.environ.get("TUNELAB_HOME") or Path.home() / ".cache" / "tunelab")
