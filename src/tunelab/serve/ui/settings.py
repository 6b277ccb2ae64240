"""The new-job page's advanced settings, generated from the config schema's own field docs: every key a job may
set (the ones the job sets itself left out), grouped by section, each with its default and what it means."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache

from ...config.reference import flat_fields
from ...jobs.spec import SERVICE_KEYS

SECTION_TITLES = {"": "What to train", "model": "Model", "data": "Data", "peft": "Parameter-efficient tuning (LoRA)",
                  "train": "Training", "eval": "Evaluation", "classification": "Classification",
                  "preference": "Preference tuning", "rl": "Reinforcement (graders and rewards)"}


@dataclass(frozen=True)
class Setting:
    key: str
    default: str  # as JSON: what the field shows as its placeholder, and the value left out when unchanged
    summary: str  # the doc's first sentence
    doc: str
    kind: str  # "bool" | "number" | "text"


@cache
def advanced_settings() -> list[tuple[str, list[Setting]]]:
    groups: dict[str, list[Setting]] = {}
    for key, default, doc in flat_fields():
        if key in SERVICE_KEYS or key.startswith("sweep."):  # a job trains once; a sweep is its own command
            continue
        section = key.split(".")[0] if "." in key else ""
        kind = ("bool" if isinstance(default, bool) else
                "number" if isinstance(default, int | float) else "text")
        summary = doc.split(". ")[0].rstrip(".") + "." if doc else ""
        groups.setdefault(section, []).append(Setting(key, json.dumps(default), summary, doc, kind))
    return [(SECTION_TITLES.get(s, s), rows) for s, rows in groups.items()]
