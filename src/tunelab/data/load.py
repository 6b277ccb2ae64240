"""Data path -> canonical Records plus every problem found, per file format detected or given."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .formats import FORMATS, apply_columns, detect_format, explain_unknown, to_record
from .limits import max_row_errors, stopped_reading
from .records import DataError, Problem, Record
from .sources import data_files, read_rows


@dataclass
class Loaded:
    records: list[Record] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    formats: dict[str, str] = field(default_factory=dict)  # file -> format
    rows: int = 0

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]


def load_records(
    path: str | Path,
    fmt: str = "auto",
    columns: dict[str, str] | None = None,
    system_prompt: str | None = None,
) -> Loaded:
    """Read and convert every row; bad rows become Problems, never exceptions."""
    if fmt != "auto" and fmt not in FORMATS:
        raise DataError([Problem(str(path), f"unknown format {fmt!r}; "
                                            f"expected auto or one of {', '.join(FORMATS)}")])
    out = Loaded()
    budget, errors, seen_problems = max_row_errors(), 0, 0
    for file in data_files(path):
        file_fmt = None if fmt == "auto" else fmt
        for raw in read_rows(file):
            errors += sum(p.severity == "error" for p in out.problems[seen_problems:])
            seen_problems = len(out.problems)
            if errors >= budget:
                out.problems.append(Problem(raw.where, stopped_reading(file, budget)))
                return out
            out.rows += 1
            if raw.data is None:
                out.problems.append(Problem(raw.where, raw.error))
                continue
            data = apply_columns(raw.data, columns or {})
            if file_fmt is None:
                file_fmt = detect_format(set(data))
                if file_fmt is None:  # keep looking: every row still gets checked
                    out.problems.append(Problem(raw.where, explain_unknown(set(data))))
                    continue
                out.formats[str(file)] = file_fmt
            rec, problems = to_record(raw.where, data, file_fmt, system_prompt)
            out.problems.extend(problems)
            if rec is not None:
                out.records.append(rec)
        if fmt != "auto":
            out.formats[str(file)] = fmt
    return out
