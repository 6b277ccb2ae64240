"""The web UI served by `tunelab serve` at /."""
