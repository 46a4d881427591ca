"""`CopyPaste`: the X-Paste paste transform. It draws a `PastePlan` from a Generator, then applies it."""
from __future__ import annotations

import os
import warnings
from typing import Mapping

import numpy as np

from xpaste.core.sample import Sample
from xpaste.data.stats import check_prior_covers, resolve_scale_prior
from xpaste.paste.config import PasteConfig, PasteConfigError
from xpaste.paste.functional import apply_plan
from xpaste.paste.plan import PasteOp, PastePlan
from xpaste.pool.categories import refuse_empty_pool

_WARNED: set[str] = set()


def warn_missing_prior(where: str, stacklevel: int = 3) -> None:
    """Warn once per front-end that pastes without a scale prior (sizes then are not X-Paste's); `stacklevel`
    as `warnings.warn` takes it, counted from this function (3: the caller of the function that calls it)."""
    if where in _WARNED:
        return
    _WARNED.add(where)
    warnings.warn(f"{where} was built without a scale prior, so pasted objects are sized by the "
                  "no-prior rule, not by the training set's per-category sizes as in X-Paste; pass "
                  "scale_prior=<your COCO/LVIS training json or `xpaste stats` output> (or scale_prior={} "
                  "to silence this)", UserWarning, stacklevel=stacklevel)


class CopyPaste:
    """Paste pool instances into samples, as X-Paste does during training (method.md, Stage 4).

    Options come from one `PasteConfig` (see `xpaste.paste.config` for each default and its source):
    pass `config=`, keyword options (`CopyPaste(pool, max_paste=10)`), or both (keywords win).

    Count: `num_paste` if given, else uniform in [0, max_paste). Sampling: 'balanced' (uniform over
    categories, then within), 'uniform' (over instances), 'present' (only categories already in the image)
    or 'weighted' (`category_weights`). Scale: s ~ Normal(mean, std) of the category's sqrt box-area
    fraction, clipped to [min_object_px / H, max_scale]; the target area is s^2 * H * W with the cut-out's
    aspect ratio times U(aspect_jitter); objects under `min_size_px` or not smaller than the canvas are
    skipped. The centre is uniform over the canvas (objects may be cut by the border).

    `scale_prior` is the training set's per-category prior: a mapping {category id: (mean, std)}, a path to
    `xpaste stats` output, or a path to a COCO/LVIS json (measured on its original annotations). Without
    one, every category falls back to `no_prior_scale` and the sizes are not X-Paste's: a `UserWarning`
    says so once (pass `scale_prior={}` to opt out knowingly).

    Call `copy_paste(sample)` for a new Sample; the input is never modified. Randomness comes from the
    `rng` argument if given, else from the transform's own Generator seeded by `seed`.

    Raises: `PasteConfigError` (one line) for a bad option; `XPasteError` for an unreadable prior file or a pool
    with no instance to draw (`xpaste.pool.categories.refuse_empty_pool`).
    """

    def __init__(self, pool, config: PasteConfig | None = None, *,
                 scale_prior: Mapping[int, tuple[float, float]] | str | os.PathLike | None = None,
                 category_weights: Mapping[int, float] | None = None, seed: int | None = None,
                 **options):
        config = (config or PasteConfig()).replace(**options) if options else (config or PasteConfig())
        if config.sampling == "weighted" and not category_weights:
            raise PasteConfigError("sampling='weighted' needs category_weights")
        refuse_empty_pool(pool)  # an empty pool pastes nothing: refused here, never silently
        self.config = config
        self.pool = pool
        self.category_weights = dict(category_weights or {})
        if scale_prior is None:
            warn_missing_prior(type(self).__name__)
        self.scale_prior = resolve_scale_prior(scale_prior)
        check_prior_covers(self.scale_prior, pool.category_ids, where=scale_prior if isinstance(
            scale_prior, (str, os.PathLike)) else None)  # a prior of another dataset: refused, never unused
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        # Per-pool-row prior arrays so a plan is drawn with a few vectorised calls.
        cats = np.asarray(pool.category_ids, dtype=np.int64)
        self._prior_mean = np.array([self.scale_prior.get(int(c), (np.nan, np.nan))[0] for c in cats])
        self._prior_std = np.array([self.scale_prior.get(int(c), (np.nan, np.nan))[1] for c in cats])

    def __getattr__(self, name: str):  # options read as attributes: transform.max_paste, transform.blend ...
        config = self.__dict__.get("config")
        if config is not None and name in PasteConfig.field_names():
            return getattr(config, name)
        raise AttributeError(name)

    def reseed(self, seed: int | None) -> None:
        """Restart the transform's own Generator (e.g. per DataLoader worker)."""
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    def __repr__(self) -> str:
        return f"CopyPaste({self.pool!r}, {self.config!r}, {len(self.scale_prior)} prior categories)"

    # ------------------------------------------------------------------ plan
    def make_plan(self, sample: Sample, rng: np.random.Generator | None = None) -> PastePlan:
        rng = self.rng if rng is None else rng
        c = self.config
        height, width = sample.height, sample.width
        count = c.num_paste if c.num_paste is not None else int(rng.integers(0, c.max_paste))
        rows = self.pool.sample(rng, count, c.sampling, present=sample.targets.labels,
                                weights=self.category_weights)
        n = len(rows)
        if n == 0:
            return PastePlan(height, width, (), c.blend, c.blend_sigma)
        # Draw every random number for all objects up front, in a fixed order.
        normal = rng.standard_normal(n)
        uniform_s = rng.uniform(*c.uniform_scale, size=n)
        aspect = rng.uniform(*c.aspect_jitter, size=n)
        flips = rng.random(n) < c.flip_prob
        angles = rng.uniform(-c.max_rotation, c.max_rotation, size=n) if c.max_rotation > 0 else np.zeros(n)
        if c.color_jitter > 0:
            j = c.color_jitter
            colors = rng.uniform(1 - j, 1 + j, size=(n, 3))
        else:
            colors = None
        cx = rng.integers(0, width, size=n)
        cy = rng.integers(0, height, size=n)

        mean, std = self._prior_mean[rows], self._prior_std[rows]
        has_prior = np.isfinite(mean)
        if has_prior.any():
            scale = np.where(has_prior, mean + np.nan_to_num(std) * normal, uniform_s)
        else:  # no category has a prior: the same values np.where gives, without computing the other branch
            scale = uniform_s
        scale = np.clip(scale, c.min_object_px / height, c.max_scale)
        area = scale**2 * height * width
        cut_w, cut_h = self.pool.widths[rows], self.pool.heights[rows]
        ratio = cut_w / np.maximum(cut_h, 1) * aspect
        obj_w = np.rint(np.sqrt(area * ratio)).astype(np.int64)
        obj_h = np.rint(np.sqrt(area / ratio)).astype(np.int64)
        min_size = np.full(n, c.min_size_px)
        if c.no_prior_scale == "cutout":  # DiverGen: the cut-out's own size times U(uniform_scale), >= 3 px
            own = ~has_prior
            obj_w[own] = np.maximum(np.rint(cut_w[own] * uniform_s[own]), 3).astype(np.int64)
            obj_h[own] = np.maximum(np.rint(cut_h[own] * uniform_s[own]), 3).astype(np.int64)
            min_size[own] = 3
        ok = (obj_w >= min_size) & (obj_h >= min_size) & (obj_w < width) & (obj_h < height)
        ops = []
        cats = self.pool.category_ids[rows].tolist()  # Python scalars once, not one numpy scalar per field
        rows_, cx, cy, obj_w, obj_h = rows.tolist(), cx.tolist(), cy.tolist(), obj_w.tolist(), obj_h.tolist()
        flips, angles = flips.tolist(), angles.tolist()
        colors = None if colors is None else [tuple(v) for v in colors.tolist()]
        for i in np.flatnonzero(ok).tolist():
            ops.append(PasteOp(
                pool_row=rows_[i], category_id=cats[i], center_x=cx[i], center_y=cy[i], width=obj_w[i],
                height=obj_h[i], flip=flips[i], angle=angles[i], color=None if colors is None else colors[i],
            ))
        return PastePlan(height, width, tuple(ops), c.blend, c.blend_sigma)

    # ------------------------------------------------------------------ apply
    def apply(self, sample: Sample, plan: PastePlan) -> Sample:
        c = self.config
        return apply_plan(sample, plan, self.pool, c.box_tolerance, c.min_visible_area, c.alpha_threshold)

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        return self.apply(sample, self.make_plan(sample, rng))
