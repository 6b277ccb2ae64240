"""The run directory: runs/<name>/ with config, data report, metrics, checkpoints, adapter, summary.

summary.json carries a status; only "completed" runs are loadable as models, so an interrupted or
failed run never looks finished.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import TunelabConfig, dump_config


class RunDirError(ValueError):
    pass


@dataclass
class RunDir:
    path: Path

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    def write_json(self, name: str, data: Any) -> Path:
        p = self.path / name
        tmp = p.with_suffix(p.suffix + ".tmp")
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
        tmp.replace(p)
        return p

    def write_data_report(self, report: dict[str, Any], skipped: list[Any], console: Any) -> None:
        """data_report.json, and the rows skipped with data.on_error: skip in skipped_rows.jsonl."""
        self.write_json("data_report.json", report)
        if skipped:
            with (self.path / "skipped_rows.jsonl").open("w") as f:
                for p in skipped:
                    f.write(json.dumps(p.to_dict()) + "\n")
            console.print(f"[yellow]Skipped {len(skipped)} bad row(s); see {self.path / 'skipped_rows.jsonl'}[/]")

    def read_json(self, name: str) -> Any:
        return json.loads((self.path / name).read_text())

    def status(self, status: str, **extra: Any) -> None:
        current: dict[str, Any] = {}
        if (self.path / "summary.json").exists():
            current = self.read_json("summary.json")
        current.update(extra, status=status, updated=time.strftime("%Y-%m-%dT%H:%M:%S"))
        if status != "failed":
            current.pop("error", None)
        self.write_json("summary.json", current)

    def last_checkpoint(self) -> Path | None:
        from transformers.trainer_utils import get_last_checkpoint

        if not self.checkpoints.is_dir():
            return None
        last = get_last_checkpoint(str(self.checkpoints))
        return Path(last) if last else None

    def trim_metrics(self, upto_step: int) -> None:
        """Drop metric lines past a checkpoint so a resumed run logs each step once."""
        if not self.metrics.exists():
            return
        keep = []
        for ln in self.metrics.read_text().splitlines():
            try:
                if json.loads(ln).get("step", 0) <= upto_step:
                    keep.append(ln)
            except ValueError:  # a line cut short when the process was killed
                continue
        self.metrics.write_text("".join(ln + "\n" for ln in keep))


def resumable(output_dir: str, name: str) -> str:
    """The run to resume for a config name: the newest unfinished one among name, name-2, name-3..."""
    base = Path(output_dir)
    candidates = [base / name] + sorted(base.glob(f"{name}-*"), key=lambda p: p.stat().st_mtime)
    unfinished = [p for p in candidates if (p / "summary.json").is_file()
                  and json.loads((p / "summary.json").read_text()).get("status") != "completed"]
    if not unfinished:
        return name
    return max(unfinished, key=lambda p: (p / "summary.json").stat().st_mtime).name


def open_run(cfg: TunelabConfig, resume: bool) -> RunDir:
    """Create a new run directory, or reopen one to resume."""
    path = Path(cfg.output_dir) / str(cfg.name)
    if resume:
        if not (path / "summary.json").exists():
            raise RunDirError(f"{path}: nothing to resume (no such run); start it without --resume")
        run = RunDir(path)
        if run.read_json("summary.json").get("status") == "completed":
            raise RunDirError(f"{path} already completed: there is nothing to resume")
        run.status("running")
        return run
    if path.exists() and any(path.iterdir()):
        summary = path / "summary.json"
        status = json.loads(summary.read_text()).get("status") if summary.exists() else "unknown"
        if status == "completed":
            n = 2
            while (path.parent / f"{path.name}-{n}").exists():
                n += 1
            path = path.parent / f"{path.name}-{n}"
            cfg.name = path.name
        else:
            raise RunDirError(
                f"{path} holds an unfinished run (status {status!r}): continue it with --resume, "
                f"or start a new one with name=<other-name>")
    path.mkdir(parents=True, exist_ok=True)
    run = RunDir(path)
    (path / "config.yaml").write_text(dump_config(cfg))
    run.status("running", name=cfg.name, started=time.strftime("%Y-%m-%dT%H:%M:%S"))
    return run
