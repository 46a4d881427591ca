"""The report's charts, each returned as PNG bytes.

Figures are built on matplotlib's object API with an explicit Agg canvas (no pyplot): nothing touches the
global backend or pyplot's figure registry, so importing or calling this never changes how a user's own
matplotlib session behaves, and it works on a machine without a display.
"""
from __future__ import annotations

import io
import warnings
from collections.abc import Mapping, Sequence

import numpy as np

DPI = 100
# Colour-blind-safe (Okabe-Ito) colours, one per group; LVIS frequency groups get fixed colours.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
FREQUENCY_COLOURS = {"r": "#D55E00", "c": "#E69F00", "f": "#0072B2"}
FREQUENCY_NAMES = {"r": "rare", "c": "common", "f": "frequent"}


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # Category names may hold glyphs DejaVu lacks (CJK): matplotlib draws a box and warns per glyph.
        warnings.simplefilter("ignore", UserWarning)
        fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def label(text: str, limit: int = 28) -> str:
    """A category name safe for a matplotlib text: '$' would start mathtext; long names are cut."""
    text = " ".join(str(text).split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("$", r"\$")


def _finite(values: Sequence[float] | np.ndarray) -> np.ndarray:
    arr = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
    return arr[np.isfinite(arr)]


def _bins(groups: Mapping[str, np.ndarray], bins: int, value_range: tuple[float, float] | None) -> np.ndarray:
    """Shared bin edges so the groups' histograms are comparable."""
    if value_range is None:
        allv = np.concatenate([g for g in groups.values() if len(g)] or [np.zeros(1)])
        lo, hi = float(allv.min()), float(allv.max())
        value_range = (lo, hi if hi > lo else lo + 1e-3)
    return np.linspace(value_range[0], value_range[1], bins + 1)


def histogram_by_group(groups: Mapping[str, Sequence[float]], xlabel: str, title: str, bins: int = 24,
                       value_range: tuple[float, float] | None = None) -> bytes:
    """Overlaid histograms of one value (CLIP score, area fraction) for each group (source, decision)."""
    data = {name: _finite(v) for name, v in groups.items()}
    data = {name: v for name, v in data.items() if len(v)}
    fig = _figure(6.0, 3.2)
    ax = fig.add_subplot()
    if data:
        edges = _bins(data, bins, value_range)
        for k, (name, values) in enumerate(data.items()):
            colour = PALETTE[k % len(PALETTE)]
            ax.hist(values, bins=edges, histtype="stepfilled", alpha=0.3, color=colour)
            ax.hist(values, bins=edges, histtype="step", linewidth=1.5, color=colour,
                    label=f"{label(name)} ({len(values)})")
        ax.legend(fontsize=8, frameon=False)
        ax.spines[["top", "right"]].set_visible(False)
    else:
        ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("instances")
    ax.set_title(title, fontsize=11)
    return _png(fig)


def category_histograms(per_category: Mapping[str, Mapping[str, Sequence[float]]], xlabel: str, title: str,
                        bins: int = 16, value_range: tuple[float, float] | None = None, cols: int = 4) -> bytes:
    """Small multiples: one histogram per category (keys in display order), groups overlaid inside each."""
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    cats = {c: {g: _finite(v) for g, v in groups.items()} for c, groups in per_category.items()}
    cats = {c: {g: v for g, v in groups.items() if len(v)} for c, groups in cats.items()}
    cats = {c: g for c, g in cats.items() if g}
    n = max(1, len(cats))
    cols = min(cols, n)
    rows = (n + cols - 1) // cols
    fig = _figure(2.9 * cols + 0.4, 2.1 * rows + 0.6)
    fig.suptitle(title, fontsize=11)
    if not cats:
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
        return _png(fig)
    allv = [v for groups in cats.values() for v in groups.values()]
    edges = _bins({"all": np.concatenate(allv)}, bins, value_range)
    # One colour per group in every panel, so a panel missing a group does not shift the colours.
    order = list(dict.fromkeys(g for groups in cats.values() for g in groups))
    colour = {g: PALETTE[i % len(PALETTE)] for i, g in enumerate(order)}
    for k, (name, groups) in enumerate(cats.items()):
        ax = fig.add_subplot(rows, cols, k + 1)
        for g in order:
            if g in groups:
                ax.hist(groups[g], bins=edges, histtype="stepfilled", alpha=0.45, color=colour[g])
        ax.set_title(label(name, 30), fontsize=9)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts: no 0.2 ticks on a 1-instance panel
        ax.tick_params(labelsize=7)
        ax.spines[["top", "right"]].set_visible(False)
        if k % cols == 0:
            ax.set_ylabel("count", fontsize=8)
        if k >= n - cols:
            ax.set_xlabel(xlabel, fontsize=8)
    if len(order) > 1:
        fig.legend(handles=[Patch(color=colour[g], alpha=0.6, label=label(g, 20)) for g in order], fontsize=8,
                   frameon=False, loc="outside lower center", ncols=min(len(order), 6))
    return _png(fig)


def _bar_figure(rows: list, width: float, height: float, empty_text: str):
    """(figure, axes, None) for a bar chart of `rows`, or (figure, axes, PNG bytes saying `empty_text`) without rows."""
    fig = _figure(width, height)
    ax = fig.add_subplot()
    if rows:
        return fig, ax, None
    ax.text(0.5, 0.5, empty_text, ha="center", va="center", transform=ax.transAxes)
    return fig, ax, _png(fig)


def segmenter_win_rates(rows: Sequence[Mapping]) -> bytes:
    """Per segmenter: share of candidates it won (best CLIP score) and share of the kept instances.

    `rows`: dicts with segmenter, wins, kept (counts); shares are of the column totals.
    """
    rows = list(rows)
    fig, ax, empty = _bar_figure(rows, 6.0, 0.5 * max(len(rows), 2) + 1.3, "no segmenter data")
    if empty is not None:
        return empty
    total_wins = max(sum(r["wins"] for r in rows), 1)
    total_kept = max(sum(r["kept"] for r in rows), 1)
    y = np.arange(len(rows))
    wins = np.array([r["wins"] / total_wins for r in rows])
    kept = np.array([r["kept"] / total_kept for r in rows])
    ax.barh(y - 0.2, wins, height=0.38, color=PALETTE[0], label="best segmenter (share of candidates)")
    ax.barh(y + 0.2, kept, height=0.38, color=PALETTE[2], label="kept in the pool (share of kept)")
    for yy, v in zip(y, wins):
        ax.text(v + 0.01, yy - 0.2, f"{v:.0%}", va="center", fontsize=8)
    for yy, v in zip(y, kept):
        ax.text(v + 0.01, yy + 0.2, f"{v:.0%}", va="center", fontsize=8)
    ax.set_yticks(y, [label(r["segmenter"], 24) for r in rows])
    ax.invert_yaxis()
    ax.set_xlim(0, 1.12)
    ax.xaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
    fig.legend(fontsize=8, frameon=False, loc="outside lower center", ncols=2)
    ax.set_title("Segmenter win rates", fontsize=11)
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)


def coverage(rows: Sequence[Mapping], few: int, count_label: str = "pool instances") -> bytes:
    """Horizontal bars of instances per category, coloured by LVIS frequency group, with the 'few' line.

    `rows`: dicts with name, frequency ('r'/'c'/'f' or anything else), count; drawn in the order given.
    """
    rows = list(rows)
    fig, ax, empty = _bar_figure(rows, 7.5, 0.22 * max(len(rows), 4) + 1.4, "no categories")
    if empty is not None:
        return empty
    y = np.arange(len(rows))
    counts = np.array([r["count"] for r in rows], dtype=np.float64)
    colours = [FREQUENCY_COLOURS.get(r["frequency"], "#999999") for r in rows]
    # A zero bar is invisible on a log axis: draw zeros as a stub at 0.5 and say "0" beside it.
    ax.barh(y, np.maximum(counts, 0.5), color=colours, height=0.75)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(lambda v, _: f"{v:g}")  # 1, 10, 100 rather than 10^0, 10^1, 10^2
    for yy, c in zip(y, counts):
        ax.text(max(c, 0.5) * 1.08, yy, f"{int(c)}", va="center", fontsize=7,
                color="#D55E00" if c < few else "#333333")
    ax.axvline(few, color="#444444", linestyle="--", linewidth=1)
    ax.text(few, -1.0, f" few < {few}", fontsize=8, color="#444444", va="bottom")
    ax.set_yticks(y, [label(r["name"], 30) for r in rows], fontsize=7)
    for tick, r in zip(ax.get_yticklabels(), rows):
        if r["frequency"] == "r" and r["count"] < few:
            tick.set_color("#D55E00")
            tick.set_fontweight("bold")
    ax.set_ylim(len(rows) - 0.4, -1.6)
    ax.set_xlim(0.4, max(counts.max(), few) * 2.5)
    ax.set_xlabel(f"{count_label} (log scale)")
    present = [g for g in ("r", "c", "f") if any(r["frequency"] == g for r in rows)]
    if any(r["frequency"] not in FREQUENCY_COLOURS for r in rows):
        present.append("other")
    from matplotlib.patches import Patch

    handles = [Patch(color=FREQUENCY_COLOURS.get(g, "#999999"), label=FREQUENCY_NAMES.get(g, "no frequency"))
               for g in present]
    ax.legend(handles=handles, fontsize=8, frameon=False, loc="lower right")
    ax.set_title("Category coverage", fontsize=11)
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)
