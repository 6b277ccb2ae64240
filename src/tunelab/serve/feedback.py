"""Feedback -> training data for the next round.

SFT rows: a prompt with its corrected answer, or with an answer rated up. Preference pairs: for the same
prompt, a corrected or up-rated answer preferred over a down-rated one (a correction also beats the
answer it corrects). Both in formats tunelab trains on: chat rows ({"messages"}) / prompt-completion rows,
and TRL's prompt/chosen/rejected.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import atomic
from .store import Store


@dataclass
class Exported:
    sft: list[dict[str, Any]] = field(default_factory=list)
    pairs: list[dict[str, Any]] = field(default_factory=list)
    feedback: int = 0
    no_content: int = 0  # feedback on requests logged without their text

    def summary(self) -> dict[str, int]:
        return {"feedback": self.feedback, "sft_rows": len(self.sft), "preference_pairs": len(self.pairs),
                "skipped_no_content": self.no_content}


def collect(store: Store, adapter: str | None) -> Exported:
    out = Exported()
    groups: dict[str, dict[str, Any]] = {}  # prompt key -> {"prompt", "good": [...], "bad": [...]}
    for fb, req in store.feedback_for(adapter):
        out.feedback += 1
        answer = req.completion
        if req.prompt is None or answer is None:
            out.no_content += 1
            continue
        prompt = json.loads(req.prompt)
        key = json.dumps(prompt, sort_keys=True)
        g = groups.setdefault(key, {"prompt": prompt, "good": [], "bad": []})
        if fb.correction:
            g["good"].append(fb.correction)
            g["bad"].append(answer)
        elif fb.rating == "up":
            g["good"].append(answer)
        else:
            g["bad"].append(answer)
    for g in groups.values():
        good = list(dict.fromkeys(g["good"]))
        bad = [b for b in dict.fromkeys(g["bad"]) if b not in good]
        for answer in good:
            out.sft.append(_sft_row(g["prompt"], answer))
        for chosen in good:
            for rejected in bad:
                out.pairs.append(_pair(g["prompt"], chosen, rejected))
    return out


def _sft_row(prompt: dict[str, Any], answer: str) -> dict[str, Any]:
    if "messages" in prompt:
        return {"messages": [*prompt["messages"], {"role": "assistant", "content": answer}]}
    return {"prompt": _text_prompt(prompt), "completion": answer}


def _pair(prompt: dict[str, Any], chosen: str, rejected: str) -> dict[str, Any]:
    if "messages" in prompt:
        return {"prompt": prompt["messages"], "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}]}
    return {"prompt": _text_prompt(prompt), "chosen": chosen, "rejected": rejected}


def _text_prompt(prompt: dict[str, Any]) -> str:
    p = prompt["prompt"]
    return p if isinstance(p, str) else p[0]


def write(exported: Exported, out: Path) -> dict[str, Path]:
    """Write sft.jsonl and preference.jsonl atomically (a file is there whole or not at all)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, rows in (("sft.jsonl", exported.sft), ("preference.jsonl", exported.pairs)):
        paths[name] = atomic.write_text(out / name, "".join(json.dumps(row, ensure_ascii=False) + "\n"
                                                            for row in rows))
    return paths
