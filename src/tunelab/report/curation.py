"""The curation page (and the run report's curation section): what each step found, every removed or changed
row with its reason and text. Reads curation.json's dict, so a run's report and `data curate` show the same."""

from __future__ import annotations

import io
from typing import Any

from ..data.curate.run import FINDINGS_JSON, Curated
from .html import CSS, esc, html_table, img_tag, md

TITLES = {"unreadable": "Unreadable rows", "format": "Rows training can't use (see `tunelab data check`)",
          "quality": "Quality filters", "duplicates": "Exact and near-duplicates",
          "leaks": "Leaks: validation rows that copy training rows",
          "contamination": "Contamination of the evaluation data", "labels": "Suspect labels (ranked for review)",
          "personal_data": "Personal data"}
ACTIONS = {"drop": "removed", "change": "changed", "flag": "flagged, kept"}
SHOWN = 200  # rows listed per step on the page; curation.json has them all


def _short(step: str) -> str:
    return TITLES[step].split(" (")[0].split(":")[0]


def summary_lines(d: dict[str, Any]) -> list[str]:
    """What curation did, in a few sentences (printed by the CLI, on top of the page and in the run report)."""
    read, kept = d.get("read") or {}, d.get("kept") or {}
    out = [f"Read {sum(read.values()):,} rows, kept {sum(kept.values()):,}."]
    for step, acts in (d.get("steps") or {}).items():
        if step in TITLES:
            out.append(f"{_short(step)}: " + ", ".join(f"{n:,} {ACTIONS[a]}" for a, n in sorted(acts.items())) + ".")
    return out + list(d.get("notes") or [])


def _chart(steps: dict[str, dict[str, int]]) -> bytes | None:
    names = [s for s in steps if s in TITLES][::-1]
    if not names:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 1.2))
    left = [0] * len(names)
    for action, colour in (("drop", "#dc2626"), ("change", "#2563eb"), ("flag", "#d97706")):
        vals = [steps[s].get(action, 0) for s in names]
        ax.barh([_short(s) for s in names], vals, left=left, color=colour, label=ACTIONS[action])
        left = [a + b for a, b in zip(left, vals, strict=True)]
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("rows")
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, fontsize=8, frameon=False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _detail(step: str, d: dict[str, Any]) -> str:
    if step == "labels":
        return f"#{d.get('rank', '')}"
    if step == "duplicates":
        return f"cluster {d.get('cluster', '')} ({d.get('size', '')} rows)"
    return ""


def body(d: dict[str, Any], level: int = 2) -> str:
    """Summary, chart and one table per step, from curation.json's dict."""
    parts = [f"<p>{md(line)}</p>" for line in summary_lines(d)]
    chart = _chart(d.get("steps") or {})
    if chart:
        parts.append(img_tag(chart, "rows removed, changed and flagged per step"))
    findings, texts = d.get("findings") or [], d.get("texts") or {}
    if not findings:
        parts.append('<div class="verdict better">Nothing to remove or change: the rows look clean.</div>')
    for step in TITLES:
        found = [f for f in findings if f.get("step") == step]
        if not found:
            continue
        rows = []
        for f in found[:SHOWN]:
            extra = _detail(step, f.get("detail") or {})
            rows.append([esc(f.get("where")), ACTIONS.get(f.get("action"), esc(f.get("action"))),
                         md(f.get("reason", "")) + (f' <span class="sub">{esc(extra)}</span>' if extra else ""),
                         esc(texts.get(f.get("where"), ""))])
        more = (f'<p class="sub">… and {len(found) - SHOWN:,} more in {FINDINGS_JSON}</p>' if len(found) > SHOWN
                else "")
        parts.append(f"<h{level}>{md(TITLES[step])}: {len(found):,}</h{level}>"
                     + html_table(rows, ["row", "what", "why", "text"], "ex") + more)
    return "\n".join(parts)


def render(result: Curated, title: str = "Curation report") -> str:
    """The standalone page `tunelab data curate` writes (curation.html)."""
    d = result.to_dict() | {"texts": result.texts}
    head = f'<h1>{esc(title)}</h1><div class="sub">settings: {esc(_settings(result.settings))}</div>'
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{esc(title)}</title><style>{CSS}</style>'
            f"</head><body><main>\n{head}\n{body(d)}\n</main></body></html>\n")


def curation_facts(d: dict[str, Any] | None) -> dict[str, Any] | None:
    """The run report's part: curation.json's summary and its first findings of each step."""
    if not d:
        return None
    findings = d.get("findings") or []
    shown = [f for step in TITLES for f in [x for x in findings if x.get("step") == step][:20]]
    texts = d.get("texts") or {}
    return {"read": d.get("read"), "kept": d.get("kept"), "steps": d.get("steps"), "notes": d.get("notes"),
            "findings": shown, "texts": {f["where"]: texts[f["where"]] for f in shown if f.get("where") in texts},
            "total_findings": len(findings)}


def _settings(s: dict[str, Any]) -> str:
    q = s.get("quality") or {}
    on = [k for k in ("duplicates",) if s.get(k)] + [f"{k}={s[k]}" for k in ("leaks", "personal_data", "labels")
                                                      if k in s]
    on += [f"quality.{k}={v}" for k, v in q.items() if v not in (None, False)]
    return ", ".join(on)
