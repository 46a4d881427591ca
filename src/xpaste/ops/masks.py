"""Mask kernels: tight boxes, areas, COCO RLE, the one COCO segmentation decoder, connected components, and
the pool-building rules of X-Paste (soft-mask normalisation, binarisation at > 128, largest component with
holes filled).

`segmentation_to_rle` is the package's one reader of a COCO `segmentation` (polygons, compressed or
uncompressed RLE): dataset loading (`xpaste.data.coco`) and evaluation (`xpaste.evaluate.metrics`) both use
it. Polygon rasterising and its <3-point rule live in `xpaste.ops.polygons` (`polygons_to_mask` is
re-exported here under its old name).

pycocotools and OpenCV are imported inside the functions that need them so that the numpy-only helpers stay
light.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from xpaste.ops.polygons import polygons_to_mask, polygons_to_rle, usable_polygons  # noqa: F401  (re-exported)

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


# ------------------------------------------------------------------------------ COCO segmentation decoder
# Why a segmentation is not a mask: the decoder's part of the reason codes of `xpaste.data.coco.SKIP_REASONS`.
INVALID_SEGMENTATION = "invalid_segmentation"  # wrong types, bad coordinates, malformed RLE
SIZE_MISMATCH = "size_mismatch"  # RLE size differs from the image's height/width
DEGENERATE_POLYGON = "degenerate_polygon"  # no polygon part with an even number >= 6 of coordinates
#: The largest image side whose polygons are rasterised (pycocotools' C ints overflow near 5 * 10**7).
MAX_POLYGON_SIDE = 1 << 16


class SegmentationError(ValueError):
    """A COCO segmentation that cannot become a mask. `reason` is a reason code (INVALID_SEGMENTATION,
    SIZE_MISMATCH, DEGENERATE_POLYGON; `xpaste.data.coco` adds its own), str() is "<name>: <detail>" and
    `detail` the part after the name. `xpaste.data.coco.AnnotationError` is this class."""

    def __init__(self, reason: str, message: str, detail: str | None = None):
        super().__init__(message)
        self.reason = reason
        self.detail = message if detail is None else detail


def _fail(reason: str, name: Any, detail: str) -> SegmentationError:
    return SegmentationError(reason, f"{name}: {detail}", detail)


def _compressed_counts(counts: str, name: Any = "compressed RLE") -> np.ndarray:
    """Parse pycocotools' compressed RLE string (the LEB128-like code of maskApi.c's rleFrString) into the
    (K,) int64 run lengths, vectorised (a Python loop over characters cost ~0.2 ms per mask).

    pycocotools does not check that the counts cover the image exactly: a short string decodes into
    uninitialised memory. Parsing it here lets the decoder reject such masks instead of returning garbage.
    Raises SegmentationError (INVALID_SEGMENTATION) naming `name` for a character outside the code.
    """
    try:
        data = counts.encode("ascii")
    except UnicodeEncodeError as e:
        raise _fail(INVALID_SEGMENTATION, name, f"invalid character {counts[e.start]!r} in compressed RLE") from None
    raw = np.frombuffer(data, np.uint8) - np.uint8(48)  # characters below '0' wrap around to >= 208
    if len(raw) == 0:
        return np.zeros(0, np.int64)
    if raw.max() >= 64:
        bad = int(np.argmax(raw >= 64))
        raise _fail(INVALID_SEGMENTATION, name, f"invalid character {counts[bad]!r} in compressed RLE")
    ends = np.flatnonzero(raw < 0x20)  # the last character of each run's code (no continuation bit)
    if len(ends) == 0 or ends[-1] != len(raw) - 1:
        raise _fail(INVALID_SEGMENTATION, name, "truncated compressed RLE string")
    starts = np.empty_like(ends)
    starts[0], starts[1:] = 0, ends[:-1] + 1
    lengths = ends - starts + 1
    if lengths.max() > 12:  # 60 bits: beyond any image; also keeps the shifts below inside int64
        raise _fail(INVALID_SEGMENTATION, name, "compressed RLE run code too long")
    k = np.arange(len(raw)) - np.repeat(starts, lengths)
    x = np.add.reduceat((raw & 0x1F).astype(np.int64) << (5 * k), starts)
    negative = (raw[ends] & 0x10) != 0  # sign extension of the last character
    x[negative] -= np.left_shift(1, 5 * lengths[negative])
    # Runs after the first two are stored as deltas to the run two before (maskApi.c: `if (m > 2) x += cnts[m-2]`).
    x[3::2] = np.cumsum(x[1::2])[1:] if len(x) > 3 else x[3::2]
    x[4::2] = np.cumsum(x[2::2])[1:] if len(x) > 4 else x[4::2]
    return x


def _rle_checked(seg: dict, height: int | None, width: int | None, name: Any) -> dict:
    """The compressed RLE of an RLE `segmentation` whose size and runs are checked (see segmentation_to_rle)."""
    size, counts = seg.get("size"), seg.get("counts")
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(type(v) is int for v in size)):
        raise _fail(INVALID_SEGMENTATION, name, f"RLE 'size' must be [height, width], got {size!r}")
    if height is None or width is None:  # no image size to compare with: the RLE's own (compressed only)
        if isinstance(counts, list):
            raise _fail(INVALID_SEGMENTATION, name, "an uncompressed RLE needs the image's height and width")
        if min(size) < 0:
            raise _fail(INVALID_SEGMENTATION, name, f"RLE 'size' must be [height, width], got {size!r}")
        height, width = size
    elif tuple(size) != (height, width):
        raise _fail(SIZE_MISMATCH, name, f"RLE size {list(size)} differs from the image size [{height}, {width}]")
    if isinstance(counts, list):
        if not all(type(v) is int and v >= 0 for v in counts):
            raise _fail(INVALID_SEGMENTATION, name, "uncompressed RLE counts must be non-negative integers")
        runs = counts
    elif isinstance(counts, (str, bytes)):
        counts = counts.decode("ascii", errors="replace") if isinstance(counts, bytes) else counts
        runs = _compressed_counts(counts, name)
        if (runs < 0).any():
            raise _fail(INVALID_SEGMENTATION, name, "compressed RLE has negative run lengths")
    else:
        raise _fail(INVALID_SEGMENTATION, name,
                    f"RLE counts is a {type(counts).__name__}, expected list or str")
    if int(np.sum(runs)) != height * width:
        raise _fail(INVALID_SEGMENTATION, name, f"RLE runs cover {int(np.sum(runs))} pixels, expected "
                                                f"{height}x{width}={height * width}")
    if isinstance(counts, str):
        return {"size": [height, width], "counts": counts}
    from pycocotools import mask as mask_utils

    rle = mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}


def _polygons_checked(seg: list, height: int, width: int, name: Any) -> tuple[dict, list[int]]:
    """The compressed RLE of a polygon `segmentation` and the parts left out (see segmentation_to_rle)."""
    # pycocotools allocates memory proportional to a polygon's perimeter, so malformed or absurdly distant
    # coordinates are rejected before rasterising.
    if max(height, width) > MAX_POLYGON_SIDE:  # pycocotools scales coordinates by 5 into C ints: a side of
        # 10**9 overflows them (a segfault), and its memory grows with the side
        raise _fail(INVALID_SEGMENTATION, name, f"polygons in a {height}x{width} image: a side over "
                                                f"{MAX_POLYGON_SIDE} px is not rasterised (give the mask as RLE)")
    limit = 8 * max(height, width) + 64
    for j, poly in enumerate(seg):
        if not isinstance(poly, (list, tuple)):
            raise _fail(INVALID_SEGMENTATION, name, f"polygon {j} is a {type(poly).__name__}, expected a list")
        for v in poly:
            if type(v) not in (int, float) or not math.isfinite(v) or abs(v) > limit:
                raise _fail(INVALID_SEGMENTATION, name, f"polygon {j} has an invalid coordinate {v!r}")
    parts, dropped = usable_polygons(seg)
    if not parts:
        raise _fail(DEGENERATE_POLYGON, name, "no usable polygon (each part needs an even number of coordinates, "
                                              f"at least 6: at least 3 points; got {[len(p) for p in seg]})")
    rle = polygons_to_rle(parts, height, width)
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}, dropped


def segmentation_to_rle(seg: Any, height: int | None, width: int | None,
                        name: Any = "segmentation") -> tuple[dict, list[int]]:
    """Decode one COCO `segmentation` (polygons, compressed or uncompressed RLE) into its compressed RLE.

    The package's one COCO segmentation decoder (dataset loading and evaluation both use it). Returns
    (rle, dropped): rle = {'size': [height, width], 'counts': str} (json-ready; pycocotools' `annToRLE` of
    the annotation, whose pixels `rle_decode` gives as an (H, W) bool mask), dropped = the indices of the
    polygon parts left out by the <3-point rule of `xpaste.ops.polygons` (parts with an odd number or fewer
    than 6 coordinates, detectron2's `load_coco_json` rule; [] for an RLE).

    height, width: the image's size in pixels; may be None only for a compressed RLE, which is then checked
    against its own size. Raises SegmentationError (a ValueError; str() starts with `name`), `reason`:
    - SIZE_MISMATCH: an RLE whose size differs from (height, width);
    - DEGENERATE_POLYGON: polygons without any usable part;
    - INVALID_SEGMENTATION: neither a list nor a dict; a part that is not a list; a coordinate that is not a
      finite int/float within 8 * max(height, width) + 64 of the origin (pycocotools' memory grows with the
      perimeter); polygons in an image with a side over MAX_POLYGON_SIDE; an RLE without a [height, width] int size; runs that are not non-negative integers, a
      compressed string outside pycocotools' code, or runs not covering height * width pixels exactly
      (pycocotools decodes a short string into uninitialised memory).
    """
    if isinstance(seg, list):
        if height is None or width is None:
            raise _fail(INVALID_SEGMENTATION, name, "polygons need the image's height and width")
        return _polygons_checked(seg, height, width, name)
    if isinstance(seg, dict):
        return _rle_checked(seg, height, width, name), []
    raise _fail(INVALID_SEGMENTATION, name, f"segmentation is a {type(seg).__name__}, expected list or dict")


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
