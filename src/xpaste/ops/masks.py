"""Mask kernels: tight boxes, areas, RLE / polygon conversion, connected components, and the pool-building
rules of X-Paste (soft-mask normalisation, binarisation at > 128, largest component with holes filled).

pycocotools and OpenCV are imported inside the functions that need them so that the numpy-only helpers stay
light.
"""
from __future__ import annotations

import numpy as np

#: X-Paste binarises every 0-255 soft mask at > 128 (method.md, Stage 2; the reference code's `mask > 128`).
BINARY_THRESHOLD = 128


def binarize(soft: np.ndarray, threshold: int = BINARY_THRESHOLD) -> np.ndarray:
    """(H, W) bool foreground of a 0-255 soft mask: `soft > threshold` (128, as X-Paste's reference code).

    The one binarisation of the package (segment stage, scoring composite, cut-outs, report): spelled once so
    that a mask value of exactly 128 is background everywhere. A bool input is returned as is.
    """
    soft = np.asarray(soft)
    if soft.dtype == bool:
        return soft
    return soft > threshold


def normalize_soft(soft: np.ndarray) -> np.ndarray:
    """Min-max normalise one image's soft mask to a (H, W) uint8 map in 0-255 (method.md, Stage 2).

    X-Paste normalises every segmenter's raw output per image, `(x - min) / (max - min) * 255`, before the
    > 128 binarisation, so that segmenters with different output ranges (logits, probabilities, mattes) are
    comparable. Any real dtype is accepted; NaN counts as the minimum. A constant map (max == min, e.g. all
    zeros, or a segmenter that found nothing) has no foreground: it becomes all zeros. Idempotent on maps
    that already span 0..255.
    """
    x = np.asarray(soft, np.float64)
    if x.ndim != 2:
        raise ValueError(f"expected an (H, W) soft mask, got shape {x.shape}")
    finite = np.isfinite(x)
    if not finite.any():
        return np.zeros(x.shape, np.uint8)
    lo, hi = float(x[finite].min()), float(x[finite].max())
    if hi <= lo:
        return np.zeros(x.shape, np.uint8)
    x = np.where(finite, x, lo)
    return np.clip(np.rint((x - lo) / (hi - lo) * 255.0), 0, 255).astype(np.uint8)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool mask with every hole filled: background not 4-connected to the image border becomes
    foreground (the same rule as `scipy.ndimage.binary_fill_holes` with its default structure)."""
    import cv2

    mask = np.asarray(mask, bool)
    h, w = mask.shape
    outside = np.zeros((h + 2, w + 2), np.uint8)
    outside[1:-1, 1:-1] = ~mask
    outside[0, :] = outside[-1, :] = 1
    outside[:, 0] = outside[:, -1] = 1
    flood = np.zeros((h + 4, w + 4), np.uint8)  # floodFill's mask is 2 px larger than its image
    cv2.floodFill(outside, flood, (0, 0), 2, flags=4)
    return outside[1:-1, 1:-1] != 2


def largest_filled_component(mask: np.ndarray) -> np.ndarray:
    """X-Paste's cut-out region: the largest external contour of a bool mask, filled (method.md, Stage 3).

    The reference code runs `cv2.findContours(mask, RETR_EXTERNAL, ...)`, keeps the contour with the largest
    `cv2.contourArea` and draws it filled, so the region is one 8-connected component with its holes filled.
    Here: the 8-connected components, each with holes filled (`fill_holes`), ranked by the contour area of
    their external contour (ties: the larger filled pixel count, then the first in raster order).
    Returns an (H, W) bool mask, all False when the input is empty.
    """
    import cv2

    mask = np.asarray(mask, bool)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return np.zeros(mask.shape, bool)
    best, best_key = None, None
    for label in range(1, n):
        x, y, w, h = (int(v) for v in stats[label, :4])
        component = labels[y : y + h, x : x + w] == label
        contours, _ = cv2.findContours(component.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        area = max(cv2.contourArea(c) for c in contours)
        filled = fill_holes(component)
        key = (area, int(filled.sum()))
        if best_key is None or key > best_key:
            best_key, best = key, (x, y, filled)
    out = np.zeros(mask.shape, bool)
    x, y, filled = best
    out[y : y + filled.shape[0], x : x + filled.shape[1]] = filled
    return out


def tight_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x1, y1, x2, y2) with exclusive x2/y2 of a 2-D bool mask, or None when it is empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if len(rows) == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def tight_boxes(masks: np.ndarray) -> np.ndarray:
    """(N, 4) float32 XYXY tight boxes of (N, H, W) masks; empty masks give zeros."""
    out = np.zeros((len(masks), 4), np.float32)
    for i, m in enumerate(masks):
        box = tight_box(m)
        if box is not None:
            out[i] = box
    return out


def rle_encode(mask: np.ndarray) -> dict:
    """Compressed COCO RLE of a 2-D bool mask, with `counts` as a str (json-ready)."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def rle_decode(rle: dict) -> np.ndarray:
    """Decode a compressed or uncompressed COCO RLE into a 2-D bool mask."""
    from pycocotools import mask as mask_utils

    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, list):  # uncompressed RLE
        if sum(counts) != h * w:
            raise ValueError(f"uncompressed RLE counts sum to {sum(counts)}, expected {h}x{w}={h * w}")
        rle = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    else:
        rle = {"size": [h, w], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return fortran_to_c(mask_utils.decode(rle)).view(bool)


def fortran_to_c(mask: np.ndarray) -> np.ndarray:
    """A C-order copy of an (H, W) or (H, W, 1) uint8 mask that pycocotools decoded in Fortran order.

    numpy's strided copy of a Fortran array into C order costs ~10x OpenCV's transpose of its C-order
    transpose (the same bytes), which is what this does."""
    import cv2

    mask = mask.reshape(mask.shape[0], mask.shape[1])
    if mask.flags.c_contiguous or not mask.flags.f_contiguous or mask.dtype != np.uint8 or 0 in mask.shape:
        return np.ascontiguousarray(mask)
    return cv2.transpose(mask.T)


def polygons_to_mask(polygons: list, height: int, width: int) -> np.ndarray:
    """Rasterise COCO polygons ([[x1, y1, x2, y2, ...], ...]) into a bool mask, as pycocotools does."""
    from pycocotools import mask as mask_utils

    polys = [list(map(float, p)) for p in polygons]
    for p in polys:
        if len(p) < 6 or len(p) % 2:
            raise ValueError(f"polygon with {len(p)} coordinates (needs an even number, at least 6)")
    rles = mask_utils.frPyObjects(polys, height, width)
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 8-connected component of a bool mask."""
    import cv2

    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 2:
        return mask.astype(bool)
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == best


def count_components(mask: np.ndarray) -> int:
    import cv2

    n, _ = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    return int(n) - 1


def _band_counts(mask: np.ndarray, x0: int, x1: int) -> list[int]:
    """Uncompressed COCO RLE counts of a full mask that is empty outside columns [x0, x1).

    COCO RLE runs go down columns (column-major) and start with a run of zeros. Only the band of columns
    that can hold object pixels is transposed, so the cost follows the object's width, not the image's.
    """
    height, width = mask.shape
    flat = np.ascontiguousarray(mask[:, x0:x1].T).reshape(-1).view(np.uint8)
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    edges = np.concatenate(([0], change, [flat.size]))
    runs = np.diff(edges)
    if flat.size and flat[0]:  # RLE starts with a (possibly empty) zero run
        runs = np.concatenate(([0], runs))
    counts = runs.tolist()
    counts[0] += x0 * height
    tail = (width - x1) * height
    if tail:
        if len(counts) % 2 == 1:  # the last run is zeros: extend it
            counts[-1] += tail
        else:
            counts.append(tail)
    return counts


def masks_to_rles(masks: np.ndarray, boxes: np.ndarray) -> list[dict]:
    """Compressed COCO RLEs (json-ready) of (N, H, W) masks whose pixels lie inside XYXY `boxes`.

    Equal to `rle_encode` mask by mask, but transposes only each box's column band (the full-mask
    Fortran copy pycocotools needs costs ~7 ms per 640x640 image with 18 masks)."""
    from pycocotools import mask as mask_utils

    out = []
    for mask, box in zip(masks, boxes):
        height, width = mask.shape
        x0 = int(np.clip(np.floor(box[0]), 0, width))
        x1 = int(np.clip(np.ceil(box[2]), x0, width))
        rle = mask_utils.frPyObjects({"size": [height, width], "counts": _band_counts(mask, x0, x1)}, height, width)
        out.append({"size": [height, width], "counts": rle["counts"].decode("ascii")})
    return out
