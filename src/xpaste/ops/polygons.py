"""Polygons <-> masks: the one home of COCO polygon rasterising, its <3-point rule, and mask -> polygon tracing.

Rasterising (polygons -> mask) is pycocotools' (`frPyObjects` + `merge` + `decode`), the reference of COCO,
LVIS, detectron2 (`polygons_to_bitmask`) and mmdet (`PolygonMasks.to_ndarray`). A polygon is a flat sequence
[x0, y0, x1, y1, ...] of pixel coordinates (pixel (x, y) covers [x, x+1) x [y, y+1)); an instance is a list of
such parts, merged (union).

The <3-point rule, decided here once (`usable_polygons`): a part is used only when it has an even number of at
least 6 coordinates (3 points); any other part is left out, silently, and the remaining parts are rasterised.
This is detectron2's rule (`detectron2.data.datasets.coco.load_coco_json`: "filter out invalid polygons (< 3
points)", `len(poly) % 2 == 0 and len(poly) >= 6`). It gives the pixels pycocotools gives the whole annotation
wherever pycocotools itself is consistent: pycocotools 2.0.11 rasterises a part of fewer than 3 points that is
not the first to no pixel, but reads a FIRST part of 4 numbers as a box (a list of them raises TypeError,
`frBbox`), refuses a first part of 2 numbers ("input type is not supported"), and silently ignores the last
number of an odd-length part. An instance without any usable part covers no pixel; whether that is an error
is the caller's decision (the COCO decoder `xpaste.ops.masks.segmentation_to_rle` raises, the adapters give
an empty mask).

Tracing (mask -> polygon, `mask_to_polygon`) writes one polygon per instance for ultralytics' YOLO-seg labels;
its rules are ultralytics' own (checked against ultralytics 8.4.190):

* ultralytics rasterises a label with `polygon2mask` (coordinates truncated to int, `cv2.fillPoly`, even-odd
  rule, polygon edges drawn). Mask pixel (x, y) covers [x, x+1) x [y, y+1), so contour points are written at
  pixel centres (+0.5), which truncation maps back to the same pixels.
* One polygon per instance: outer contours and hole contours (`cv2.RETR_CCOMP`) are joined into one polygon by
  zero-width bridges, each walked there and back (ultralytics' own COCO converter joins parts the same way,
  `merge_multi_segment`). Under the even-odd rule a bridge changes no parity, so holes stay holes; the only
  error is the pixels a bridge crosses (none for a hole, whose bridge runs through the object; a short line
  for separate parts: bridges join the closest boundary pixels and form a minimum spanning tree in Chebyshev
  distance, the pixel length of a line; above MAX_TREE_PARTS parts, a cheaper chain).
* Thin objects stay: a 1-pixel line traces to a 2-point contour, written as the 3-point polygon (p0, p1, p0),
  a single pixel as (p, p, p); a label row needs >= 3 points (ultralytics refuses a file mixing 5-column rows).

pycocotools and OpenCV are imported inside the functions that need them (numpy only at import).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

#: A usable polygon part has an even number of at least this many coordinates (3 points; detectron2's rule).
MIN_POLYGON_COORDS = 6
_BLOCK = 4_000_000  # point pairs per distance block in _closest (bounds its memory to ~100 MB)
MAX_TREE_PARTS = 500  # contours joined by a minimum spanning tree; beyond, by a chain (see _chain)


# ----------------------------------------------------------------------------- polygons -> mask
def is_usable_polygon(polygon: Sequence[Any] | np.ndarray) -> bool:
    """True when a flat polygon part has an even number >= 6 of coordinates (the module's <3-point rule)."""
    n = int(np.size(polygon))
    return n >= MIN_POLYGON_COORDS and n % 2 == 0


def usable_polygons(polygons: Sequence[Any]) -> tuple[list[np.ndarray], list[int]]:
    """(usable parts, indices of the parts left out) of one instance's polygon parts, by the <3-point rule.

    Each part is any sequence or array of pixel coordinates, flattened; the usable ones come back as (2K,)
    float64 arrays (K >= 3 points), in input order. Source of the rule: detectron2's `load_coco_json` (module
    docstring). Raises ValueError when a part cannot be read as numbers."""
    kept, dropped = [], []
    for j, p in enumerate(polygons):
        flat = np.asarray(p, np.float64).reshape(-1)
        if is_usable_polygon(flat):
            kept.append(flat)
        else:
            dropped.append(j)
    return kept, dropped


def polygons_to_rle(polygons: Sequence[Any], height: int, width: int) -> dict | None:
    """pycocotools' compressed RLE ({'size': [height, width], 'counts': bytes}) of one instance's polygon parts,
    merged, or None when no part is usable (`usable_polygons`: parts of fewer than 3 points are left out).

    Equal to `pycocotools.mask.merge(frPyObjects(parts, height, width))` of the usable parts: COCO's
    `annToRLE` of the annotation whenever pycocotools reads it consistently (module docstring)."""
    from pycocotools import mask as mask_utils

    parts, _ = usable_polygons(polygons)
    if not parts:
        return None
    return mask_utils.merge(mask_utils.frPyObjects(parts, int(height), int(width)))


def polygons_to_mask(polygons: Sequence[Any], height: int, width: int) -> np.ndarray:
    """(height, width) bool mask of one instance's polygon parts ([[x0, y0, x1, y1, ...], ...], pixels),
    rasterised and merged as pycocotools does; parts of fewer than 3 points (or an odd number of coordinates)
    are left out (`usable_polygons`, detectron2's rule), so an instance without a usable part is all False.

    The array is in pycocotools' (Fortran) memory order; callers that need C order copy it (e.g.
    `xpaste.ops.masks.fortran_to_c`). Raises ValueError when a part is not numeric."""
    from pycocotools import mask as mask_utils

    rle = polygons_to_rle(polygons, height, width)
    if rle is None:
        return np.zeros((int(height), int(width)), bool)
    return mask_utils.decode(rle).astype(bool)


# ----------------------------------------------------------------------------- mask -> one polygon
def _closest(a: np.ndarray, b: np.ndarray) -> tuple[int, int, int]:
    """(i, j, d) with a[i], b[j] the closest pair in Chebyshev distance d = max(|dx|, |dy|) (int (N, 2), (M, 2))."""
    best = (0, 0, np.iinfo(np.int64).max)
    step = max(1, _BLOCK // len(b))
    bx, by = b[None, :, 0], b[None, :, 1]
    for s in range(0, len(a), step):
        # max(|dx|, |dy|) from two 2-D arrays: a reduction over a length-2 last axis is numpy's slow path
        d = np.abs(a[s:s + step, None, 0] - bx)
        np.maximum(d, np.abs(a[s:s + step, None, 1] - by), out=d)
        i, j = np.unravel_index(int(d.argmin()), d.shape)
        if d[i, j] < best[2]:
            best = (s + int(i), int(j), int(d[i, j]))
    return best


def _box_gap(p: np.ndarray, q: np.ndarray) -> int:
    """A lower bound of the Chebyshev distance between two boxes (x1, y1, x2, y2)."""
    return int(max(0, q[0] - p[2], p[0] - q[2], q[1] - p[3], p[1] - q[3]))


def _chain(parts: list[np.ndarray]) -> tuple[int, dict[int, list[tuple[int, int]]], dict[int, int]]:
    """A path instead of a tree, in raster order of the contours' first points: O(points), for masks with
    thousands of parts (noise), where the spanning tree's pairwise search would take too long."""
    order = sorted(range(len(parts)), key=lambda k: (int(parts[k][0, 1]), int(parts[k][0, 0])))
    children: dict[int, list[tuple[int, int]]] = {k: [] for k in range(len(parts))}
    entry = {order[0]: 0}
    for a, b in zip(order, order[1:]):
        i, j, _ = _closest(parts[a], parts[b])
        children[a].append((i, b))
        entry[b] = j
    return order[0], children, entry


def _spanning_tree(parts: list[np.ndarray]) -> tuple[int, dict[int, list[tuple[int, int]]], dict[int, int]]:
    """Prim's minimum spanning tree over contours: (root, children {k: [(point index, child)]}, entry point).

    Above MAX_TREE_PARTS contours, `_chain` instead (same rules, longer bridges)."""
    if len(parts) == 1:  # one contour (most masks): nothing to bridge
        return 0, {0: []}, {0: 0}
    if len(parts) > MAX_TREE_PARTS:
        return _chain(parts)
    boxes = [np.concatenate([p.min(axis=0), p.max(axis=0)]) for p in parts]
    root = max(range(len(parts)), key=lambda k: (boxes[k][2] - boxes[k][0]) * (boxes[k][3] - boxes[k][1]))
    children: dict[int, list[tuple[int, int]]] = {k: [] for k in range(len(parts))}
    entry = {root: 0}
    best: dict[int, tuple[int, int, int, int]] = {}  # k -> (distance, parent, parent point, k's point)
    newest = root
    todo = set(range(len(parts))) - {root}
    while todo:
        for q in todo:  # only the contour attached last can bring q closer
            if q in best and _box_gap(boxes[newest], boxes[q]) >= best[q][0]:
                continue
            i, j, d = _closest(parts[newest], parts[q])
            if q not in best or d < best[q][0]:
                best[q] = (d, newest, i, j)
        k = min(todo, key=lambda q: best[q][0])
        _, parent, i, j = best.pop(k)
        children[parent].append((i, k))
        entry[k] = j
        todo.discard(k)
        newest = k
    return root, children, entry


def _drop_straight(path: np.ndarray) -> np.ndarray:
    """Drop the inner points of straight runs (same horizontal, vertical or diagonal step direction): a line
    along such a run covers exactly the run's pixels, so the rasterised polygon does not change."""
    if len(path) < 3:
        return path
    step = np.diff(path, axis=0)
    unit = np.sign(step)
    regular = (step[:, 0] == 0) | (step[:, 1] == 0) | (np.abs(step[:, 0]) == np.abs(step[:, 1]))
    inner = regular[:-1] & regular[1:] & (unit[:-1] == unit[1:]).all(axis=1) & unit[1:].any(axis=1)
    return path[np.concatenate([[True], ~inner, [True]])]


def mask_to_polygon(mask: np.ndarray, box: np.ndarray | None = None) -> np.ndarray | None:
    """One (M, 2) float32 polygon (x, y pixel coordinates, M >= 3) for an (H, W) bool mask; None if it is empty.

    `box`: optional XYXY pixel box known to enclose every mask pixel (e.g. the tight box CopyPaste gives
    each output mask); the mask is then scanned only there. The polygon is the same with or without it.

    Outer and hole contours are bridged into one polygon (module docstring), so that ultralytics'
    `polygon2mask` of the result covers every mask pixel, no hole pixel, and otherwise only the pixels the
    bridges between separate parts cross. Never returns None for a non-empty mask.
    """
    import cv2

    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {m.shape}")
    if m.dtype != bool:
        m = m.astype(bool)
    # Trace inside the tight box: the same contours, far less work (boundingRect: the box in one pass).
    bx0 = by0 = 0
    region = m
    if box is not None:
        height, width = m.shape
        bx0, by0 = (min(max(math.floor(float(v)), 0), lim) for v, lim in zip(box[:2], (width, height)))
        bx1, by1 = (min(max(math.ceil(float(v)), 0), lim) for v, lim in zip(box[2:4], (width, height)))
        region = m[by0:max(by0, by1), bx0:max(bx0, bx1)]
    x0, y0, w, h = cv2.boundingRect(np.ascontiguousarray(region).view(np.uint8)) if region.size else (0, 0, 0, 0)
    if not w:
        return None
    x0, y0 = x0 + bx0, y0 + by0
    crop = np.ascontiguousarray(m[y0:y0 + h, x0:x0 + w]).view(np.uint8)
    # Every boundary pixel (CHAIN_APPROX_NONE), so bridges join truly closest pixels and never cut a corner;
    # straight runs are merged at the end (_drop_straight).
    contours, _ = cv2.findContours(crop, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    parts = [c.reshape(-1, 2).astype(np.int64) + (x0, y0) for c in contours if len(c)]
    if not parts:
        return None
    root, children, entry = _spanning_tree(parts)
    poly = _drop_straight(_walk(parts, root, children, entry)).astype(np.float32) + 0.5
    if len(poly) < 3:
        poly = poly[[0, -1, 0]]  # a point or a 1-pixel line: (p, p, p) or (p0, p1, p0)
    return poly


def _walk(parts: list[np.ndarray], root: int, children: dict[int, list[tuple[int, int]]],
          entry: dict[int, int]) -> np.ndarray:
    """The bridged tour as one (M, 2) int64 array: each contour once from its entry point and back to it;
    at a point with children, over each bridge, the child's tour, and back to the point.

    Built from array slices (a stack of pieces and contours still to expand), not point by point."""
    at: list[dict[int, list[int]]] = [{} for _ in parts]  # contour -> {point index: [children bridged there]}
    for k, kids in children.items():
        for i, c in kids:
            at[k].setdefault(i, []).append(c)
    pieces: list[np.ndarray] = []
    stack: list[int | np.ndarray] = [root]  # a contour to expand, or a finished piece
    while stack:
        item = stack.pop()
        if isinstance(item, np.ndarray):
            pieces.append(item)
            continue
        pts, e = parts[item], entry[item]
        n = len(pts)
        rolled = np.concatenate([pts[e:], pts[:e], pts[e:e + 1]])  # from the entry point round to it again
        todo: list[int | np.ndarray] = []
        start = 0
        for step in sorted((idx - e) % n for idx in at[item]):
            point = rolled[step:step + 1]
            todo.append(rolled[start:step + 1])
            for child in at[item][(e + step) % n]:
                todo += [child, point]  # over the bridge, the child's tour, back to the point
            start = step + 1
        todo.append(rolled[start:])
        stack.extend(reversed(todo))
    return np.concatenate(pieces)
