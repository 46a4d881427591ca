"""Pure paste kernels: transform a cut-out, blend it into a canvas region, apply a whole plan.

Everything works inside each object's own region: no full-canvas warps, no per-object full-size
temporaries. The only full-size arrays are the output image and the output masks.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from xpaste.core import keys
from xpaste.errors import XPasteError
from xpaste.core.sample import Sample
from xpaste.core.targets import Targets
from xpaste.paste.plan import PastePlan

MASK_THRESHOLD = 128  # colour jitter measures the visible part of a cut-out as alpha >= 128


# ----------------------------------------------------------------------------- cut-out transforms
def rotate_expand(rgba: np.ndarray, angle: float) -> np.ndarray:
    """Rotate about the centre, growing the array so nothing is cut; new pixels are transparent."""
    h, w = rgba.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), angle, 1.0)
    cos, sin = abs(m[0, 0]), abs(m[0, 1])
    new_w = max(1, int(math.ceil(h * sin + w * cos)))
    new_h = max(1, int(math.ceil(h * cos + w * sin)))
    m[0, 2] += new_w / 2.0 - w / 2.0
    m[1, 2] += new_h / 2.0 - h / 2.0
    return cv2.warpAffine(rgba, m, (new_w, new_h), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0, 0))


def color_jitter(rgba: np.ndarray, brightness: float, contrast: float, saturation: float) -> np.ndarray:
    """Brightness, contrast and saturation factors (1 = unchanged) applied to the RGB of a cut-out."""
    rgb = rgba[..., :3].astype(np.float32) * brightness
    gray = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
    visible = rgba[..., 3] >= MASK_THRESHOLD
    mean = float(gray[visible].mean()) if visible.any() else float(gray.mean())
    rgb = (rgb - mean) * contrast + mean
    gray = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
    rgb = (rgb - gray[..., None]) * saturation + gray[..., None]
    out = np.empty_like(rgba)
    out[..., :3] = np.clip(rgb + 0.5, 0, 255).astype(np.uint8)
    out[..., 3] = rgba[..., 3]
    return out


def transform_cutout(rgba: np.ndarray, width: int, height: int, flip: bool = False, angle: float = 0.0,
                     color: tuple[float, float, float] | None = None) -> np.ndarray:
    """Resize to (width, height), then flip, colour-jitter and rotate; returns a new or read-only array."""
    out = rgba
    if out.shape[1] != width or out.shape[0] != height:
        out = cv2.resize(out, (int(width), int(height)), interpolation=cv2.INTER_LINEAR)
    if flip:
        out = cv2.flip(out, 1)  # a contiguous copy (not a reversed view): later steps read it without copying
    if color is not None:
        out = color_jitter(out, *color)
    if angle:
        out = rotate_expand(np.ascontiguousarray(out), angle)
    return out


# ----------------------------------------------------------------------------- blending
def blend_hard(dst: np.ndarray, src: np.ndarray, mask: np.ndarray) -> None:
    """Copy the object's RGB where mask; `dst` is a view into the canvas and is written in place.

    cv2.copyTo is ~25x faster than np.copyto(where=) here; it writes into `dst` because a row-strided view of a
    contiguous image is a valid OpenCV ROI (checked below, so a future binding change cannot go silent). `src`
    is read in place when it is such a view too (a crop of a cut-out), copied only otherwise."""
    if src.strides[1:] != (4, 1):
        src = np.ascontiguousarray(src)
    rgb = cv2.cvtColor(src, cv2.COLOR_RGBA2RGB)
    out = cv2.copyTo(rgb, mask.view(np.uint8), dst)
    if out is not dst and not np.shares_memory(out, dst):
        np.copyto(dst, src[..., :3], where=mask[..., None])


def blend_alpha(dst: np.ndarray, src: np.ndarray, weight: np.ndarray) -> None:
    """dst = w * src + (1 - w) * dst with w in [0, 1] (float32, same height/width as dst)."""
    w = weight[..., None]
    dst[...] = (src[..., :3].astype(np.float32) * w + dst.astype(np.float32) * (1.0 - w) + 0.5).astype(np.uint8)


def _expanded(x0: int, y0: int, x1: int, y1: int, pad: int, height: int, width: int):
    return max(x0 - pad, 0), max(y0 - pad, 0), min(x1 + pad, width), min(y1 + pad, height)


def blend_gaussian(image: np.ndarray, src: np.ndarray, mask: np.ndarray, x0: int, y0: int, sigma: float) -> None:
    """Alpha-blend with a Gaussian-blurred mask so the seam fades over a few pixels."""
    h, w = mask.shape
    pad = int(math.ceil(3 * sigma)) + 1
    ex0, ey0, ex1, ey1 = _expanded(x0, y0, x0 + w, y0 + h, pad, *image.shape[:2])
    ox, oy = x0 - ex0, y0 - ey0
    soft = np.zeros((ey1 - ey0, ex1 - ex0), np.float32)
    soft[oy : oy + h, ox : ox + w] = mask
    soft = cv2.GaussianBlur(soft, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_CONSTANT)
    rgb = cv2.copyMakeBorder(np.ascontiguousarray(src[..., :3]), oy, (ey1 - ey0) - oy - h, ox,
                             (ex1 - ex0) - ox - w, cv2.BORDER_REPLICATE)
    blend_alpha(image[ey0:ey1, ex0:ex1], rgb, soft)


def blend_poisson(image: np.ndarray, src: np.ndarray, mask: np.ndarray, x0: int, y0: int) -> None:
    """Poisson (seamless) cloning solved on the object's neighbourhood only, not on the whole canvas.

    Objects too thin to have an interior (under 3 px across) or too sparse for OpenCV's solver are pasted
    hard instead: they have no gradients worth blending."""
    h, w = mask.shape
    if min(h, w) < 3:
        blend_hard(image[y0 : y0 + h, x0 : x0 + w], src, mask)
        return
    margin = 4
    ex0, ey0, ex1, ey1 = _expanded(x0, y0, x0 + w, y0 + h, margin, *image.shape[:2])
    dst = image[ey0:ey1, ex0:ex1]
    # Reflect-pad so the mask never touches the solve's border (seamlessClone needs a ring of context).
    dst_pad = cv2.copyMakeBorder(np.ascontiguousarray(dst), margin, margin, margin, margin, cv2.BORDER_REFLECT)
    ox, oy = x0 - ex0 + margin, y0 - ey0 + margin
    src_pad = np.zeros_like(dst_pad)
    src_pad[oy : oy + h, ox : ox + w] = src[..., :3]
    mask_pad = np.zeros(dst_pad.shape[:2], np.uint8)
    mask_pad[oy : oy + h, ox : ox + w] = mask.astype(np.uint8) * 255
    bx, by, bw, bh = cv2.boundingRect(mask_pad)
    center = (bx + bw // 2, by + bh // 2)  # keeps the object exactly where it was placed
    try:
        out = cv2.seamlessClone(src_pad, dst_pad, mask_pad, center, cv2.NORMAL_CLONE)
    except cv2.error:  # OpenCV's solver fails on some very sparse masks (a few scattered pixels)
        blend_hard(image[y0 : y0 + h, x0 : x0 + w], src, mask)
        return
    dst[...] = out[margin : margin + dst.shape[0], margin : margin + dst.shape[1]]


# ----------------------------------------------------------------------------- whole plan
def _default_fill(dtype: np.dtype, n: int) -> np.ndarray:
    """Values pasted instances get for an extra column they do not define."""
    if dtype == bool:
        return np.zeros(n, bool)
    if np.issubdtype(dtype, np.signedinteger):
        return np.full(n, -1, dtype)
    if np.issubdtype(dtype, np.number):
        return np.zeros(n, dtype) if np.issubdtype(dtype, np.integer) else np.full(n, np.nan, dtype)
    return np.full(n, "", dtype=object)


def apply_plan(sample: Sample, plan: PastePlan, pool, box_tolerance: float = 10.0,
               min_visible_area: int = 300, alpha_threshold: int = 0) -> Sample:
    """Paste the plan's objects into a copy of `sample`; `pool` gives `rgba(row)` and `instance_ids`.

    The pasted object's mask is alpha > `alpha_threshold` after resizing (method.md Stage 4: the reference
    uses alpha > 0). Later objects occlude earlier ones (originals first): every existing mask is cleared
    wherever pasted pixels land, whatever its box says. After each paste, every object it covered gets its
    box recomputed from its mask and is dropped unless the mask is not empty and either the box moved by at
    most `box_tolerance` px on every side or more than `min_visible_area` pixels remain (the reference's
    thresholds, checked per paste as it does; its first check compares with the annotation box, here with the
    tight box of the original's mask). A cut-out the pool cannot read (`XPasteError` from `pool.rgba`) is skipped
    and listed in the output's `meta["skipped_pastes"]` as (pool row, reason), once per row even when the plan
    draws that row twice; the other objects are pasted.
    The input sample is never modified.
    """

    height, width = sample.height, sample.width
    if (plan.canvas_height, plan.canvas_width) != (height, width):
        raise ValueError(f"plan drawn for {plan.canvas_height}x{plan.canvas_width}, sample is {height}x{width}")
    image = sample.image.copy()
    pieces = []  # (x0, y0, mask, pool_row, category_id, instance_id)
    skipped = []
    for op in plan.ops:
        try:
            rgba = pool.rgba(op.pool_row)
        except XPasteError as e:
            if all(row != int(op.pool_row) for row, _ in skipped):  # a row drawn twice in one plan: listed once
                skipped.append((int(op.pool_row), e.message))
            continue
        obj = transform_cutout(rgba, op.width, op.height, op.flip, op.angle, op.color)
        h, w = obj.shape[:2]
        left, top = op.center_x - w // 2, op.center_y - h // 2
        x0, y0, x1, y1 = max(left, 0), max(top, 0), min(left + w, width), min(top + h, height)
        if x1 <= x0 or y1 <= y0:
            continue
        src = obj[y0 - top : y1 - top, x0 - left : x1 - left]
        if src.strides[1:] != (4, 1):  # a cut-out OpenCV cannot read in place (not row-contiguous)
            src = np.ascontiguousarray(src)
        # alpha > alpha_threshold as 0/1 bytes (THRESH_BINARY: src > thresh), viewed as bool; its tight box
        _, mask = cv2.threshold(cv2.extractChannel(src, 3), alpha_threshold, 1, cv2.THRESH_BINARY)
        c0, r0, cw, rh = cv2.boundingRect(mask)
        if cw == 0:
            continue
        src, mask = src[r0 : r0 + rh, c0 : c0 + cw], mask[r0 : r0 + rh, c0 : c0 + cw].view(bool)
        x0, y0 = x0 + c0, y0 + r0
        region = image[y0 : y0 + mask.shape[0], x0 : x0 + mask.shape[1]]
        if plan.blend == "hard":
            blend_hard(region, src, mask)
        elif plan.blend == "alpha":
            blend_alpha(region, src, src[..., 3].astype(np.float32) * (1.0 / 255.0))
        elif plan.blend == "gaussian":
            blend_gaussian(image, src, mask, x0, y0, plan.blend_sigma)
        else:
            blend_poisson(image, src, mask, x0, y0)
        pieces.append((x0, y0, mask, op.pool_row, op.category_id, str(pool.instance_ids[op.pool_row])))

    out = _occlude(sample, image, pieces, box_tolerance, min_visible_area)
    if skipped:
        out.meta["skipped_pastes"] = list(sample.meta.get("skipped_pastes", [])) + skipped
    return out


def _mask_extent(mask: np.ndarray, box=None) -> tuple[int, int, int, int] | None:
    """Tight integer box (x0, y0, x1, y1), exclusive ends, of an (H, W) bool mask; None if empty.

    `box` is a guess (an input box): when it is the tight box, proving it costs one pixel count of the mask
    (cv2.countNonZero, ~10x faster than boundingRect on a full canvas) and a count and a boundingRect inside
    the box; otherwise the whole mask is measured with boundingRect."""
    if mask.size == 0:
        return None
    u8 = mask.view(np.uint8) if mask.flags.c_contiguous else np.ascontiguousarray(mask).view(np.uint8)
    total = cv2.countNonZero(u8)
    if total == 0:
        return None
    if box is not None:
        bx0, by0, bx1, by1 = (float(v) for v in box)
        height, width = mask.shape
        if (bx0.is_integer() and by0.is_integer() and bx1.is_integer() and by1.is_integer()
                and 0 <= bx0 < bx1 <= width and 0 <= by0 < by1 <= height):
            x0, y0, x1, y1 = int(bx0), int(by0), int(bx1), int(by1)
            crop = u8[y0:y1, x0:x1]
            # every pixel inside the box, and the box the tight box of what is inside it
            if cv2.countNonZero(crop) == total and cv2.boundingRect(crop) == (0, 0, x1 - x0, y1 - y0):
                return x0, y0, x1, y1
    x, y, w, h = cv2.boundingRect(u8)
    return x, y, x + w, y + h


def _occlude(sample: Sample, image: np.ndarray, pieces: list, box_tolerance: float,
             min_visible_area: int) -> Sample:
    """Occlusion and the drop rule, worked out on each object's own region; full-size masks are written once.

    Each object is its tight box (`extent`) and a mask array covering it (`crops`: (array, x, y) of its
    top-left corner; None for an original no paste has touched yet, read from the input when needed). Outside
    its tight box a mask is empty, so clearing, re-measuring and counting inside the box is the same as doing
    it on the full canvas, and each output mask is its region written into an empty canvas (for an original no
    paste touched, the input mask's region). Nothing full-size is copied or scanned but the output masks and, once
    per original, a pixel count proving its box tight (`_mask_extent`)."""
    t = sample.targets
    height, width = sample.height, sample.width
    n, p = len(t), len(pieces)
    total = n + p
    # Where each current mask really lies, measured on the mask: an input box may not enclose its mask
    # (json boxes, resized masks), and occlusion must clear every pasted pixel all the same.
    # Every output box is the tight box of its mask, so an original's box is measured on its mask too (an
    # original with an empty mask keeps its box and is never occluded).
    extent: list = [(0, 0, 0, 0)] * total  # an empty extent is never hit (and its object never occluded)
    alive = [True] * total
    boxes = t.boxes.astype(np.float64).tolist() + [None] * p  # Python floats: float64, as numpy's
    crops: list = [None] * total
    for i in range(n):
        e = _mask_extent(t.masks[i], boxes[i])
        if e is not None:
            extent[i] = boxes[i] = e
    for j, (x0, y0, mask, *_) in enumerate(pieces):
        k = n + j
        x1, y1 = x0 + mask.shape[1], y0 + mask.shape[0]
        keep_px = None
        for i in range(k):
            ex0, ey0, ex1, ey1 = extent[i]
            if not (ex0 < x1 and ex1 > x0 and ey0 < y1 and ey1 > y0 and alive[i]):
                continue
            if keep_px is None:
                keep_px = ~mask
            if crops[i] is None:  # an original's first paste: its own copy of its region
                crops[i] = (t.masks[i, ey0:ey1, ex0:ex1].copy(), ex0, ey0)
            arr, ox, oy = crops[i]
            ix0, iy0, ix1, iy1 = max(x0, ex0), max(y0, ey0), min(x1, ex1), min(y1, ey1)
            arr[iy0 - oy : iy1 - oy, ix0 - ox : ix1 - ox] &= keep_px[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0]
            # The drop rule, after this paste, against the box before it (method.md Stage 4).
            region = arr[ey0 - oy : ey1 - oy, ex0 - ox : ex1 - ox].view(np.uint8)
            area = cv2.countNonZero(region)  # the mask is empty outside its box: the whole mask's area
            if area == 0:
                alive[i] = False
                continue
            bx, by, bw, bh = cv2.boundingRect(region)
            new = (ex0 + bx, ey0 + by, ex0 + bx + bw, ey0 + by + bh)
            old = boxes[i]
            if not (area > min_visible_area or (abs(new[0] - old[0]) <= box_tolerance and abs(new[1] - old[1])
                    <= box_tolerance and abs(new[2] - old[2]) <= box_tolerance and abs(new[3] - old[3])
                    <= box_tolerance)):
                alive[i] = False
                continue
            boxes[i] = extent[i] = new
        crops[k] = (mask, x0, y0)
        extent[k] = boxes[k] = (x0, y0, x1, y1)

    kept = [i for i in range(total) if alive[i]]
    # Written once: an empty canvas per kept object, its region copied in (outside its tight box a mask is
    # empty). An original no paste touched is copied from its input inside its box only.
    masks = np.zeros((len(kept), height, width), bool)
    for r, i in enumerate(kept):
        x0, y0, x1, y1 = extent[i]
        if x1 <= x0:  # an original with an empty mask: its row stays empty
            continue
        if crops[i] is None:
            masks[r, y0:y1, x0:x1] = t.masks[i, y0:y1, x0:x1]
        else:
            arr, ox, oy = crops[i]
            masks[r, y0:y1, x0:x1] = arr[y0 - oy : y1 - oy, x0 - ox : x1 - ox]

    boxes = np.array([boxes[i] for i in kept], np.float64).reshape(-1, 4)
    kept = np.array(kept, np.int64)
    labels = np.concatenate([t.labels, np.array([pc[4] for pc in pieces], np.int64)])[kept]
    extra = {}
    for key, values in t.extra.items():
        if key in keys.PASTE_OWNED:
            continue
        extra[key] = np.concatenate([values, _default_fill(values.dtype, p)])[kept]
    pasted = np.concatenate([t.extra.get(keys.PASTED, np.zeros(n, bool)).astype(bool), np.ones(p, bool)])
    extra[keys.PASTED] = pasted[kept]
    original_ids = t.extra.get(keys.INSTANCE_ID, np.full(n, "", dtype=object)).astype(object)
    pool_rows = np.array([pc[3] for pc in pieces], np.int64)
    pasted_ids = np.array([pc[5] for pc in pieces], dtype=object)
    extra[keys.INSTANCE_ID] = np.concatenate([original_ids, pasted_ids])[kept]
    extra[keys.POOL_ROW] = np.concatenate([t.extra.get(keys.POOL_ROW, np.full(n, -1, np.int64)), pool_rows])[kept]
    targets = Targets(boxes.astype(np.float32), masks, labels, extra)
    meta = dict(sample.meta)
    # input rows that a paste overlapped (their mask may have lost pixels; kept or dropped); every other kept
    # original's mask is its input mask bit for bit: writers may reuse its encoded form (RLE, polygons)
    meta[keys.OCCLUDED_ROWS] = tuple(i for i in range(n) if crops[i] is not None)
    return Sample(image, targets, meta)
