"""Stage-3 filters of X-Paste in pure numpy: best segmenter per image, adaptive CLIP threshold,
mask-area range and near-duplicate removal by embedding.

Scores are on CLIP's 100 x cosine scale (the paper's t = 21 means cosine 0.21).
"""
from __future__ import annotations

import numpy as np


def adaptive_threshold(scores, t: float = 21.0, d: float = 1.0) -> float:
    """Per-category bar = min(t, max(scores) - d).

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


def select_instances(best_scores, area_fracs, t: float = 21.0, d: float = 1.0,
                     area_range: tuple[float, float] = (0.05, 0.95), categories=None) -> np.ndarray:
    """Bool keep-mask: area fraction within area_range (inclusive) and score >= the adaptive bar.

    categories: optional (N,) labels; the bar is then computed per category (the paper's setting).
    Without it all instances are treated as one category. The bar is computed among the instances
    that pass the area test, so a high-scoring but degenerate mask (e.g. the whole image) cannot
    raise the bar and push out the category's valid instances.
    """
    scores = np.asarray(best_scores, np.float64).ravel()
    areas = np.asarray(area_fracs, np.float64).ravel()
    if scores.shape != areas.shape:
        raise ValueError(f"best_scores and area_fracs differ in length: {scores.size} vs {areas.size}")
    lo, hi = area_range
    area_ok = (areas >= lo) & (areas <= hi)
    keep = np.zeros(scores.shape, bool)
    if categories is None:
        groups = [np.arange(scores.size)]
    else:
        cats = np.asarray(categories).ravel()
        if cats.shape != scores.shape:
            raise ValueError(f"categories has {cats.size} entries, expected {scores.size}")
        _, inverse = np.unique(cats, return_inverse=True)
        groups = [np.flatnonzero(inverse == g) for g in range(inverse.max() + 1)] if cats.size else []
    for idx in groups:
        cand = idx[area_ok[idx]]
        if cand.size == 0:
            continue
        bar = adaptive_threshold(scores[cand], t, d)
        with np.errstate(invalid="ignore"):  # NaN scores compare False: dropped
            keep[cand] = scores[cand] >= bar
    return keep


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
