"""Drawing pool instances: class-balanced, uniform, present-categories-only or user-weighted.

All draws are vectorised over one `np.random.Generator` so a seed fixes the result.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLING_MODES = ("balanced", "uniform", "present", "weighted")


@dataclass
class CategoryIndex:
    """Pool rows grouped by category: `order[starts[k]:starts[k]+counts[k]]` are the rows of `categories[k]`."""

    categories: np.ndarray  # (K,) int64, sorted, only categories with at least one instance
    starts: np.ndarray
    counts: np.ndarray
    order: np.ndarray  # (N,) row indices sorted by category (stable)

    @classmethod
    def build(cls, category_ids: np.ndarray, keep: np.ndarray | None = None) -> CategoryIndex:
        """Group rows by category; with `keep` ((N,) bool), rows where it is False are left out."""
        category_ids = np.asarray(category_ids, dtype=np.int64)
        order = np.argsort(category_ids, kind="stable")
        if keep is not None:
            order = order[np.asarray(keep, bool)[order]]
        cats, starts, counts = np.unique(category_ids[order], return_index=True, return_counts=True)
        return cls(cats.astype(np.int64), starts.astype(np.int64), counts.astype(np.int64), order)

    def rows_of(self, category_id: int) -> np.ndarray:
        k = np.searchsorted(self.categories, category_id)
        if k >= len(self.categories) or self.categories[k] != category_id:
            return np.zeros(0, np.int64)
        return self.order[self.starts[k] : self.starts[k] + self.counts[k]]


def sample_rows(
    index: CategoryIndex,
    rng: np.random.Generator,
    n: int,
    mode: str = "balanced",
    present: np.ndarray | None = None,
    weights: dict[int, float] | None = None,
) -> np.ndarray:
    """Draw `n` pool rows. `present` (category ids in the destination) is used by mode 'present'."""
    if mode not in SAMPLING_MODES:
        raise ValueError(f"unknown sampling mode {mode!r}; choose one of {SAMPLING_MODES}")
    total = len(index.order)
    if n <= 0 or total == 0:
        return np.zeros(0, np.int64)
    if mode == "uniform":
        return index.order[rng.integers(0, total, size=n)]
    if mode == "balanced":
        k = rng.integers(0, len(index.categories), size=n)
    elif mode == "present":
        wanted = np.unique(np.asarray(present if present is not None else [], dtype=np.int64))
        ks = np.flatnonzero(np.isin(index.categories, wanted))
        if len(ks) == 0:
            return np.zeros(0, np.int64)
        k = ks[rng.integers(0, len(ks), size=n)]
    else:  # weighted
        if not weights:
            raise ValueError("sampling mode 'weighted' needs category weights")
        w = np.array([float(weights.get(int(c), 0.0)) for c in index.categories])
        if (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
            raise ValueError("category weights must be finite, non-negative and not all zero for pooled categories")
        k = rng.choice(len(index.categories), size=n, p=w / w.sum())
    within = np.floor(rng.random(n) * index.counts[k]).astype(np.int64)
    return index.order[index.starts[k] + within]
