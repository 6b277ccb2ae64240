"""The report's charts as PNG bytes: loss curves, data lengths, confusion matrix.

Drawn on a bare Figure with the Agg canvas, so no pyplot state and no display are touched.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure

BLUE, ORANGE, GREY = "#2563eb", "#ea580c", "#6b7280"


def _png(fig: Figure, dpi: int = 110) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def _style(ax: object) -> None:
    ax.spines[["top", "right"]].set_visible(False)  # type: ignore[attr-defined]
    ax.grid(True, color="#e5e7eb", linewidth=0.8)  # type: ignore[attr-defined]
    ax.set_axisbelow(True)  # type: ignore[attr-defined]


def loss_curve(train: Sequence[tuple[float, float]], evals: Sequence[tuple[float, float]]) -> bytes:
    """Training loss per logged step and validation loss per evaluation, on one step axis."""
    fig = Figure(figsize=(7.5, 3.6))
    ax = fig.add_subplot()
    if train:
        xs, ys = zip(*train, strict=True)
        ax.plot(xs, ys, color=BLUE, linewidth=1.4, marker="o" if len(xs) <= 30 else None, markersize=3,
                label="training loss")
    if evals:
        xs, ys = zip(*evals, strict=True)
        ax.plot(xs, ys, color=ORANGE, linewidth=1.8, marker="o", markersize=5, label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    _style(ax)
    ax.legend(frameon=False)
    return _png(fig)


def length_histogram(bins: Sequence[Sequence[int]]) -> bytes:
    """Rows per token-length bin, from the data report's (lo, hi, count) triples."""
    fig = Figure(figsize=(6.0, 2.4))
    ax = fig.add_subplot()
    names = [f"{lo}" if lo == hi else f"{lo}-{hi}" for lo, hi, _ in bins]
    counts = [c for _, _, c in bins]
    ax.bar(range(len(counts)), counts, color=BLUE, width=0.8)
    ax.set_xticks(range(len(names)), names, rotation=30 if len(names) > 6 else 0, ha="right" if len(names) > 6
                  else "center", fontsize=8)
    ax.set_xlabel("length in tokens")
    ax.set_ylabel("rows")
    _style(ax)
    ax.grid(False, axis="x")
    return _png(fig)


def _short(label: str, n: int) -> str:
    """Long labels keep their start and end, which is where labels sharing a prefix differ."""
    if len(label) <= n:
        return label
    head = (n - 1) * 3 // 5
    return label[:head] + "…" + label[len(label) - (n - 1 - head):]


def confusion_matrix(labels: Sequence[str], matrix: Sequence[Sequence[int]]) -> bytes:
    """Rows are the true label, columns the prediction; colour is the share of each true label's rows.

    Sized by the number of labels with small tick fonts, so 77 labels stay readable; counts are written
    in the cells only while they fit.
    """
    m = np.asarray(matrix, dtype=float)
    n = len(labels)
    totals = m.sum(axis=1, keepdims=True)
    share = np.divide(m, totals, out=np.zeros_like(m), where=totals > 0)
    cell = 0.55 if n <= 10 else 0.32 if n <= 30 else 0.17
    side = min(max(4.0, n * cell + 2.5), 22.0)
    fig = Figure(figsize=(side + 1.0, side))
    ax = fig.add_subplot()
    # a square-root scale keeps a few stray rows visible next to a dark diagonal
    img = ax.imshow(share, cmap="Blues", norm=PowerNorm(0.5, vmin=0.0, vmax=1.0), interpolation="nearest",
                    aspect="equal")
    font = 9 if n <= 10 else 7 if n <= 30 else 6 if n <= 80 else 5
    width = 32
    ticks = [_short(str(x), width) for x in labels]
    ax.set_xticks(range(n), ticks, rotation=90, fontsize=font)
    ax.set_yticks(range(n), ticks, fontsize=font)
    ax.set_xlabel("predicted label")
    ax.set_ylabel("true label")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if m[i, j]:
                    ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", fontsize=font,
                            color="white" if share[i, j] > 0.5 else "#111827")
    if n > 1:  # faint grid between cells so a row can be followed across many labels
        ax.set_xticks(np.arange(-0.5, n, 1), minor=True)
        ax.set_yticks(np.arange(-0.5, n, 1), minor=True)
        ax.grid(which="minor", color="#f3f4f6", linewidth=0.3 if n > 30 else 0.6)
        ax.tick_params(which="minor", length=0)
    bar = fig.colorbar(img, ax=ax, fraction=0.035, pad=0.02)
    bar.set_label("share of the true label's rows", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    return _png(fig, dpi=110 if n <= 30 else 100)


def base_vs_tuned_bars(names: Sequence[str], base: Sequence[float | None], tuned: Sequence[float | None],
                       ylabel: str, percent: bool = False) -> bytes:
    """One pair of bars per name (e.g. per probed attribute): base in grey, tuned in blue."""
    fig = Figure(figsize=(max(4.5, 1.1 * len(names) + 1.5), 2.8))
    ax = fig.add_subplot()
    x = np.arange(len(names))
    scale = 100.0 if percent else 1.0
    for offset, values, color, label in ((-0.2, base, GREY, "base"), (0.2, tuned, BLUE, "tuned")):
        if any(v is not None for v in values):
            ax.bar(x + offset, [(v or 0.0) * scale for v in values], width=0.38, color=color, label=label)
    ax.set_xticks(x, [n.replace("_", " ") for n in names], fontsize=8)
    ax.set_ylabel(ylabel + (" (%)" if percent else ""))
    _style(ax)
    ax.grid(False, axis="x")
    ax.legend(frameon=False, fontsize=8)
    return _png(fig)


def metric_panels(panels: Sequence[tuple[str, dict[str, Sequence[tuple[float, float]]]]],
                  chance: dict[str, float] | None = None) -> bytes:
    """Side-by-side panels of metrics over steps: (y label, {series name: [(step, value)]}) each.
    `chance` draws a dashed line at that value in the panel of that y label (e.g. 50% pairwise accuracy)."""
    colors = (BLUE, ORANGE, "#059669", "#7c3aed", GREY)
    fig = Figure(figsize=(4.2 * len(panels), 3.2))
    for k, (ylabel, series) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        for (name, points), color in zip(series.items(), colors, strict=False):
            xs, ys = zip(*points, strict=True)
            if len(xs) <= 30:
                ax.plot(xs, ys, color=color, linewidth=1.5, marker="o", markersize=3, label=name)
                continue
            # per-step values of a small batch are noisy: faint raw line, and a moving average to read
            w = max(3, len(xs) // 10)
            avg = np.convolve(ys, np.ones(w) / w, mode="valid")
            ax.plot(xs, ys, color=color, linewidth=0.8, alpha=0.25)
            ax.plot(xs[w - 1:], avg, color=color, linewidth=1.8, label=f"{name} (mean of {w} steps)")
        if chance and ylabel in chance:
            ax.axhline(chance[ylabel], color=GREY, linestyle="--", linewidth=1, label="chance")
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        _style(ax)
        ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return _png(fig)
