"""X-Paste's simple-background filter for web images (numpy only).

The paper keeps a crawled image only when at least 40% of its pixels lie within +-5 of its most common
colour: object-centric product-style photos on a plain backdrop pass, cluttered scenes fail, and the
segmenters of Stage 2 work far better on the former.

Exact definition used here (`simple_background_fraction`):
  * the most common colour m is the exact 24-bit RGB value with the highest pixel count; ties go to the
    smallest packed value r << 16 | g << 8 | b, so the result never depends on pixel order;
  * a pixel p is "within +-5" when |p_c - m_c| <= 5 for every channel c (inclusive, per channel);
  * the fraction is (number of such pixels) / (number of pixels); an empty image gives 0.0.

Finding m exactly would need a 2**24-bin histogram (128 MiB) or a sort of every pixel. Instead a
quantised histogram prunes the search: pixels are binned by the top 6 bits of each channel (2**18 bins,
64 exact colours per bin). The best exact colour inside the fullest bin gives a lower bound L on the
mode's count; a bin whose count is below L cannot hold the mode, so only pixels of bins with count >= L
are sorted. On the images this filter is for (a large flat backdrop) that is a tiny fraction of pixels;
on noise it degrades gracefully to one sort of all pixels. The result is identical to the brute force.
"""
from __future__ import annotations

import numpy as np

#: The paper's settings: +-5 per channel around the most common colour, at least 40% of the pixels.
TOLERANCE = 5
MIN_FRACTION = 0.4

_COARSE_SHIFT = 2  # keep 6 bits per channel in the quantised histogram


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got shape {rgb.shape} dtype {rgb.dtype}")
    return rgb


def most_common_colour(rgb: np.ndarray) -> tuple[np.ndarray, int]:
    """The exact most common colour of an (H, W, 3) uint8 image (ties: smallest packed value) and its count."""
    pixels = _check_rgb(rgb).reshape(-1, 3)
    if len(pixels) == 0:
        raise ValueError("empty image has no most common colour")
    r, g, b = (pixels[:, i].astype(np.uint32) for i in range(3))
    packed = (r << 16) | (g << 8) | b
    s = _COARSE_SHIFT
    coarse = ((r >> s) << (16 - 2 * s)) | ((g >> s) << (8 - s)) | (b >> s)
    coarse_counts = np.bincount(coarse, minlength=1 << (24 - 3 * s))
    # Lower bound on the mode's count: the best exact colour within the fullest coarse bin.
    top_bin = int(np.argmax(coarse_counts))
    _, top_counts = np.unique(packed[coarse == top_bin], return_counts=True)
    lower_bound = int(top_counts.max())
    # Every colour with count >= lower_bound lives in a bin with count >= lower_bound.
    keep = (coarse_counts >= lower_bound)[coarse]
    values, counts = np.unique(packed[keep], return_counts=True)
    best = int(np.argmax(counts))  # np.unique sorts, so argmax returns the smallest tied value
    v = int(values[best])
    return np.array([(v >> 16) & 255, (v >> 8) & 255, v & 255], np.uint8), int(counts[best])


def simple_background_fraction(rgb: np.ndarray, tolerance: int = TOLERANCE) -> float:
    """Fraction of pixels within +-`tolerance` (every channel, inclusive) of the most common colour."""
    rgb = _check_rgb(rgb)
    if rgb.shape[0] * rgb.shape[1] == 0:
        return 0.0
    mode, _ = most_common_colour(rgb)
    near = np.ones(rgb.shape[:2], bool)
    for c in range(3):  # one channel at a time keeps the temporary arrays at (H, W)
        near &= np.abs(rgb[..., c].astype(np.int16) - int(mode[c])) <= tolerance
    return float(np.count_nonzero(near)) / near.size


def is_simple_background(rgb: np.ndarray, min_fraction: float = MIN_FRACTION, tolerance: int = TOLERANCE) -> bool:
    """The paper's web-image filter: True when at least `min_fraction` of the pixels match the backdrop."""
    return simple_background_fraction(rgb, tolerance) >= min_fraction
