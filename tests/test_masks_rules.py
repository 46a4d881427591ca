"""X-Paste's mask rules (method.md Stages 2-3) against independent references: scipy's hole filling, skimage's
component labelling and intensity rescaling, OpenCV's contour area, and hand-written literal rules."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage import exposure, measure

from xpaste.ops.masks import BINARY_THRESHOLD, binarize, fill_holes, largest_filled_component, normalize_soft
from xpaste.stages.build_pool import cutout


def random_masks(seed: int, n: int):
    r = np.random.default_rng(seed)
    for i in range(n):
        h, w = int(r.integers(1, 60)), int(r.integers(1, 60))
        m = r.random((h, w)) < r.uniform(0.3, 0.8)
        yield ndi.binary_opening(m) if i % 3 == 0 else m


def ring(h=30, w=40, cy=15, cx=20, r0=5, r1=10):
    yy, xx = np.mgrid[:h, :w]
    d = (yy - cy) ** 2 + (xx - cx) ** 2
    return (d >= r0**2) & (d < r1**2)


# --- binarisation: > 128, spelled once --------------------------------------------------------------

def test_binarize_is_strictly_greater_than_128():
    soft = np.arange(256, dtype=np.uint8).reshape(16, 16)
    want = np.array([[v > 128 for v in row] for row in soft.tolist()])
    np.testing.assert_array_equal(binarize(soft), want)
    assert BINARY_THRESHOLD == 128
    assert not binarize(np.array([[128]], np.uint8))[0, 0] and binarize(np.array([[129]], np.uint8))[0, 0]
    b = np.array([[True, False]])
    np.testing.assert_array_equal(binarize(b), b)


# --- min-max normalisation per image ----------------------------------------------------------------

@pytest.mark.parametrize("seed", range(6))
def test_normalize_soft_matches_skimage_rescale(seed):
    r = np.random.default_rng(seed)
    h, w = int(r.integers(2, 40)), int(r.integers(2, 40))
    kind = seed % 3
    if kind == 0:
        x = r.normal(size=(h, w)) * 7 - 3  # logits
    elif kind == 1:
        x = r.uniform(0.2, 0.4, size=(h, w)).astype(np.float32)  # a low-contrast probability map
    else:
        x = r.integers(30, 90, size=(h, w), dtype=np.uint8)  # a dim matte
    got = normalize_soft(x)
    want = exposure.rescale_intensity(np.asarray(x, np.float64), in_range="image", out_range=(0.0, 255.0))
    assert got.dtype == np.uint8 and got.shape == x.shape
    assert np.abs(got.astype(float) - want).max() <= 0.5 + 1e-9
    assert got.min() == 0 and got.max() == 255
    np.testing.assert_array_equal(normalize_soft(got), got)  # idempotent on a 0..255 map


def test_normalize_soft_constant_and_nan():
    for value in (0, 7, 255):
        np.testing.assert_array_equal(normalize_soft(np.full((4, 5), value, np.uint8)), np.zeros((4, 5), np.uint8))
    x = np.array([[np.nan, 0.0], [1.0, 0.5]])
    assert normalize_soft(x).tolist() == [[0, 0], [255, 128]]
    with pytest.raises(ValueError):
        normalize_soft(np.zeros((2, 2, 3)))


# --- holes filled, largest external contour --------------------------------------------------------

def test_fill_holes_matches_scipy():
    cases = [ring(), ring() | ring(r0=1, r1=3), ring(cy=2, r0=4, r1=8), np.zeros((5, 5), bool), np.ones((3, 3), bool)]
    cases += list(random_masks(0, 200))
    for m in cases:
        np.testing.assert_array_equal(fill_holes(m), ndi.binary_fill_holes(m))


def _oracle_largest_filled(mask: np.ndarray) -> np.ndarray:
    """skimage 8-connected labels, each filled by scipy; the one with the most filled pixels."""
    labels = measure.label(mask, connectivity=2)
    best = np.zeros(mask.shape, bool)
    for lab in range(1, labels.max() + 1):
        filled = ndi.binary_fill_holes(labels == lab)
        if filled.sum() > best.sum():
            best = filled
    return best


def _clear(mask: np.ndarray) -> bool:
    """True unless two filled components are within 2x of each other in size (where contour area and pixel
    count may rank them differently)."""
    labels = measure.label(mask, connectivity=2)
    sizes = sorted((ndi.binary_fill_holes(labels == k).sum() for k in range(1, labels.max() + 1)), reverse=True)
    return len(sizes) < 2 or sizes[0] >= 2 * sizes[1]


def test_largest_filled_component_matches_oracle_when_the_largest_is_clear():
    checked = 0
    for m in random_masks(1, 300):
        if not _clear(m):
            continue
        np.testing.assert_array_equal(largest_filled_component(m), _oracle_largest_filled(m))
        checked += 1
    assert checked > 50
    # a ring with a blob in its hole: one region, the hole (and the blob) filled
    m = ring() | ring(r0=0, r1=2)
    np.testing.assert_array_equal(largest_filled_component(m), ndi.binary_fill_holes(ring()))
    assert not largest_filled_component(np.zeros((4, 4), bool)).any()


def test_largest_is_by_contour_area_as_the_reference():
    """A 1-px line of 40 pixels has contour area 0; a 5x5 square has 16: the reference keeps the square."""
    import cv2

    m = np.zeros((20, 60), bool)
    m[2, 5:45] = True
    m[10:15, 10:15] = True
    areas = {}
    for name, part in (("line", m[:5]), ("square", m[5:])):
        contours, _ = cv2.findContours(part.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        areas[name] = max(cv2.contourArea(c) for c in contours)
    assert areas["line"] < areas["square"]
    want = np.zeros_like(m)
    want[10:15, 10:15] = True
    np.testing.assert_array_equal(largest_filled_component(m), want)


def test_cutout_is_the_filled_region_cropped_rgba():
    r = np.random.default_rng(3)
    checked = 0
    for m in [ring(), ring() | ring(r0=0, r1=2)] + list(random_masks(2, 60)):
        image = r.integers(0, 256, (*m.shape, 3), dtype=np.uint8)
        soft = np.where(m, 200, 40).astype(np.uint8)
        soft[m & (r.random(m.shape) < 0.1)] = 128  # exactly 128 is background (> 128 rule)
        if not _clear(soft > 128):
            continue
        region = _oracle_largest_filled(soft > 128)
        got = cutout(image, soft)
        if not region.any():
            assert got is None
            continue
        ys, xs = np.nonzero(region)
        box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
        assert got.dtype == np.uint8 and got.shape == (*region[box].shape, 4)
        np.testing.assert_array_equal(got[..., :3], image[box])
        # the reference's alpha (clean_pool.py): the soft value inside the filled region, 0 outside it
        np.testing.assert_array_equal(got[..., 3], np.where(region, soft, 0)[box])
        binary = cutout(image, soft, "binary")  # the option: 255 on the whole filled region
        np.testing.assert_array_equal(binary[..., :3], image[box])
        np.testing.assert_array_equal(binary[..., 3], region[box] * 255)
        checked += 1
    assert checked > 20
