"""`CopyPaste`: the X-Paste paste transform. It draws a `PastePlan` from a Generator, then applies it."""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from xpaste.core.sample import Sample
from xpaste.paste.functional import apply_plan
from xpaste.paste.plan import BLEND_MODES, PasteOp, PastePlan
from xpaste.pool.sampler import SAMPLING_MODES


class CopyPaste:
    """Paste pool instances into samples, as X-Paste does during training (method.md, Stage 4).

    Count: `num_paste` if given, else uniform in [0, max_paste). Sampling: 'balanced' (uniform over
    categories, then within), 'uniform' (over instances), 'present' (only categories already in the image)
    or 'weighted' (`category_weights`). Scale: s ~ Normal(mean, std) of the category's sqrt box-area
    fraction (`scale_prior`, e.g. from `xpaste stats`), clipped to [min_object_px / H, max_scale]; categories
    without a prior draw s ~ U(uniform_scale). The target area is s^2 * H * W with the cut-out's aspect
    ratio times U(aspect_jitter); objects under `min_size_px` or not smaller than the canvas are skipped.
    The centre is uniform over the canvas (objects may be cut by the border).

    Call `copy_paste(sample)` for a new Sample; the input is never modified. Randomness comes from the
    `rng` argument if given, else from the transform's own Generator seeded by `seed`.
    """

    def __init__(self, pool, *, max_paste: int = 20, num_paste: int | None = None, sampling: str = "balanced",
                 category_weights: Mapping[int, float] | None = None,
                 scale_prior: Mapping[int, tuple[float, float]] | None = None,
                 uniform_scale: tuple[float, float] = (0.05, 0.3), max_scale: float = 0.5,
                 min_object_px: float = 10.0, min_size_px: int = 5,
                 aspect_jitter: tuple[float, float] = (0.8, 1.2), flip_prob: float = 0.5,
                 max_rotation: float = 0.0, color_jitter: float = 0.0, blend: str = "hard",
                 blend_sigma: float = 1.0, box_tolerance: float = 10.0, min_visible_area: int = 300,
                 seed: int | None = None):
        if sampling not in SAMPLING_MODES:
            raise ValueError(f"unknown sampling {sampling!r}; choose one of {SAMPLING_MODES}")
        if blend not in BLEND_MODES:
            raise ValueError(f"unknown blend {blend!r}; choose one of {BLEND_MODES}")
        if num_paste is None and max_paste < 1:
            raise ValueError("max_paste must be at least 1 (the count is drawn from [0, max_paste))")
        if num_paste is not None and num_paste < 0:
            raise ValueError("num_paste must be >= 0")
        if not 0 < uniform_scale[0] <= uniform_scale[1]:
            raise ValueError(f"uniform_scale must be 0 < low <= high, got {uniform_scale}")
        if not 0 < aspect_jitter[0] <= aspect_jitter[1]:
            raise ValueError(f"aspect_jitter must be 0 < low <= high, got {aspect_jitter}")
        if sampling == "weighted" and not category_weights:
            raise ValueError("sampling='weighted' needs category_weights")
        self.pool = pool
        self.max_paste = int(max_paste)
        self.num_paste = None if num_paste is None else int(num_paste)
        self.sampling = sampling
        self.category_weights = dict(category_weights or {})
        prior = {int(k): (float(v[0]), float(v[1])) for k, v in (scale_prior or {}).items()}
        self.scale_prior = {k: v for k, v in prior.items() if math.isfinite(v[0]) and math.isfinite(v[1])}
        self.uniform_scale = (float(uniform_scale[0]), float(uniform_scale[1]))
        self.max_scale = float(max_scale)
        self.min_object_px = float(min_object_px)
        self.min_size_px = int(min_size_px)
        self.aspect_jitter = (float(aspect_jitter[0]), float(aspect_jitter[1]))
        self.flip_prob = float(flip_prob)
        self.max_rotation = float(max_rotation)
        self.color_jitter = float(color_jitter)
        self.blend = blend
        self.blend_sigma = float(blend_sigma)
        self.box_tolerance = float(box_tolerance)
        self.min_visible_area = int(min_visible_area)
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        # Per-pool-row prior arrays so a plan is drawn with a few vectorised calls.
        cats = np.asarray(pool.category_ids, dtype=np.int64)
        self._prior_mean = np.array([self.scale_prior.get(int(c), (np.nan, np.nan))[0] for c in cats])
        self._prior_std = np.array([self.scale_prior.get(int(c), (np.nan, np.nan))[1] for c in cats])

    def reseed(self, seed: int | None) -> None:
        """Restart the transform's own Generator (e.g. per DataLoader worker)."""
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    def __repr__(self) -> str:
        count = f"num_paste={self.num_paste}" if self.num_paste is not None else f"max_paste={self.max_paste}"
        return f"CopyPaste({self.pool!r}, {count}, sampling={self.sampling!r}, blend={self.blend!r})"

    # ------------------------------------------------------------------ plan
    def make_plan(self, sample: Sample, rng: np.random.Generator | None = None) -> PastePlan:
        rng = self.rng if rng is None else rng
        height, width = sample.height, sample.width
        count = self.num_paste if self.num_paste is not None else int(rng.integers(0, self.max_paste))
        rows = self.pool.sample(rng, count, self.sampling, present=sample.targets.labels,
                                weights=self.category_weights)
        n = len(rows)
        if n == 0:
            return PastePlan(height, width, (), self.blend, self.blend_sigma)
        # Draw every random number for all objects up front, in a fixed order.
        normal = rng.standard_normal(n)
        uniform_s = rng.uniform(*self.uniform_scale, size=n)
        aspect = rng.uniform(*self.aspect_jitter, size=n)
        flips = rng.random(n) < self.flip_prob
        angles = rng.uniform(-self.max_rotation, self.max_rotation, size=n) if self.max_rotation > 0 else np.zeros(n)
        if self.color_jitter > 0:
            j = self.color_jitter
            colors = rng.uniform(1 - j, 1 + j, size=(n, 3))
        else:
            colors = None
        cx = rng.integers(0, width, size=n)
        cy = rng.integers(0, height, size=n)

        mean, std = self._prior_mean[rows], self._prior_std[rows]
        has_prior = np.isfinite(mean)
        scale = np.where(has_prior, mean + np.nan_to_num(std) * normal, uniform_s)
        scale = np.clip(scale, self.min_object_px / height, self.max_scale)
        area = scale**2 * height * width
        ratio = self.pool.widths[rows] / np.maximum(self.pool.heights[rows], 1) * aspect
        obj_w = np.rint(np.sqrt(area * ratio)).astype(np.int64)
        obj_h = np.rint(np.sqrt(area / ratio)).astype(np.int64)
        ok = (obj_w >= self.min_size_px) & (obj_h >= self.min_size_px) & (obj_w < width) & (obj_h < height)
        ops = []
        for i in np.flatnonzero(ok):
            ops.append(PasteOp(
                pool_row=int(rows[i]), category_id=int(self.pool.category_ids[rows[i]]),
                center_x=int(cx[i]), center_y=int(cy[i]), width=int(obj_w[i]), height=int(obj_h[i]),
                flip=bool(flips[i]), angle=float(angles[i]),
                color=None if colors is None else tuple(float(v) for v in colors[i]),
            ))
        return PastePlan(height, width, tuple(ops), self.blend, self.blend_sigma)

    # ------------------------------------------------------------------ apply
    def apply(self, sample: Sample, plan: PastePlan) -> Sample:
        return apply_plan(sample, plan, self.pool, self.box_tolerance, self.min_visible_area)

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        return self.apply(sample, self.make_plan(sample, rng))
