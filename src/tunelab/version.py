"""The installed tunelab version, importable from every layer (the package root sits on top of them all)."""

__version__ = "0.1.0"
