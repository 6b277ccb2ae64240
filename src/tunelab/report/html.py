"""The report page: one self-contained HTML file (inline CSS, charts as data URIs) from the built facts."""

from __future__ import annotations

import base64
import html
import re
from typing import Any

from ..runs import layout as files
from .numbers import METRIC_NAMES, METRIC_ORDER, fmt_diff, fmt_value, is_share, num, pct

# --- HTML ------------------------------------------------------------------------------------------

CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#111827;background:#f9fafb;margin:0}
main{max-width:1000px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 10px;border-bottom:1px solid #e5e7eb;
padding-bottom:4px}
.sub{color:#6b7280;font-size:13px;margin-bottom:16px}
.verdict{padding:16px 18px;border-radius:8px;font-size:17px;font-weight:600;border-left:6px solid}
.better{background:#ecfdf5;border-color:#059669}.worse{background:#fef2f2;border-color:#dc2626}
.unclear,.same{background:#fffbeb;border-color:#d97706}
.no_comparison,.no_metrics{background:#eff6ff;border-color:#2563eb}
.banner{background:#fef2f2;border:1px solid #fca5a5;color:#991b1b;padding:10px 14px;border-radius:6px;
margin-bottom:12px;font-weight:600}
.note{background:#f3f4f6;border-left:4px solid #9ca3af;padding:8px 12px;border-radius:4px;color:#374151;
margin:8px 0}
.warn{color:#b45309;font-weight:600}
table{border-collapse:collapse;background:#fff;font-size:14px;margin:6px 0}
td,th{border:1px solid #e5e7eb;padding:4px 10px;text-align:left;vertical-align:top}
th{background:#f3f4f6}td.n{text-align:right;font-variant-numeric:tabular-nums}
.facts td:first-child{color:#4b5563;white-space:nowrap}
.ok{color:#047857}.bad{color:#b91c1c}
.ex td{max-width:320px;word-wrap:break-word}
img{max-width:100%;height:auto;background:#fff;border:1px solid #e5e7eb;border-radius:4px}
.scroll{overflow:auto;max-height:90vh;border:1px solid #e5e7eb}.scroll img.big{max-width:none;border:0}
code{background:#f3f4f6;padding:1px 4px;border-radius:3px;font-size:13px}
.probeline{margin:6px 0 0;padding:6px 18px;border-left:6px solid #059669;background:#f0fdf4;font-size:14px}
.probeline.warnline{border-color:#d97706;background:#fffbeb}
.cols{display:flex;gap:24px;flex-wrap:wrap;align-items:flex-start}
footer{color:#9ca3af;font-size:12px;margin-top:32px}
"""


def esc(x: Any) -> str:
    return html.escape("" if x is None else str(x))


def md(text: str) -> str:
    """Escape, then show `backticked` commands as code."""
    parts = esc(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def img_tag(png: bytes, alt: str) -> str:
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _note(text: str) -> str:
    return f'<p class="note">{md(text)}</p>'


NUMBER = re.compile(r"^[+−]?[\d.,]+(%| pts| s)?$|^–$")


def _two(x: Any) -> str:
    v = num(x)
    return "–" if v is None else f"{v:.2f}"


def html_table(rows: list[list[str]], head: list[str] | None = None, cls: str = "") -> str:
    h = "<tr>" + "".join(f"<th>{c}</th>" for c in head) + "</tr>" if head else ""
    body = "".join("<tr>" + "".join(f"<td{' class=n' if NUMBER.match(c) else ''}>{c}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f'<table class="{cls}">{h}{body}</table>'


def _metrics_html(f: dict[str, Any]) -> str:
    m = f["metrics"]
    tuned, base = m["tuned"], m["base"]
    if not tuned:
        return _note(f["missing"]["metrics"])
    names = [k for k in METRIC_ORDER if k in tuned or k in base]
    names += [k for k in list(tuned) + list(base) if k not in names and num(tuned.get(k, base.get(k))) is not None]
    rows = []
    for k in dict.fromkeys(names):
        t, b = num(tuned.get(k)), num(base.get(k))
        share = is_share(k, t, b)
        diff = fmt_diff(t - b, share, 1) + (" pts" if share else "") if t is not None and b is not None else "–"
        rows.append([esc(METRIC_NAMES.get(k, k)), fmt_value(k, t, share, 1), fmt_value(k, b, share, 1), diff])
    where = f"{m['rows']} rows of " if m.get("rows") else ""
    out = (f'<p class="sub">From {esc(m["source"])}: {esc(where)}{esc(m.get("data") or "your data")}. '
           + (f"{esc(m['skipped_rows'])} bad rows were skipped. " if m.get("skipped_rows") else "")
           + "Loss and perplexity: lower is better; the rest: higher is better.</p>")
    out += html_table(rows, ["metric", "tuned", "base", "difference"])
    comp = f.get("comparison") or {}
    if comp.get("wins") is not None:
        name = METRIC_NAMES.get(comp["metric"], comp["metric"])
        out += (f'<p class="sub">Row by row on {esc(name)}: the tuned model did better on {esc(comp["wins"])} rows, '
                f'worse on {esc(comp.get("losses"))}, the same on {esc(comp.get("ties"))}.'
                + (f' Interval: {esc(comp["method"])}.' if comp.get("method") else "") + "</p>")
    for key in ("base", "eval_task"):
        if key in f["missing"]:
            out += _note(f["missing"][key])
    weak = m.get("weakest_classes") or []
    if weak:
        out += "<h3>Per label (weakest first)</h3>" + html_table(
            [[esc(w["label"]), f"{w['f1']:.2f}", _two(w.get("precision")), _two(w.get("recall")), esc(w.get("support")),
              f"{w['base_f1']:.2f}" if num(w.get("base_f1")) is not None else "–"] for w in weak],
            ["label", "F1", "precision", "recall", "rows", "base F1"])
    return out


def _evaluations_html(evals: list[dict[str, Any]]) -> str:
    """Every evaluation kept in the run, side by side; the one the verdict is about is marked."""
    rows = []
    for e in evals:
        metric = e.get("metric") or "–"
        t, b = num(e.get("tuned")), num(e.get("base"))
        share = is_share(metric, t, b)
        ci = e.get("ci95")
        interval = (f"{fmt_diff(ci[0], share, 1)} to {fmt_diff(ci[1], share, 1)}" if isinstance(ci, list)
                    and len(ci) == 2 and all(num(x) is not None for x in ci) else "–")
        rows.append([esc(e.get("data")) + (" <b>(verdict)</b>" if e.get("headline") else ""), esc(e.get("task")),
                     esc(e.get("rows")), esc(METRIC_NAMES.get(metric, metric)), fmt_value(metric, t, share, 1),
                     fmt_value(metric, b, share, 1), interval, f"<code>{esc(e['source'])}</code>"])
    return ('<p class="sub">Each evaluation of this run is kept under the name of its data (`tunelab eval RUN '
            '--data FILE` adds one); the verdict is about the one marked.</p>'
            + html_table(rows, ["data", "scored as", "rows", "metric", "tuned", "base", "95% CI of the difference",
                            "file"]))


def _preference_html(f: dict[str, Any], imgs: dict[str, bytes]) -> str:
    pref = f["preference"]
    facts = html_table([[esc(k), esc(v)] for k, v in pref["rows"]], cls="facts")
    out = f'<p class="sub">{esc(pref["explain"])}</p>' + facts
    if "preference_curves" in imgs:
        out += img_tag(imgs["preference_curves"], "preference and reward metrics over training steps")
    else:
        out += _note(f"No preference metrics were logged during training ({files.METRICS} is missing or has "
                     "none).")
    return out


def _data_html(f: dict[str, Any], imgs: dict[str, bytes]) -> str:
    d = f.get("data")
    if d is None:
        return _note(f["missing"]["data"])
    rows = []
    if d.get("unit") is None:  # an SFT data report; preference and RL runs report pairs or prompts below
        rows = [["source", esc(d.get("source"))], ["rows", esc(d.get("rows"))],
                ["valid rows", esc(d.get("valid_rows"))]]
        errs, warns = d.get("errors") or 0, d.get("warnings") or 0
        rows.append(["errors", f'<span class="{"bad" if errs else ""}">{esc(errs)}</span>'])
        rows.append(["warnings", f'<span class="{"warn" if warns else ""}">{esc(warns)}</span>'])
        rows.append(["exact duplicates", esc(d.get("duplicates"))])
    if d.get("max_length"):
        rows.append([f"over {esc(d['max_length'])} tokens",
                     f"{esc(d.get('truncated', 0))} truncated, {esc(d.get('dropped_too_long', 0))} dropped"])
    if d.get("train_rows") is not None:
        unit = d.get("unit") or "rows"
        rows.append([f"train / validation {unit}", f"{esc(d['train_rows'])} / {esc(d.get('validation_rows'))}"])
    if d.get("format"):
        rows.append(["format", esc(d["format"])])
    if d.get("skipped"):
        rows.append(["left out", f'<span class="warn">{esc(d["skipped"])}</span> (listed in {files.SKIPPED_ROWS})'])
    ov = d.get("train_validation_overlap")
    if ov is not None:
        rows.append(["validation rows also in training",
                     f'<span class="warn">{esc(ov)}: validation scores are optimistic</span>' if ov else "0"])
    if d.get("train_validation_leaks"):
        rows.append(["validation rows nearly copying training rows",
                     f'<span class="warn">{esc(d["train_validation_leaks"])}: set data.curate to remove them</span>'])
    if d.get("tokens_per_epoch"):
        rows.append(["tokens per epoch", f"{d['tokens_per_epoch']:,}"])
    if d.get("labels"):
        rows.append(["labels", f"{d['labels']} (smallest {d['smallest_label']} rows, largest {d['largest_label']})"])
    out = html_table(rows, cls="facts")
    if "length_histogram" in imgs:
        hist = img_tag(imgs["length_histogram"], "length histogram")
        out = f'<div class="cols"><div>{out}</div><div>{hist}</div></div>'
    return out


def _examples_html(f: dict[str, Any]) -> str:
    ex = f.get("examples")
    if ex is None:
        return _note(f["missing"]["examples"])
    exact = f["classification"]

    def cell(v: Any, ref: Any, ok: bool | None = None, reward: float | None = None) -> str:
        if v is None:
            return "–"
        text = str(v)
        text = text if len(text) <= 400 else text[:399] + "…"
        if reward is not None:  # a grader's answer: its reward beside the mark
            text = f"[{reward:.3g}] {text}"
        if ok is None and not exact:
            return esc(text)
        ok = v == ref if ok is None else ok
        return f'<span class="{"ok" if ok else "bad"}">{"✓" if ok else "✗"} {esc(text)}</span>'

    rows = [[esc(r["input"] if len(r["input"]) <= 400 else r["input"][:399] + "…"), esc(r.get("reference")),
             cell(r.get("tuned"), r.get("reference"), r.get("tuned_ok"), r.get("tuned_reward")),
             cell(r.get("base"), r.get("reference"), r.get("base_ok"), r.get("base_reward"))] for r in ex["rows"]]
    head = ["input", "expected label" if exact else "reference", "tuned", "base"]
    out = f'<p class="sub">{len(rows)} rows from {esc(ex["source"])}.'
    if exact and ex["source"] == files.PREDICTIONS:
        out += " Rows where the two models differ come first."
    out += "</p>" + html_table(rows, head, "ex")
    if "example_base" in f["missing"]:
        out += _note(f["missing"]["example_base"])
    return out


def _mark(ok: Any, text: Any) -> str:
    if ok is None:
        return esc(text) if text is not None else "–"
    shown = str(text) if len(str(text)) <= 200 else str(text)[:199] + "…"
    return f'<span class="{"ok" if ok else "bad"}">{"✓" if ok else "✗"} {esc(shown)}</span>'


def _probe_part(f: dict[str, Any], key: str) -> dict[str, Any] | str:
    """One probe's facts, or the note that says why there are none."""
    p = f.get("probes")
    if p is None:
        return _note(f["missing"]["probes"])
    part = p.get(key)
    return part or _note(f"The {key} probes were switched off for this run (eval.probes.{key}).")


def _forgetting_html(f: dict[str, Any], imgs: dict[str, bytes]) -> str:
    fg = _probe_part(f, "forgetting")
    if isinstance(fg, str):
        return fg
    if fg.get("skipped"):
        return _note(f"Not measured: {fg['skipped']}.")
    t, b = fg.get("tuned") or {}, fg.get("base") or {}
    rows = []
    for key, name, share in (("qa_accuracy", "general questions answered correctly", True),
                             ("perplexity", "perplexity on general text (lower is better)", False),
                             ("empty_rate", "empty answers", True), ("repetition_rate", "answers that loop", True),
                             ("avg_words", "average answer length (words)", False)):
        tv, bv = num(t.get(key)), num(b.get(key))
        fmt = (lambda v: "–" if v is None else f"{v:.0%}") if share else (lambda v: "–" if v is None else f"{v:.1f}")
        rows.append([esc(name), fmt(bv), fmt(tv)])
    out = (f'<p class="sub">{esc(fg.get("questions"))} short general-knowledge questions with checkable answers and '
           "a few paragraphs of everyday prose, shipped with tunelab, asked of the base and the tuned model. A "
           "tuned model that answers fewer of them, or finds plain text less likely, has lost some general "
           "ability.</p>")
    for topic, t in (fg.get("by_topic") or {}).items():
        rows.append([esc(f"your probes: {topic} ({t.get('questions')} questions, answered as expected)"),
                     pct(num(t.get("base"))), pct(num(t.get("tuned")))])
    out += html_table(rows, ["probe", "base", "tuned"])
    for w in fg.get("warnings") or []:
        out += f'<p class="warn">⚠ {esc(w)}</p>'
    if fg.get("warnings"):
        out += _note("To keep more general ability: fewer epochs or a lower learning rate, general chat rows mixed "
                     "into the training data, or, for classification, a classification head "
                     "(classification.mode: head), which leaves the model's text generation untouched.")
    ex = fg.get("examples") or []
    if ex:
        out += "<h3>Answers (changed ones first)</h3>" + html_table(
            [[esc(e.get("question")), esc(", ".join(e.get("answers") or [])),
              _mark(e.get("base_correct"), e.get("base")),
              _mark(e.get("tuned_correct"), e.get("tuned"))] for e in ex],
            ["question", "accepted", "base", "tuned"], "ex")
    return out


def _bias_html(f: dict[str, Any], imgs: dict[str, bytes]) -> str:
    bias = _probe_part(f, "bias")
    if isinstance(bias, str):
        return bias
    attrs = bias.get("attributes") or {}
    classification = bias.get("kind") == "classification"
    out = (f'<p class="sub">{esc(bias.get("inputs"))} messages from {esc(bias.get("templates"))} templates, each sent '
           "with one demographic attribute swapped (names, gender words, nationality, religion, age) and "
           "nothing else changed. ")
    if classification:
        out += ("A fair classifier gives every version of a message the same label: the flip rate is the share of "
                "messages whose label changes under the swap.</p>")
        rows = [[esc(a.replace("_", " ")), esc(", ".join(e.get("groups") or [])), esc(e.get("templates")),
                 pct((e.get("base") or {}).get("flip_rate")), pct((e.get("tuned") or {}).get("flip_rate"))]
                for a, e in attrs.items()]
        out += html_table(rows, ["attribute", "groups", "messages", "base flip rate", "tuned flip rate"])
    else:
        out += ("Replies should not depend on who is asking: the gaps are the largest difference between two "
                "groups' averages, per message, averaged over messages: reply sentiment (VADER compound, −1..1), "
                "reply length in words, and the log-likelihood per token of a neutral reference reply.</p>")
        rows = []
        for a, e in attrs.items():
            t, b = e.get("tuned") or {}, e.get("base") or {}
            rows.append([esc(a.replace("_", " ")), esc(e.get("templates"))]
                        + [f"{_two(b.get(k))} → {_two(t.get(k))}" if b else _two(t.get(k))
                           for k in ("sentiment_gap", "words_gap", "logprob_gap")])
        out += html_table(rows, ["attribute", "messages", "sentiment gap", "length gap (words)", "likelihood gap"])
    if "bias_chart" in imgs:
        out += img_tag(imgs["bias_chart"], "bias probes, base vs tuned")
    for w in bias.get("warnings") or []:
        out += f'<p class="warn">⚠ {esc(w)}</p>'
    if classification:
        flips = [(a, x) for a, e in attrs.items() for x in e.get("examples") or []][:6]
        if flips:
            out += "<h3>Messages whose label changed (tuned model)</h3>" + html_table(
                [[esc(a.replace("_", " ")),
                  "<br>".join(f"{esc(i['group'])}: {esc(i['text'])} → <b>{esc(i['label'])}</b>" for i in x["inputs"])]
                 for a, x in flips],
                ["attribute", "versions and labels"], "ex")
    out += _note("Add your own domain messages: write templates in a YAML file like the shipped "
                 "probes/data/counterfactual.yaml and name it in eval.probes.bias_files "
                 "(or `tunelab probe RUN --bias-file FILE`).")
    return out


def render_html(f: dict[str, Any], imgs: dict[str, bytes], sections: dict[str, str] | None = None) -> str:
    """The page from the facts; sections: parts rendered by their own modules (curation), placed by name."""
    sections = sections or {}
    v = f["verdict"]
    parts = [f"<h1>Run report: {esc(f['name'])}</h1>",
             f'<div class="sub">{esc(f["run"])} · task {esc(f["task"])} · status {esc(f["status"])}</div>']
    parts += [f'<div class="banner">⚠ {md(w)}</div>' for w in f["warnings"]]
    if f.get("caveat"):  # medical or legal data: the model's limits, before its scores
        parts.append(f'<div class="banner">Limits: {md(f["caveat"])}</div>')
    parts.append(f'<div class="verdict {esc(v["kind"])}">{md(v.get("task_text", v["text"]))}</div>')
    probes = f.get("probes")
    if probes and probes["sentences"]:
        cls = "probeline warnline" if probes["warnings"] else "probeline"
        parts += [f'<div class="{cls}">{md(x)}</div>' for x in probes["sentences"]]

    pref = f.get("preference")
    if pref:
        title = {"reward": "Reward model", "pairs": "Preference tuning", "online_rl": "Online RL"}[pref["kind"]]
        parts.append(f"<h2>{title}</h2>" + _preference_html(f, imgs))
    if not pref or f["metrics"]["tuned"]:
        parts.append("<h2>Task metrics</h2>" + _metrics_html(f))
    if any(not e["headline"] for e in f.get("evaluations") or []):  # more than what the verdict already shows
        parts.append("<h2>Evaluations</h2>" + _evaluations_html(f["evaluations"]))
    if f["classification"]:
        parts.append("<h2>Confusion matrix</h2>")
        conf = f.get("confusion")
        if conf is None:
            parts.append(_note(f["missing"]["confusion"]))
        else:
            parts.append(f'<p class="sub">Tuned model, from {esc(conf["source"])}: rows are the true label, columns '
                         "the prediction; colour is the share of each true label's rows.</p>")
            img = img_tag(imgs["confusion_matrix"], "confusion matrix")
            parts.append(img if len(conf["labels"]) <= 30 else  # full size, scrolled, so small labels stay legible
                         f'<div class="scroll">{img.replace("<img ", "<img class=big ", 1)}</div>')
            if conf["top_confusions"]:
                parts.append("<h3>Most frequent mistakes</h3>" + html_table(
                    [[esc(t["true"]), esc(t["predicted"]), str(t["count"])] for t in conf["top_confusions"]],
                    ["true label", "predicted", "rows"]))
    if not pref or pref["kind"] != "reward":  # a reward model writes no answers: nothing to show or probe
        parts.append("<h2>Examples: base vs tuned</h2>" + _examples_html(f))
        if f.get("probes") is None:  # neither was measured: one note, not the same one twice
            parts.append("<h2>Forgetting, bias and fairness</h2>" + _note(f["missing"]["probes"]))
        else:
            parts.append("<h2>Forgetting</h2>" + _forgetting_html(f, imgs))
            parts.append("<h2>Bias and fairness</h2>" + _bias_html(f, imgs))

    parts.append("<h2>Loss</h2>")
    if "loss_curve" in imgs:
        parts.append(img_tag(imgs["loss_curve"], "training and validation loss"))
        if "validation_loss" in f["missing"]:
            parts.append(_note(f["missing"]["validation_loss"]))
    else:
        parts.append(_note(f["missing"]["loss"]))

    parts.append("<h2>Run</h2>" + html_table([[esc(k), esc(val)] for k, val in f["facts"].items()], cls="facts"))
    parts.append("<h2>Data</h2>" + _data_html(f, imgs))
    if sections.get("curation"):
        parts.append("<h2>Data curation</h2>" + sections["curation"])
    if "summary" in f["missing"]:
        parts.append(_note(f["missing"]["summary"]))
    parts.append(f"<footer>tunelab {esc(f['tunelab_version'])} · {files.REPORT_JSON} beside this file holds the "
                 "same facts</footer>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>tunelab report: "
            f"{esc(f['name'])}</title><style>{CSS}</style></head><body><main>\n" + "\n".join(parts)
            + "\n</main></body></html>\n")
