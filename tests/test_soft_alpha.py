"""The cut-out's alpha as the reference saves it (issue 18; method.md Stage 3; the reference's `clean_pool.py`):
the segmenter's soft value (0-255) inside the filled largest region of `soft > 128`, 0 elsewhere, not 255. The
binary alpha (255 on the region) stays as `build_pool.alpha: binary`. Checked on a soft mask written by hand,
against a literal transcription of the reference's rule (findContours / contourArea / fillPoly, then
`alpha *= region`), through build-pool (resume refused when the rule changes) and through the paste (the mask
is still alpha > alpha_threshold; `blend=alpha` blends with the soft values)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from test_build_pool import config, write_run

from xpaste.errors import XPasteError
from xpaste.stages.build_pool import ALPHA_RULES, DEFAULT_ALPHA, apply_preset, build_pool, cutout

# A hand-built 6x6 soft mask (a segmenter's 0-255 output): a ring of values > 128 around a one-pixel hole (100),
# a smaller blob of three pixels > 128 in the bottom-right corner, and values <= 128 outside both (60, 90, 128).
SOFT = np.array([
    [0,    0,   0,   0,   0,   0],
    [0,  150, 200, 180,   0,   0],
    [0,  210, 100, 250,   0,  60],
    [0,  190, 140, 230,   0,   0],
    [90,   0,   0,   0, 128, 255],
    [0,    0,   0,   0, 130, 240],
], np.uint8)
# The reference rule by hand: the ring is the largest region (contour area 4 vs 0.5 for the blob); its hole is
# filled, so the hole keeps its soft value 100; everything else is 0. Cropped to the ring's box, rows/cols 1-3.
WANT_SOFT = np.array([
    [150, 200, 180],
    [210, 100, 250],
    [190, 140, 230],
], np.uint8)
WANT_BINARY = np.full((3, 3), 255, np.uint8)


def image_for(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


def reference_cutout(image: np.ndarray, soft: np.ndarray) -> np.ndarray | None:
    """The reference's clean_pool.py rule, written out: seg_mask = fillPoly(largest external contour of
    alpha > 128), alpha *= seg_mask, crop to seg_mask's box (inclusive ends)."""
    seg = (soft > 128).astype(np.uint8)
    contours, _ = cv2.findContours(seg, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return None
    region = np.zeros_like(seg)
    cv2.fillPoly(region, [contours[int(np.argmax([cv2.contourArea(c) for c in contours]))]], 1)
    ys, xs = np.nonzero(region)
    rgba = np.dstack([image, soft * region])
    return rgba[ys.min():ys.max() + 1, xs.min():xs.max() + 1]


def test_default_alpha_is_soft():
    from xpaste.stages.build_pool import BuildPoolConfig

    assert DEFAULT_ALPHA == "soft" and ALPHA_RULES == ("soft", "binary")
    assert BuildPoolConfig().alpha == "soft"
    assert apply_preset({})["alpha"] == "soft" and apply_preset({"alpha": "binary"})["alpha"] == "binary"
    with pytest.raises(XPasteError, match="build_pool.alpha"):
        apply_preset({"alpha": "matte"})


def test_hand_built_soft_mask_gives_the_reference_alpha():
    image = image_for(SOFT.shape)
    got = cutout(image, SOFT)
    assert got.dtype == np.uint8 and got.shape == (3, 3, 4)
    np.testing.assert_array_equal(got[..., :3], image[1:4, 1:4])
    np.testing.assert_array_equal(got[..., 3], WANT_SOFT)
    np.testing.assert_array_equal(cutout(image, SOFT, "soft"), got)
    np.testing.assert_array_equal(got, reference_cutout(image, SOFT))
    binary = cutout(image, SOFT, "binary")
    np.testing.assert_array_equal(binary[..., :3], image[1:4, 1:4])
    np.testing.assert_array_equal(binary[..., 3], WANT_BINARY)
    # the binary option's region is the soft rule's support, plus pixels the filling closed whose value is 0
    holed = SOFT.copy()
    holed[2, 2] = 0
    soft_alpha = cutout(image, holed)[..., 3]
    assert soft_alpha[1, 1] == 0 and (soft_alpha > 0).sum() == 8
    assert (cutout(image, holed, "binary")[..., 3] > 0).sum() == 9
    with pytest.raises(ValueError):
        cutout(image, SOFT, "matte")


def test_bool_masks_and_empty_masks():
    image = image_for(SOFT.shape)
    # a bool mask is a 0/255 soft mask: the soft rule gives 255 on its pixels and 0 in the hole the filling
    # closed (as the reference does with a 0/255 mask PNG); binary gives 255 on the whole filled region
    got = cutout(image, SOFT > 128)
    np.testing.assert_array_equal(got[..., 3], np.where(WANT_SOFT > 128, 255, 0))
    np.testing.assert_array_equal(got, reference_cutout(image, (SOFT > 128).astype(np.uint8) * 255))
    np.testing.assert_array_equal(cutout(image, SOFT > 128, "binary")[..., 3], WANT_BINARY)
    assert cutout(image, np.full(SOFT.shape, 128, np.uint8)) is None  # nothing > 128
    assert cutout(image, np.zeros(SOFT.shape, bool), "binary") is None


def smooth_soft_masks(seed: int, n: int):
    """Soft masks with gradients, holes and a smaller second object (whose region the reference's fillPoly
    and xpaste's component filling agree on: no 1-px necks)."""
    r = np.random.default_rng(seed)
    for _ in range(n):
        h, w = int(r.integers(30, 70)), int(r.integers(30, 70))
        yy, xx = np.mgrid[:h, :w]
        cy, cx = r.uniform(0.4, 0.6) * h, r.uniform(0.4, 0.6) * w
        rad = r.uniform(8, max(9.0, min(h, w) * 0.25))
        d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
        soft = np.clip(255 * (1.2 - d / rad), 0, 255)  # a soft disc, > 128 well inside
        soft[d < rad * r.uniform(0.1, 0.3)] = r.uniform(0, 128)  # a hole with a soft value <= 128
        by, bx = int(r.integers(0, 3)), int(r.integers(0, 3))  # a small blob in a corner
        soft[by:by + 3, bx:bx + 3] = 240
        yield np.rint(soft).astype(np.uint8)


def test_matches_the_reference_rule_on_smooth_soft_masks():
    checked = 0
    for i, soft in enumerate(smooth_soft_masks(7, 40)):
        image = image_for(soft.shape, i)
        want = reference_cutout(image, soft)
        got = cutout(image, soft)
        np.testing.assert_array_equal(got, want)
        inside = got[..., 3] > 0
        assert (got[..., 3][inside] <= 255).all() and (got[..., 3] < 255).any()  # soft values, not 255
        checked += 1
    assert checked == 40


# --- through build-pool ---------------------------------------------------------------------------

def write_soft_run(run: Path) -> np.ndarray:
    """A one-candidate run whose mask is the hand-built SOFT, placed at rows/cols 20-25 of a 48x48 mask."""
    write_run(run, [{"candidate": "a", "category": 1, "segmenter": "s1", "score": 30.0, "area": 0.3}])
    mask = np.zeros((48, 48), np.uint8)
    mask[20:26, 20:26] = SOFT
    Image.fromarray(mask).save(run / "masks" / "a-s1.png")
    return np.asarray(Image.open(run / "images" / "a.png").convert("RGB"))


def pool_alpha(run: Path) -> np.ndarray:
    from xpaste.pool.store import InstancePool

    pool = InstancePool.open(run / "pool")
    assert len(pool) == 1
    return pool.rgba(0)


def test_build_pool_stores_soft_alpha_and_refuses_a_changed_rule(tmp_path):
    image = write_soft_run(tmp_path)
    summary = build_pool(tmp_path, config(tmp_path, area_min=0.0, area_max=1.0), progress=False)
    assert summary["added"] == 1
    rgba = pool_alpha(tmp_path)
    np.testing.assert_array_equal(rgba[..., 3], WANT_SOFT)
    np.testing.assert_array_equal(rgba[..., :3], image[21:24, 21:24])
    # the rule is in the build's record: a rerun with the other rule is refused in one line, --fresh rebuilds
    with pytest.raises(XPasteError) as e:
        build_pool(tmp_path, config(tmp_path, area_min=0.0, area_max=1.0, alpha="binary"), progress=False)
    assert "build_pool.alpha changed" in e.value.message and "\n" not in str(e.value)
    np.testing.assert_array_equal(pool_alpha(tmp_path)[..., 3], WANT_SOFT)  # nothing written
    build_pool(tmp_path, config(tmp_path, area_min=0.0, area_max=1.0, alpha="binary"), progress=False, fresh=True)
    np.testing.assert_array_equal(pool_alpha(tmp_path)[..., 3], WANT_BINARY)


def test_a_pool_built_before_the_option_is_not_resumed_silently(tmp_path):
    """A record written before build_pool.alpha existed (no alpha among its options) was built binary: the
    soft default is refused, naming the option."""
    import json

    from xpaste.stages.build_pool import record_path

    write_soft_run(tmp_path)
    cfg = config(tmp_path, area_min=0.0, area_max=1.0)
    build_pool(tmp_path, cfg, progress=False)
    path = record_path(tmp_path, tmp_path / "pool")
    record = json.loads(path.read_text())
    del record["options"]["alpha"]
    path.write_text(json.dumps(record))
    with pytest.raises(XPasteError) as e:
        build_pool(tmp_path, cfg, progress=False)
    assert "build_pool.alpha changed" in e.value.message and "predates" in e.value.message


def test_pipeline_config_key():
    from xpaste.stages.config import load_config

    assert load_config(None, []).to_dict()["build_pool"]["alpha"] == "soft"
    assert load_config(None, ["build_pool.alpha=binary"]).build_pool.alpha == "binary"
    with pytest.raises(XPasteError, match="build_pool.alpha"):
        load_config(None, ["build_pool.alpha=matte"])


# --- through the paste ----------------------------------------------------------------------------

class OnePool:
    """The smallest pool apply_plan needs: rgba(row) and instance_ids."""

    def __init__(self, rgba: np.ndarray):
        self._rgba = rgba
        self.instance_ids = np.array(["x"], dtype=object)

    def rgba(self, row: int) -> np.ndarray:
        return self._rgba


def paste_once(rgba: np.ndarray, blend: str, alpha_threshold: int = 0):
    from xpaste.core.sample import Sample
    from xpaste.core.targets import Targets
    from xpaste.paste.functional import apply_plan
    from xpaste.paste.plan import PasteOp, PastePlan

    canvas = np.full((10, 10, 3), 40, np.uint8)
    sample = Sample(canvas, Targets.empty(10, 10))
    h, w = rgba.shape[:2]
    plan = PastePlan(10, 10, (PasteOp(0, 1, 5, 5, w, h),), blend=blend)  # same size: no resampling
    return apply_plan(sample, plan, OnePool(rgba), alpha_threshold=alpha_threshold), 5 - w // 2, 5 - h // 2


@pytest.mark.parametrize("hole", [100, 0])
def test_paste_mask_is_alpha_above_the_threshold_and_alpha_blend_uses_soft_values(hole):
    soft = SOFT.copy()
    soft[2, 2] = hole
    image = image_for(soft.shape, 3)
    rgba = cutout(image, soft)
    binary = cutout(image, soft, "binary")
    out, x0, y0 = paste_once(rgba, "hard")
    mask = out.targets.masks[0][y0:y0 + 3, x0:x0 + 3]
    # at the default threshold 0 the soft rule keeps every pixel of the region whose soft value is > 0: the
    # whole region here, except a hole of value 0, which the reference leaves out too (its alpha is 0)
    np.testing.assert_array_equal(mask, rgba[..., 3] > 0)
    assert mask.sum() == (9 if hole else 8)
    np.testing.assert_array_equal(paste_once(binary, "hard")[0].targets.masks[0][y0:y0 + 3, x0:x0 + 3],
                                  np.ones((3, 3), bool))
    # blend=alpha: w = alpha / 255, the soft value
    out, _, _ = paste_once(rgba, "alpha")
    w = rgba[..., 3:].astype(np.float32) / 255
    want = (rgba[..., :3].astype(np.float32) * w + 40 * (1 - w) + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(out.image[y0:y0 + 3, x0:x0 + 3], want)
    assert (out.image[y0:y0 + 3, x0:x0 + 3] != rgba[..., :3]).any()  # soft values blend, not copy
    # a threshold of 127 (alpha >= 128) drops the region's pixels whose soft value is <= 127
    strict, _, _ = paste_once(rgba, "hard", alpha_threshold=127)
    np.testing.assert_array_equal(strict.targets.masks[0][y0:y0 + 3, x0:x0 + 3], rgba[..., 3] > 127)
