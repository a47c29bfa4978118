"""Plots for `curate inspect --html`: matplotlib figures returned as PNG bytes.

Figures are built with `matplotlib.figure.Figure` and the Agg canvas directly, not
pyplot, so nothing touches global backend state and the CLI never needs a display.
Everything drawn comes from the summary dict (see `curate.report.summarize`), except
the embedding map, which takes 2-D coordinates computed here by `pca_2d`.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from core.records import CRITERIA

# One fixed colour per criterion, so the same criterion looks the same in every plot
# and in every report (Tableau-like, readable on white and for most colour-blind readers).
CRITERION_COLORS = {"quality": "#4C72B0", "semantic": "#DD8452", "text": "#55A868"}
_EXTRA_COLORS = ("#8172B3", "#937860", "#DA8BC3", "#8C8C8C", "#CCB974", "#64B5CD")
DPI = 110
LENGTH_SCORE_KEYS = ("tokens",)  # scores that measure length: drawn by length_histogram, not as scores


def criterion_color(name: str, known: Sequence[str] = ()) -> str:
    if name in CRITERION_COLORS:
        return CRITERION_COLORS[name]
    extras = [k for k in known if k not in CRITERION_COLORS]
    index = extras.index(name) if name in extras else len(extras)
    return _EXTRA_COLORS[index % len(_EXTRA_COLORS)]


def new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    # No "Software" chunk: it carries a URL and the matplotlib version, and without it
    # the same summary gives byte-identical PNGs.
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None}, bbox_inches="tight")
    return buf.getvalue()


def _legend(target, crits: Sequence[str], **kwargs) -> None:
    """One legend entry per criterion of the set, even where a panel lacks some, so
    every plot of a report reads the same way."""
    from matplotlib.patches import Patch

    handles = [Patch(color=criterion_color(c, crits), label=c) for c in crits]
    target.legend(handles=handles, fontsize=7, frameon=False, **kwargs)


def style_axes(ax) -> None:
    ax.spines["top"].set_visible(False)
    ax.spines["right"].set_visible(False)
    ax.tick_params(labelsize=8)


def category_bars(summary: dict[str, Any]) -> bytes:
    """Horizontal stacked bars: one bar per category, one segment per criterion."""
    cats: list[str] = []
    for per_crit in summary["categories"].values():
        cats.extend(c for c in per_crit if c not in cats)
    order = list(summary["category_order"])
    cats.sort(key=lambda c: order.index(c) if c in order else len(order))
    crits = list(summary["categories"])
    fig = new_figure(6.4, 0.38 * max(len(cats), 3) + 1.1)
    ax = fig.add_subplot()
    y = np.arange(len(cats))[::-1]
    left = np.zeros(len(cats))
    for crit in crits:
        counts = np.array([summary["categories"][crit].get(c, {}).get("count", 0) for c in cats], dtype=float)
        if counts.sum() == 0:
            continue
        ax.barh(y, counts, left=left, color=criterion_color(crit, crits), label=crit, height=0.7)
        left += counts
    for yi, total in zip(y, left):
        ax.text(total, yi, f" {int(total)}", va="center", fontsize=7, color="#333")
    ax.set_yticks(y, cats)
    ax.set_xlabel("kept prompts", fontsize=8)
    ax.set_xlim(0, max(left.max(initial=0), 1) * 1.12)
    # Above the axes: inside, it would cover the longest bar (always the bottom-most
    # "general" or "text_rendering" in a balanced set).
    if crits:
        _legend(ax, crits, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(crits))
    ax.set_title("Prompts per category, by criterion", fontsize=9, pad=18)
    style_axes(ax)
    return png_bytes(fig)


def _target_rows(summary: dict[str, Any]) -> list[tuple[str, str, int, int]]:
    """(label, criterion, count, target) per quota: a criterion's categories when it has category
    targets, else the criterion as a whole ("quality (all)"). Nothing without a target."""
    rows = []
    for crit, entry in summary["criteria"].items():
        cats = {c: e for c, e in summary["categories"].get(crit, {}).items() if isinstance(e.get("target"), int)}
        if cats:
            rows += [(f"{crit} / {cat}", crit, e["count"], e["target"]) for cat, e in cats.items()]
        elif isinstance(entry.get("target"), int):
            rows.append((f"{crit} (all)", crit, entry["count"], entry["target"]))
    return rows


def _share_bars(ax, summary: dict[str, Any], crits: list[str]) -> None:
    """Two 100% bars, the recipe's target fractions over the kept shares, one segment per criterion."""
    bars = [("kept", [summary["criteria"][c]["share"] or 0.0 for c in crits]),
            ("target", [summary["criteria"][c]["target_fraction"] or 0.0 for c in crits])]
    for y, (_, shares) in enumerate(bars):
        left = 0.0
        for crit, share in zip(crits, shares):
            width = 100 * float(share)
            ax.barh(y, width, left=left, height=0.62, color=criterion_color(crit, crits), edgecolor="white")
            if width >= 6:  # a label that fits inside its segment; smaller ones would overlap
                ax.text(left + width / 2, y, f"{width:.0f}%", ha="center", va="center", fontsize=7, color="white")
            left += width
    ax.set_yticks(range(len(bars)), [name for name, _ in bars])
    ax.set_xlim(0, 100)
    ax.set_xlabel("share of the set (%)", fontsize=8)
    ax.set_title("Criterion split: kept vs recipe target", fontsize=9, pad=16)
    _legend(ax, crits, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(crits))
    style_axes(ax)


def _quota_bars(ax, rows: list[tuple[str, str, int, int]], crits: list[str]) -> None:
    """One bar per quota: kept as a percentage of its target (100% = on target), labelled kept / target.
    Percentages, not counts, so a 1,410-prompt criterion and a 113-prompt category read on one axis."""
    y = np.arange(len(rows))[::-1]
    ratios = np.array([100.0 * n / t if t else 0.0 for _, _, n, t in rows])
    ax.barh(y, ratios, height=0.68, color=[criterion_color(c, crits) for _, c, _, _ in rows])
    for yi, ratio, (_, _, n, t) in zip(y, ratios, rows):
        ax.text(ratio, yi, f" {n:,} / {t:,}", va="center", fontsize=7, color="#333" if n == t else "#b00020")
    ax.axvline(100, color="#333", linestyle="--", linewidth=0.8)
    ax.set_yticks(y, [label for label, _, _, _ in rows])
    ax.set_xlim(0, max(125.0, float(ratios.max(initial=0)) * 1.25))
    ax.set_xlabel("kept, % of target (dashed: on target; labels: kept / target)", fontsize=8)
    ax.set_title("Quotas: kept vs target per criterion and category", fontsize=9)
    style_axes(ax)


def targets_plot(summary: dict[str, Any]) -> bytes | None:
    """The mixture against the recipe: criterion shares vs target fractions (e.g. 47/30/23), and
    every quota's kept count vs its target. None when the set records no targets (no manifest)."""
    crits = [c for c, e in summary["criteria"].items() if e.get("target_fraction") is not None]
    rows = _target_rows(summary)
    if not crits and not rows:
        return None
    fig = new_figure(6.4, 1.9 + 0.27 * max(len(rows), 2) + (0.6 if rows else 0))
    grid = fig.add_gridspec(2 if crits and rows else 1, 1, height_ratios=[1.3, 0.27 * max(len(rows), 2)]
                            if crits and rows else None, hspace=0.55)
    if crits:
        _share_bars(fig.add_subplot(grid[0]), summary, crits)
    if rows:
        _quota_bars(fig.add_subplot(grid[-1]), rows, list(summary["criteria"]))
    return png_bytes(fig)


def _stacked_hist(ax, hist: dict[str, Any], crits: list[str]) -> None:
    edges = np.asarray(hist["edges"], dtype=float)
    widths = np.diff(edges)
    bottom = np.zeros(len(widths))
    by_crit = hist.get("counts_by_criterion") or {}
    if not by_crit:
        ax.bar(edges[:-1], hist["counts"], width=widths, align="edge", color="#4C72B0", edgecolor="white",
               linewidth=0.4)
        return
    for crit in crits:
        counts = np.asarray(by_crit.get(crit, [0] * len(widths)), dtype=float)
        if counts.sum() == 0:
            continue
        ax.bar(edges[:-1], counts, width=widths, bottom=bottom, align="edge", color=criterion_color(crit, crits),
               edgecolor="white", linewidth=0.4, label=crit)
        bottom += counts


def score_histograms(summary: dict[str, Any]) -> bytes | None:
    """Small multiples, one stacked histogram per score key; None when there are none to draw.

    Length keys (scores.tokens) are left out: the length histogram draws them, with its own
    labels, and a second unlabelled copy here read as a different measure."""
    scores = {k: v for k, v in summary["scores"].items() if k not in LENGTH_SCORE_KEYS}
    if not scores:
        return None
    crits = list(summary["criteria"])
    keys = list(scores)
    ncols = min(3, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    fig = new_figure(3.3 * ncols + 0.4, 2.5 * nrows + 0.3)
    for i, key in enumerate(keys):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        _stacked_hist(ax, scores[key]["histogram"], crits)
        ax.set_title(f"{key}  (median {scores[key]['median']:.3g}, n={scores[key]['count']})", fontsize=8)
        ax.set_xlabel(f"{key} score", fontsize=8)
        ax.set_ylabel("prompts", fontsize=8)
        style_axes(ax)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    _legend(fig, crits, loc="upper center", ncol=len(crits))
    return png_bytes(fig)


def length_histogram(summary: dict[str, Any]) -> bytes:
    length = summary["length"]
    crits = list(summary["criteria"])
    fig = new_figure(6.4, 3.0)
    ax = fig.add_subplot()
    if length["count"]:
        _stacked_hist(ax, length["histogram"], crits)
        ax.axvline(length["median"], color="#333", linestyle="--", linewidth=0.8)
        # Above the axes, like the category bars: inside, it covered the first bins.
        _legend(ax, crits, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=max(len(crits), 1))
    ax.set_xlabel(f"prompt length ({length['unit']})", fontsize=8)
    ax.set_ylabel("prompts", fontsize=8)
    ax.set_title(f"Prompt length in {length['unit']} (dashed: median {length.get('median', 0):g})", fontsize=9,
                 pad=18 if length["count"] else 6)
    style_axes(ax)
    return png_bytes(fig)


def embedding_map(coords: np.ndarray, labels: Sequence[str], explained: Sequence[float], caption: str) -> bytes:
    """2-D scatter of PCA coordinates, coloured by criterion."""
    known = [c for c in CRITERIA if c in set(labels)] + sorted(set(labels) - set(CRITERIA))
    fig = new_figure(6.4, 5.2)
    ax = fig.add_subplot()
    labels_arr = np.asarray(labels)
    for crit in known:
        mask = labels_arr == crit
        ax.scatter(coords[mask, 0], coords[mask, 1], s=5, alpha=0.55, linewidths=0,
                   color=criterion_color(crit, known), label=f"{crit} ({int(mask.sum())})")
    ax.set_xlabel(f"PC1 ({100 * explained[0]:.1f}% of variance)", fontsize=8)
    ax.set_ylabel(f"PC2 ({100 * explained[1]:.1f}% of variance)", fontsize=8)
    ax.set_title(caption, fontsize=9)
    if known:
        ax.legend(fontsize=7, frameon=False, markerscale=3)
    style_axes(ax)
    return png_bytes(fig)


def pca_2d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project rows of x onto their first two principal components (numpy SVD).

    Returns (coords (n, 2), explained variance ratio (2,)). Signs are fixed so the
    largest loading of each component is positive: SVD signs are arbitrary, and a map
    that flips between runs would look like a change in the data.
    """
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    if n == 0:
        return np.zeros((0, 2)), np.zeros(2)
    centred = x - x.mean(axis=0, keepdims=True)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    k = min(2, vt.shape[0])
    vt = vt[:k]
    signs = np.sign(vt[np.arange(k), np.argmax(np.abs(vt), axis=1)])
    signs[signs == 0] = 1
    vt = vt * signs[:, None]
    coords = np.zeros((n, 2))
    coords[:, :k] = centred @ vt.T
    total = float((s**2).sum())
    explained = np.zeros(2)
    if total > 0:
        explained[:k] = (s[:k] ** 2) / total
    return coords, explained


_WORD = re.compile(r"[a-z0-9']+")


class HashingEmbedder:
    """A dependency-free text embedder for the report's map when no model is at hand.

    Signed feature hashing of word unigrams, word bigrams and character trigrams,
    log-scaled counts, L2-normalised; stable across runs and machines (blake2b, not
    Python's salted hash). Good enough to show how criteria and templates separate,
    not a semantic model.
    """

    name = "hashed n-grams (no model)"

    def __init__(self, dim: int = 512) -> None:
        self.dim = dim
        self._cache: dict[str, tuple[int, float]] = {}

    def _slot(self, feature: str) -> tuple[int, float]:
        hit = self._cache.get(feature)
        if hit is None:
            h = int.from_bytes(hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest(), "little")
            hit = (h % self.dim, 1.0 if (h >> 63) & 1 else -1.0)
            self._cache[feature] = hit
        return hit

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            words = _WORD.findall(text.lower())
            feats = [f"w:{w}" for w in words] + [f"b:{a} {b}" for a, b in zip(words, words[1:])]
            joined = f" {' '.join(words)} "
            feats += [f"c:{joined[i:i + 3]}" for i in range(len(joined) - 2)]
            counts: dict[int, float] = {}
            for feat in feats:
                slot, sign = self._slot(feat)
                counts[slot] = counts.get(slot, 0.0) + sign
            for slot, value in counts.items():
                out[row, slot] = math.copysign(math.log1p(abs(value)), value)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, norms, out=out, where=norms > 0)
        return out
