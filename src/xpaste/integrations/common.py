"""What the framework adapters (torchvision, detectron2, mmdet, ultralytics) share.

- Source-row tracking: every adapter hands `CopyPaste` Targets whose `extra[SOURCE_ROW]` is the input row of
  each instance; pasted instances come back with -1, so the adapter can copy framework-specific fields of
  the originals (ids, ignore flags, polygons) and fill those of pasted instances.
- Building the `CopyPaste` (`build_copy_paste`): from a pool, a pool folder or a ready CopyPaste, a scale
  prior and paste options, with one rule for the missing prior and for options given twice.
- Label maps: frameworks number classes 0..K-1 (or 1..K), a pool holds the dataset's category ids; names are
  matched by the package's one rule (`xpaste.categories.match_name` / `normalize_name`).
- Polygon rasterising, as pycocotools does it (the COCO reference, also used by detectron2 and mmdet).
- Per-DataLoader-worker reseeding.
- Fast layout conversions the adapters share (the paste itself costs about 2 ms on one core, so numpy's
  generic paths would dominate it): CHW <-> HWC images through OpenCV's channel split/merge, bool views
  of 0/1 uint8 masks, mask areas by `cv2.countNonZero`.
- The training set's scale prior measured from framework records (detectron2 dataset dicts, YOLO labels),
  through the one rule of `xpaste.data.stats.category_stats`: sqrt(box area / image area) per original,
  non-crowd, non-pasted annotation; mean and population std per category (method.md, Stage 4).

The per-instance `extra` keys are the constants of `xpaste.core.keys`, re-exported here.
Nothing here imports torch or a framework at module level.
"""
from __future__ import annotations

import os
import types
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from xpaste.categories import match_name
from xpaste.core.keys import ANN_ID, IGNORE, INSTANCE_ID, ISCROWD, PASTED, POOL_ROW, SOURCE_ROW  # noqa: F401
from xpaste.core.targets import Targets
from xpaste.data.stats import category_stats, scale_prior_from_stats
from xpaste.ops.polygons import polygons_to_mask, usable_polygons
from xpaste.paste.config import PasteConfig, PasteConfigError
from xpaste.paste.transform import CopyPaste, warn_missing_prior
from xpaste.plan import plan_weights
from xpaste.pool.store import InstancePool

Prior = dict[int, tuple[float, float]]

__all__ = ["ANN_ID", "IGNORE", "INSTANCE_ID", "ISCROWD", "PASTED", "POOL_ROW", "SOURCE_ROW", "as_bool_masks",
           "build_copy_paste", "chw_from_hwc", "copy_mask", "from_pool_label", "gather_rows", "hwc_from_chw",
           "invert_map", "label_map_from_names", "mask_areas", "mask_boxes", "open_pool", "polygon_mask",
           "polygons_to_masks", "remap_prior", "reseed_for_worker", "scale_prior_from_records", "source_rows",
           "to_pool_labels", "tracked_targets", "worker_seed"]


# ----------------------------------------------------------------------------- the CopyPaste of an adapter
def open_pool(pool: Any) -> Any:
    """The pool of `pool`: a pool folder (str or os.PathLike) opened by `InstancePool.open` (XPasteError when
    it is not a pool); anything else (an InstancePool, a CopyPaste, any object with the pool's interface) as
    it is."""
    return InstancePool.open(pool) if isinstance(pool, (str, os.PathLike)) else pool


def build_copy_paste(source: Any, *, scale_prior: Any = None, options: PasteConfig | Mapping[str, Any] | None = None,
                     where: str, plan: Any = None) -> CopyPaste:
    """The `CopyPaste` an adapter pastes with, from what its user gave (the one rule of the torchvision,
    detectron2, mmdet and ultralytics adapters).

    source: a ready `CopyPaste`, returned as it is (it carries its own prior and options); an `InstancePool`
        (or an object with its interface: `category_ids`, `categories`, sampling); or a pool folder (str or
        os.PathLike, opened by `InstancePool.open`).
    scale_prior: the training set's per-category prior (method.md, Stage 4) as `CopyPaste` takes it:
        {pool category id: (mean, std)}, a COCO/LVIS training json or `xpaste stats` output. None:
        `xpaste.paste.transform.warn_missing_prior(where)` warns (UserWarning, once per `where` and process)
        and the pool is pasted without a prior (`{}`: every category sized by `no_prior_scale`, not X-Paste's
        sizes); `{}` chooses that knowingly, without the warning.
    options: a `PasteConfig`, or `CopyPaste` keywords: `PasteConfig` fields, `config` (a PasteConfig, which
        the fields override), `seed` (int or None), `category_weights` ({pool category id: weight}) and `plan`
        (as the argument below, so every adapter's keyword options take it). None or {}: the defaults of
        `PasteConfig`.
    plan: an `xpaste plan` json (path or parsed dict): its `paste_weight` per category become the
        `category_weights` of `sampling='weighted'` (`xpaste.plan.plan_weights`: every pooled category must be
        in the plan, some with a weight > 0). Needs sampling='weighted'; not with `category_weights`.
    where: the front-end the missing-prior warning names (an adapter's class name, or a hint how to give one).

    Raises: TypeError when `source` is a CopyPaste and `scale_prior` or options are given too (they would be
    ignored silently); PasteConfigError (an XPasteError and ValueError, one line) for an unknown or
    out-of-range option or sampling='weighted' without category_weights; XPasteError for a pool folder that
    does not open or a prior file that cannot be read.
    """
    if isinstance(source, CopyPaste):
        if scale_prior is not None or isinstance(options, PasteConfig) or options or plan is not None:
            raise TypeError("pass CopyPaste options either to CopyPaste or here with a pool, not both")
        return source
    pool = open_pool(source)
    kwargs = {"config": options} if isinstance(options, PasteConfig) else dict(options or {})
    if "plan" in kwargs:
        if plan is not None:
            raise TypeError("plan given twice (as an argument and in the options)")
        plan = kwargs.pop("plan")
    if plan is not None:
        if kwargs.get("category_weights") is not None:
            raise TypeError("pass category_weights or plan, not both")
        sampling = kwargs.get("sampling", (kwargs.get("config") or PasteConfig()).sampling)
        if sampling != "weighted":
            raise PasteConfigError(f"plan= gives per-category paste weights, used by sampling='weighted' only "
                                   f"(sampling is {sampling!r})", hint="pass sampling='weighted'")
        kwargs["category_weights"] = plan_weights(plan, pool=pool)
    if scale_prior is None:
        warn_missing_prior(where, stacklevel=4)  # the warning names the line that built the adapter
        scale_prior = {}
    return CopyPaste(pool, scale_prior=scale_prior, **kwargs)


# ----------------------------------------------------------------------------- source rows
def tracked_targets(boxes: np.ndarray, masks: np.ndarray, labels: np.ndarray,
                    extra: Mapping[str, np.ndarray] | None = None) -> Targets:
    """Targets whose `extra[SOURCE_ROW]` is 0..N-1 (pasted instances will carry -1)."""
    extra = dict(extra or {})
    extra[SOURCE_ROW] = np.arange(len(masks), dtype=np.int64)
    return Targets(boxes, masks, labels, extra)


def source_rows(targets: Targets) -> np.ndarray:
    """(N,) int64: the input row of each output instance, -1 for pasted ones."""
    return np.asarray(targets.extra[SOURCE_ROW], np.int64)


def gather_rows(values: np.ndarray, src: np.ndarray, fill: Any) -> np.ndarray:
    """`values[src]` where src >= 0, `fill` (a scalar or an (N,) array) where src == -1."""
    values = np.asarray(values)
    out = np.empty((len(src),) + values.shape[1:], values.dtype if values.size else np.asarray(fill).dtype)
    out[...] = fill if np.ndim(fill) == 0 else np.asarray(fill).reshape((len(src),) + (1,) * (out.ndim - 1))
    kept = src >= 0
    out[kept] = values[src[kept]]
    return out


# ----------------------------------------------------------------------------- layout conversions
def hwc_from_chw(chw: np.ndarray, reverse: bool = False) -> np.ndarray:
    """(H, W, 3) C-contiguous array of a (3, H, W) image, channels in reverse order when `reverse` (BGR <-> RGB):
    a copy, except that a CHW view of HWC memory (what v2.ToImage makes of a PIL image) comes back as that
    memory itself when not reversed (callers only read it). For uint8 planes by cv2.merge: ~30x faster than
    numpy's transposing copy at 640x640."""
    import cv2

    chw = np.asarray(chw)
    order = (2, 1, 0) if reverse else (0, 1, 2)
    if chw.dtype != np.uint8 or chw.ndim != 3 or chw.shape[0] != 3 or 0 in chw.shape:
        return np.ascontiguousarray(chw[list(order)].transpose(1, 2, 0))
    hwc = chw.transpose(1, 2, 0)
    if hwc.flags.c_contiguous:  # a CHW view of HWC memory (v2.ToImage of a PIL image): no copy, or a swap
        return cv2.cvtColor(hwc, cv2.COLOR_RGB2BGR) if reverse else hwc
    if not all(chw[c].flags.c_contiguous for c in range(3)):
        return np.ascontiguousarray(chw[list(order)].transpose(1, 2, 0))
    return cv2.merge([chw[c] for c in order])


def chw_from_hwc(hwc: np.ndarray, out: np.ndarray | None = None, reverse: bool = False) -> np.ndarray:
    """(3, H, W) C-contiguous copy of an (H, W, 3) image, channels in reverse order when `reverse`, written
    into `out` when given (e.g. the numpy view of a new torch tensor). For uint8, cv2.split writes straight
    into the three planes; checked, so that a change in OpenCV's binding cannot go silent (numpy fallback)."""
    import cv2

    hwc = np.asarray(hwc)
    out = np.empty((hwc.shape[2],) + hwc.shape[:2], hwc.dtype) if out is None else out
    planes = [out[2], out[1], out[0]] if reverse else [out[0], out[1], out[2]]
    if hwc.dtype == np.uint8 and hwc.ndim == 3 and hwc.shape[2] == 3 and 0 not in hwc.shape:
        written = cv2.split(hwc, planes)
        if all(p is o or np.shares_memory(p, o) for p, o in zip(written, planes)):
            return out
    out[...] = hwc[..., ::-1].transpose(2, 0, 1) if reverse else hwc.transpose(2, 0, 1)
    return out


def copy_mask(mask: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Write the (H, W) mask `mask` (bool or uint8, nonzero = inside) into the C-contiguous (H, W) bool `out`.

    pycocotools decodes into Fortran order; numpy's copy of that into a C-order row costs ~10x an OpenCV
    transpose of its C-order transpose, which is what this does for such masks."""
    import cv2

    mask = np.asarray(mask)
    if (mask.dtype in (np.dtype(bool), np.dtype(np.uint8)) and mask.ndim == 2 and mask.flags.f_contiguous
            and not mask.flags.c_contiguous and out.flags.c_contiguous and out.dtype == bool
            and (mask.dtype == bool or int(mask.max(initial=0)) <= 1)):
        written = cv2.transpose(mask.T.view(np.uint8), dst=out.view(np.uint8))
        if written is out or np.shares_memory(written, out):
            return out
    out[...] = mask
    return out


def as_bool_masks(masks: np.ndarray) -> np.ndarray:
    """(N, H, W) bool masks of bool / 0-1 uint8 / any-number masks (nonzero = inside): a zero-copy view
    when the input is bool or uint8 holding only 0 and 1 (the usual Mask / BitmapMasks content), else
    `astype(bool)`."""
    masks = np.asarray(masks)
    if masks.dtype == bool:
        return masks
    if masks.dtype == np.uint8 and (masks.size == 0 or int(masks.max()) <= 1):
        return masks.view(bool)
    return masks.astype(bool)


def mask_boxes(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """((N, 4) float32 XYXY tight boxes, exclusive x2/y2, zeros for an empty mask; (N,) bool non-empty) of
    (N, H, W) bool or uint8 masks (nonzero = inside), by `cv2.boundingRect` per mask (as the paste core
    measures extents); equal to `xpaste.ops.masks.tight_boxes` and to pycocotools' `toBbox` in XYXY."""
    import cv2

    masks = np.asarray(masks)
    boxes = np.zeros((len(masks), 4), np.float32)
    if masks.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {masks.shape}")
    if 0 in masks.shape[1:]:
        return boxes, np.zeros(len(masks), bool)
    if masks.dtype not in (np.dtype(bool), np.dtype(np.uint8)):
        masks = masks.astype(bool)
    for i, m in enumerate(masks.view(np.uint8)):
        x, y, w, h = cv2.boundingRect(np.ascontiguousarray(m))
        if w:
            boxes[i] = (x, y, x + w, y + h)
    return boxes, boxes[:, 2] > boxes[:, 0]


def mask_areas(masks: np.ndarray, boxes: np.ndarray | None = None) -> np.ndarray:
    """(N,) int64 pixel counts of (N, H, W) bool or uint8 masks (nonzero = inside), by `cv2.countNonZero`
    per mask (a numpy `sum(axis=(1, 2))` over bool costs ~15x more).

    `boxes`: optional (N, 4) XYXY boxes known to enclose their masks (e.g. `CopyPaste` output, whose every
    box is the tight box of its mask or, for an empty mask, any box): only the pixels inside are counted."""
    import cv2

    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {masks.shape}")
    if len(masks) == 0 or 0 in masks.shape[1:] or masks.dtype not in (np.dtype(bool), np.dtype(np.uint8)):
        return np.count_nonzero(masks, axis=(1, 2)).astype(np.int64).reshape(len(masks))  # also for N == 0
    view = masks.view(np.uint8) if masks.dtype == bool else masks
    if boxes is None:
        return np.fromiter((cv2.countNonZero(m) for m in view), np.int64, len(view))
    height, width = masks.shape[1:]
    lo = np.clip(np.floor(np.asarray(boxes, np.float64)[:, :2]), 0, (width, height)).astype(np.int64)
    hi = np.clip(np.ceil(np.asarray(boxes, np.float64)[:, 2:]), 0, (width, height)).astype(np.int64)
    return np.fromiter((cv2.countNonZero(m[y0:y1, x0:x1]) if x1 > x0 and y1 > y0 else 0
                        for m, (x0, y0), (x1, y1) in zip(view, lo.tolist(), hi.tolist())), np.int64, len(view))


# ----------------------------------------------------------------------------- label maps
def invert_map(mapping: Mapping[int, int] | None) -> dict[int, int] | None:
    """{value: key} of a one-to-one {pool id: label} map (None stays None)."""
    return None if mapping is None else {int(v): int(k) for k, v in mapping.items()}


def label_map_from_names(label_names: Sequence[str] | Mapping[int, str],
                         pool_categories: Mapping[int, str]) -> dict[int, int]:
    """{pool category id: label} of the pool categories whose name names a framework class.

    label_names: the framework's class names, a list (label = index: mmdet `classes`, a YOLO `names` list)
        or {label: name} (a YOLO data.yaml `names` dict).
    pool_categories: {pool category id: name} (`InstancePool.categories`).
    Names are matched by the package's one rule, `xpaste.categories.match_name`: the exact name first, else
    equal under `normalize_name` (case, `_`, `-` and spacing ignored), so a pool's LVIS "traffic_light" gets
    the class "traffic light". Pool categories that name no class are left out (the caller decides whether
    that is an error). Raises ValueError when a pool category's name names several classes (e.g. classes
    "Cup" and "cup" for a pool's "CUP"): ambiguous, never guessed.
    """
    items = label_names.items() if isinstance(label_names, Mapping) else enumerate(label_names)
    classes = {int(label): str(name) for label, name in items}
    mapping = {}
    for cid, name in pool_categories.items():
        labels = match_name(name, classes)
        if len(labels) > 1:
            listed = ", ".join(f"{label} {classes[label]!r}" for label in labels)
            raise ValueError(f"pool category {int(cid)} {str(name)!r} names several classes ({listed}); rename "
                             "the classes so each name is unique, or give the pool id -> class map explicitly")
        if labels:
            mapping[int(cid)] = labels[0]
    return mapping


def to_pool_labels(labels: Iterable[int], label_map: Mapping[int, int] | None) -> np.ndarray:
    """Framework labels in pool-id space ('present' sampling compares like with like); unmapped -> -1."""
    labels = np.asarray(list(labels) if not isinstance(labels, np.ndarray) else labels, np.int64).reshape(-1)
    inverse = invert_map(label_map)
    if inverse is None:
        return labels
    return np.array([inverse.get(int(c), -1) for c in labels], np.int64)


def from_pool_label(pool_id: int, label_map: Mapping[int, int] | None, what: str = "label_map") -> int:
    """The framework label of a pasted pool category; KeyError naming `what` when it has none."""
    if label_map is None:
        return int(pool_id)
    if int(pool_id) not in label_map:
        raise KeyError(f"pool category {int(pool_id)} has no label in {what}; map every pool category or use a "
                       "pool of the training categories only")
    return int(label_map[int(pool_id)])


# ----------------------------------------------------------------------------- polygons
def polygons_to_masks(polygons: Sequence[Sequence[Any]], height: int, width: int) -> np.ndarray:
    """(N, H, W) bool masks of per-instance polygon lists (flat [x0, y0, x1, y1, ...] each, pixels), rasterised
    with pycocotools as COCO, detectron2 (`polygons_to_bitmask`) and mmdet (`PolygonMasks.to_ndarray`) do.
    Parts of fewer than 3 points or with an odd number of coordinates (slivers a crop leaves) are left out, by
    the one rule of `xpaste.ops.polygons.usable_polygons` (detectron2's); an instance without a usable part
    gets an all-False mask."""
    out = np.zeros((len(polygons), height, width), bool)
    for i, polys in enumerate(polygons):
        mask = polygon_mask(polys, height, width)
        if mask is not None:
            copy_mask(mask, out[i])  # pycocotools' result, in C order
    return out


def polygon_mask(polys: Sequence[Any], height: int, width: int) -> np.ndarray | None:
    """One instance's polygons (flat [x0, y0, ...] each) rasterised by pycocotools as an (H, W) bool mask in
    pycocotools' (Fortran) order (`xpaste.ops.polygons.polygons_to_mask`), or None when no part is usable
    (fewer than 3 points or an odd number of coordinates: `xpaste.ops.polygons.usable_polygons`)."""
    usable, _ = usable_polygons(polys)
    return polygons_to_mask(usable, height, width) if usable else None


# ----------------------------------------------------------------------------- worker reseeding
def worker_seed(base_seed: int | None) -> tuple[tuple, int] | None:
    """(key, seed) for the current DataLoader worker, or None in the main process. The key changes whenever
    a new worker process gets a copy (a new epoch without persistent workers). The seed mixes the worker's
    torch seed (DataLoader base seed + worker id) with `base_seed`, so runs repeat under a fixed torch seed
    and workers never share pastes (forked workers inherit the same Generator state otherwise)."""
    import torch.utils.data

    info = torch.utils.data.get_worker_info()
    if info is None:
        return None
    entropy = [int(info.seed)] + ([int(base_seed)] if base_seed is not None else [])
    return (os.getpid(), info.id, info.seed), int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])


def reseed_for_worker(copy_paste, base_seed: int | None, last_key: tuple | None) -> tuple | None:
    """Reseed `copy_paste` if this is a new worker; returns the key to remember."""
    worker = worker_seed(base_seed)
    if worker is None or worker[0] == last_key:
        return last_key
    copy_paste.reseed(worker[1])
    return worker[0]


# ----------------------------------------------------------------------------- scale prior
def scale_prior_from_records(records: Iterable[tuple[int, float, float, Iterable[dict]]]) -> Prior:
    """The scale prior of framework records: per image (image id, height, width, annotations), each
    annotation a dict with `category_id`, `bbox` as XYWH in pixels, optional `iscrowd` / `pasted`.

    Measured by `category_stats` (crowd and pasted annotations left out; mean and population std of
    sqrt(box area / image area)), so it equals `xpaste stats` on the same annotations."""
    images, anns, cats = [], [], set()
    for image_id, height, width, image_annos in records:
        images.append({"id": image_id, "height": float(height), "width": float(width)})
        for a in image_annos:
            cats.add(int(a["category_id"]))
            anns.append({"image_id": image_id, "category_id": int(a["category_id"]), "bbox": list(a["bbox"]),
                         ISCROWD: a.get(ISCROWD, 0), PASTED: a.get(PASTED, False)})
    dataset = types.SimpleNamespace(categories=[{"id": c, "name": str(c)} for c in sorted(cats)],
                                    images=images, annotations=anns)
    return scale_prior_from_stats(category_stats(dataset))


def remap_prior(prior: Mapping[int, tuple[float, float]], key_of_pool_id: Mapping[int, int] | None) -> Prior:
    """A prior keyed by training labels, re-keyed by pool category id through {pool id: label}
    (None: pool ids are the labels)."""
    if key_of_pool_id is None:
        return {int(k): tuple(v) for k, v in prior.items()}
    return {int(pid): tuple(prior[int(key)]) for pid, key in key_of_pool_id.items() if int(key) in prior}

