from .load import LoadedModel, ModelError, load, resolve
from .registry import DEFAULT_MODEL

__all__ = ["DEFAULT_MODEL", "LoadedModel", "ModelError", "load", "resolve"]
