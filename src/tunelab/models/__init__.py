from .load import LoadedModel, ModelError, load, resolve
from .registry import DEFAULT_MODEL, home

__all__ = ["DEFAULT_MODEL", "LoadedModel", "ModelError", "home", "load", "resolve"]
