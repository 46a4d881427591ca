"""Stage-3 filters of X-Paste in pure numpy (method.md, Stage 3): best segmenter per image, the per-category
adaptive CLIP bar, the mask-area range, and (opt-in, not in the reference) near-duplicate removal by embedding.

Scores are on CLIP's 100 x cosine scale (the paper's t = 21 means cosine 0.21).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def adaptive_threshold(scores, t: float = 21.0, d: float = 1.0) -> float:
    """Per-category bar = min(t, max(scores) - d) over all the scores given (any shape).

    A fixed bar t would empty categories CLIP scores poorly (rare or abstract names); lowering the bar
    to just below the category's best keeps at least its best instances. NaNs are ignored; with no
    finite score the bar is t.
    """
    s = np.asarray(scores, np.float64).ravel()
    s = s[np.isfinite(s)]
    if s.size == 0:
        return float(t)
    return float(min(t, s.max() - d))


def best_per_image(scores) -> tuple[np.ndarray, np.ndarray]:
    """For an (S, N) matrix of S segmenters' scores on N images: (argmax index (N,), best score (N,)).

    NaN marks a missing candidate (e.g. an empty mask) and never wins; an image whose candidates are
    all NaN gets index 0 and a NaN best score, so a later threshold drops it.
    """
    s = np.asarray(scores, np.float64)
    if s.ndim != 2:
        raise ValueError(f"scores must be (segmenters, images), got shape {s.shape}")
    if s.shape[0] == 0:
        raise ValueError("scores has no segmenter rows")
    filled = np.where(np.isnan(s), -np.inf, s)
    idx = filled.argmax(axis=0)
    best = s[idx, np.arange(s.shape[1])]
    return idx.astype(np.int64), best


#: The reasons `select_instances` gives, in the order they are checked.
KEPT, EMPTY, AREA, BAR = "kept", "empty mask", "area out of range", "below CLIP bar"


@dataclass(frozen=True)
class Selection:
    """X-Paste's Stage-3 choice for N images: `winner` (N,) int64 segmenter row (-1 when every mask of the image
    is empty), `score` and `area` (N,) float64 of the winner (NaN / 0 without one), `bar` (N,) float64 of the
    image's category, `reason` (N,) object array of KEPT / EMPTY / AREA / BAR, and `keep` (N,) bool."""

    winner: np.ndarray
    score: np.ndarray
    area: np.ndarray
    bar: np.ndarray
    reason: np.ndarray

    @property
    def keep(self) -> np.ndarray:
        return self.reason == KEPT


def category_bars(scores, categories, t: float = 21.0, d: float = 1.0) -> dict:
    """Per-category bar `min(t, max_c - d)`, the max over EVERY finite score of the category (method.md Stage 3:
    every (segmenter, image) score, not only the per-image winners, and whatever the mask's area).

    scores: (S, N) or (N,) float, 100 x cosine; categories: (N,) labels of the images (columns). Returns
    {category: bar}; a category without a finite score gets t.
    """
    s = np.asarray(scores, np.float64)
    s = s[None] if s.ndim == 1 else s
    cats = np.asarray(categories).ravel()
    if s.ndim != 2 or s.shape[1] != cats.size:
        raise ValueError(f"scores {s.shape} do not match {cats.size} categories")
    bars = {}
    for c in np.unique(cats):
        col = s[:, cats == c]
        bars[c.item() if hasattr(c, "item") else c] = adaptive_threshold(col, t, d)
    return bars


def select_instances(scores, area_fracs, categories=None, t: float = 21.0, d: float = 1.0,
                     area_range: tuple[float, float] = (0.05, 0.95)) -> Selection:
    """X-Paste's Stage 3 over a score table (method.md; the reference code's rules).

    scores, area_fracs: (S, N) float for S segmenters on N images (100 x cosine; binary-mask area fraction).
    categories: (N,) labels (None: one category). Per image the segmenter with the highest score wins among those
    whose mask is not empty (area > 0; a NaN score loses to any number; ties: the lower row). Per category the
    bar is `category_bars` (max over every score). An image is kept when its winner's area lies in `area_range`
    (inclusive) and its score >= the bar. Raises ValueError on mismatched shapes.
    """
    s = np.asarray(scores, np.float64)
    a = np.asarray(area_fracs, np.float64)
    if s.ndim != 2 or s.shape != a.shape or s.shape[0] == 0:
        raise ValueError(f"scores and area_fracs must be the same (segmenters, images) shape, got {s.shape}, {a.shape}")
    n = s.shape[1]
    cats = np.zeros(n, np.int64) if categories is None else np.asarray(categories).ravel()
    if cats.size != n:
        raise ValueError(f"categories has {cats.size} entries, expected {n}")
    key = np.where(a > 0, np.where(np.isnan(s), -np.inf, s), np.nan)
    has = ~np.isnan(key).all(axis=0)
    winner = np.full(n, -1, np.int64)
    if has.any():
        winner[has] = np.nanargmax(key[:, has], axis=0)
    cols = np.arange(n)
    score = np.where(has, s[np.maximum(winner, 0), cols], np.nan)
    area = np.where(has, a[np.maximum(winner, 0), cols], 0.0)
    bars = category_bars(s, cats, t, d)
    bar = np.array([bars[c.item() if hasattr(c, "item") else c] for c in cats], np.float64)
    lo, hi = area_range
    reason = np.full(n, KEPT, dtype=object)
    with np.errstate(invalid="ignore"):  # NaN scores compare False: below the bar
        reason[~(score >= bar)] = BAR
    reason[~((area >= lo) & (area <= hi))] = AREA
    reason[~has] = EMPTY
    return Selection(winner, score, area, bar, reason)


def dedup_by_embedding(embeddings, threshold: float = 0.95, block: int = 1024) -> np.ndarray:
    """Greedy near-duplicate removal: keep an item unless its cosine with an earlier kept item >= threshold.

    Order matters (the first of each group survives), so callers sort by quality first. Work is done
    in blocks: one matrix product against everything kept so far, then a small greedy pass inside the
    block, which makes 10k x 512 a fraction of a second instead of a Python double loop.
    """
    e = np.asarray(embeddings, np.float32)
    if e.ndim != 2:
        raise ValueError(f"embeddings must be (N, D), got shape {e.shape}")
    n = e.shape[0]
    norms = np.linalg.norm(e, axis=1, keepdims=True)
    e = e / np.where(norms > 0, norms, 1.0)  # cosine even if the caller did not normalise
    keep = np.zeros(n, bool)
    kept = np.empty((0, e.shape[1]), np.float32)
    for start in range(0, n, block):
        chunk = e[start : start + block]
        alive = np.ones(len(chunk), bool)
        if len(kept):
            alive &= (chunk @ kept.T).max(axis=1) < threshold
        inner = chunk @ chunk.T
        for j in range(len(chunk)):
            if alive[j]:
                # j survives; later items of the block that duplicate it are dropped
                dup = inner[j, j + 1 :] >= threshold
                alive[j + 1 :] &= ~dup
        keep[start : start + len(chunk)] = alive
        kept = np.concatenate([kept, chunk[alive]])
    return keep
