"""X-Paste as an mmdetection 3.x pipeline transform, `XPasteCopyPaste`.

In a config (importing this module registers the transform in mmdet's TRANSFORMS):

    custom_imports = dict(imports=["xpaste.integrations.mmdet"], allow_failed_imports=False)
    train_pipeline = [
        dict(type="LoadImageFromFile"),
        dict(type="LoadAnnotations", with_bbox=True, with_mask=True),
        dict(type="RandomResize", scale=(1024, 1024), ratio_range=(0.1, 2.0), keep_ratio=True),
        dict(type="RandomCrop", crop_type="absolute_range", crop_size=(1024, 1024), recompute_bbox=True),
        dict(type="RandomFlip", prob=0.5),
        dict(type="XPasteCopyPaste", pool="path/to/pool", max_paste=20, classes=metainfo["classes"]),
        dict(type="PackDetInputs"),
    ]

It pastes after the geometric augmentations, where X-Paste pastes, over the results keys `img` (uint8 BGR),
`gt_bboxes` (HorizontalBoxes or an (N, 4) array), `gt_bboxes_labels`, `gt_masks` (BitmapMasks or
PolygonMasks; written back as BitmapMasks) and `gt_ignore_flags` (pasted instances: False). Boxes are the
tight boxes of the masks (exclusive x2/y2, as `BitmapMasks.get_bboxes`). Put it before transforms that turn
`img` into floats (PhotoMetricDistortion) and do not use it with panoptic `gt_seg_map` targets, which it
does not update.

Labels: mmdet uses contiguous labels 0..K-1 (the index in `metainfo["classes"]`), a pool uses the dataset's
category ids. Give `classes` (matched to the pool's category names) or `label_map` {pool id: label}; with
neither, pool ids are used as labels unchanged.
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Mapping, Sequence

import numpy as np

from xpaste.core.sample import Sample
from xpaste.core.targets import Targets
from xpaste.integrations.workers import reseed_for_worker
from xpaste.ops.masks import polygons_to_mask, tight_boxes

try:  # mmcv (or mmcv-lite) gives the base class mmengine pipelines expect; the helpers work without it.
    from mmcv.transforms import BaseTransform as _Base
except ImportError:  # pragma: no cover - depends on the environment
    _Base = object

_SRC = "_xpaste_source_index"


# ----------------------------------------------------------------------------- numpy conversions
def polygons_to_masks(polygons: Sequence[Sequence[np.ndarray]], height: int, width: int) -> np.ndarray:
    """(N, H, W) bool masks of PolygonMasks-style polygons (per instance a list of flat xy arrays)."""
    out = np.zeros((len(polygons), height, width), bool)
    for i, polys in enumerate(polygons):
        # Fewer than 3 points enclose no pixel (crops leave such slivers); pycocotools rejects them.
        polys = [np.asarray(p, np.float64).reshape(-1) for p in polys]
        polys = [p for p in polys if len(p) >= 6]
        if polys:
            out[i] = polygons_to_mask(polys, height, width)
    return out


def paste_arrays(img: np.ndarray, boxes: np.ndarray, masks: np.ndarray, labels: np.ndarray,
                 ignore_flags: np.ndarray, copy_paste, rng: np.random.Generator | None = None,
                 label_map: Mapping[int, int] | None = None) -> dict[str, np.ndarray]:
    """The transform on plain arrays: (H, W, 3) uint8 BGR image, (N, 4) XYXY boxes, (N, H, W) masks, labels.

    Returns img (BGR), boxes (float32 tight boxes of the masks; an instance with an empty mask keeps its
    box), masks (uint8), labels (int64), ignore_flags (bool) and pasted (bool), originals first in input order.
    """
    img = np.asarray(img)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise TypeError(f"XPasteCopyPaste needs a (H, W, 3) uint8 BGR img, got {img.shape} {img.dtype}: put it "
                        "before transforms that convert the image to float (e.g. PhotoMetricDistortion)")
    height, width = img.shape[:2]
    masks = np.asarray(masks).astype(bool, copy=False)
    if masks.shape[1:] != (height, width):
        raise ValueError(f"gt_masks are {masks.shape[1:]}, img is {(height, width)}")
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    labels = np.asarray(labels, np.int64).reshape(-1)
    n = len(labels)
    ignore_flags = np.zeros(n, bool) if ignore_flags is None else np.asarray(ignore_flags, bool).reshape(-1)
    if not len(boxes) == len(masks) == len(ignore_flags) == n:
        raise ValueError(f"{len(boxes)} gt_bboxes, {len(masks)} gt_masks, {n} labels, {len(ignore_flags)} flags")
    tight = tight_boxes(masks)
    nonempty = masks.any(axis=(1, 2))
    tight[~nonempty] = boxes[~nonempty]
    # Originals' labels in pool-id space, so 'present' sampling compares like with like.
    inverse = None if label_map is None else {int(v): int(k) for k, v in label_map.items()}
    pool_labels = labels if inverse is None else np.array([inverse.get(int(c), -1) for c in labels], np.int64)
    targets = Targets(tight, masks, pool_labels, {_SRC: np.arange(n, dtype=np.int64), "ignore": ignore_flags})
    out = copy_paste(Sample(np.ascontiguousarray(img[..., ::-1]), targets), rng=rng)
    t = out.targets
    src = t.extra[_SRC]
    kept = src >= 0
    new_labels = np.empty(len(t), np.int64)
    new_labels[kept] = labels[src[kept]]
    for i in np.flatnonzero(~kept):
        pool_id = int(t.labels[i])
        if label_map is not None and pool_id not in label_map:
            raise KeyError(f"pool category {pool_id} has no label in label_map/classes; map every pool "
                           "category or use a pool of the training classes only")
        new_labels[i] = label_map[pool_id] if label_map is not None else pool_id
    return {"img": np.ascontiguousarray(out.image[..., ::-1]), "boxes": t.boxes.astype(np.float32),
            "masks": t.masks.astype(np.uint8), "labels": new_labels,
            "ignore_flags": t.extra["ignore"].astype(bool) & kept, "pasted": ~kept}


def label_map_from_classes(classes: Sequence[str], pool_categories: Mapping[int, str]) -> dict[int, int]:
    """{pool category id: index in `classes`} for the pool categories whose name is in `classes`."""
    index = {str(name): i for i, name in enumerate(classes)}
    return {int(cid): index[name] for cid, name in pool_categories.items() if name in index}


# ----------------------------------------------------------------------------- the transform
class XPasteCopyPaste(_Base):
    """Paste pool instances into mmdet 3.x results (see the module docstring).

    `pool`: a pool folder (opened lazily in each process, so DataLoader workers open their own) or an
    InstancePool. `classes` / `label_map`: pool category -> mmdet label (see the module docstring). Other
    keyword arguments go to `xpaste.CopyPaste` (max_paste, sampling, blend, scale_prior, seed, ...). Each
    DataLoader worker reseeds from its torch seed mixed with `seed`, so workers differ and runs repeat.
    """

    def __init__(self, pool: Any, max_paste: int = 20, classes: Sequence[str] | None = None,
                 label_map: Mapping[int, int] | None = None, **copy_paste_kwargs: Any) -> None:
        if classes is not None and label_map is not None:
            raise ValueError("give classes or label_map, not both")
        self.pool = os.fspath(pool) if isinstance(pool, (str, os.PathLike)) else pool
        self.classes = None if classes is None else [str(c) for c in classes]
        self.label_map = None if label_map is None else {int(k): int(v) for k, v in label_map.items()}
        self.copy_paste_kwargs = {"max_paste": int(max_paste), **copy_paste_kwargs}
        self._copy_paste = None
        self._owner_pid: int | None = None
        self._worker_key: tuple | None = None
        if not isinstance(self.pool, str):
            self._build()  # an in-memory pool: fail early on bad options

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if isinstance(self.pool, str):  # spawned workers reopen the pool themselves
            state["_copy_paste"] = None
        return state

    def _build(self) -> None:
        from xpaste.paste.transform import CopyPaste
        from xpaste.pool.store import InstancePool

        pool = InstancePool.open(self.pool) if isinstance(self.pool, str) else self.pool
        if self.classes is not None:
            self.label_map = label_map_from_classes(self.classes, pool.categories)
            if not self.label_map:
                raise ValueError(f"no pool category name is in classes (pool has {sorted(pool.categories.values())[:5]}...)")
        self._copy_paste = CopyPaste(pool, **self.copy_paste_kwargs)
        self._owner_pid = os.getpid()

    def _paster(self):
        if self._copy_paste is None or (isinstance(self.pool, str) and self._owner_pid != os.getpid()):
            self._build()
        self._worker_key = reseed_for_worker(self._copy_paste, self.copy_paste_kwargs.get("seed"), self._worker_key)
        return self._copy_paste

    def transform(self, results: dict) -> dict:
        for key in ("img", "gt_bboxes", "gt_masks"):
            if key not in results:
                raise KeyError(f"XPasteCopyPaste needs results[{key!r}]: load with "
                               "LoadAnnotations(with_bbox=True, with_mask=True)")
        img = results["img"]
        height, width = img.shape[:2]
        gt_bboxes, gt_masks = results["gt_bboxes"], results["gt_masks"]
        boxes = gt_bboxes.tensor.cpu().numpy() if hasattr(gt_bboxes, "tensor") else np.asarray(gt_bboxes)
        if isinstance(gt_masks.masks, np.ndarray):  # BitmapMasks
            masks = gt_masks.masks
        else:  # PolygonMasks: per instance a list of flat xy arrays
            masks = polygons_to_masks(gt_masks.masks, height, width)
        n = len(masks)
        labels = results.get("gt_bboxes_labels", np.zeros(n, np.int64))
        out = paste_arrays(img, boxes, masks, labels, results.get("gt_ignore_flags"), self._paster(),
                           label_map=self.label_map)
        from mmdet.structures.mask import BitmapMasks

        results["img"] = out["img"]
        if hasattr(gt_bboxes, "tensor"):
            import torch

            old = gt_bboxes.tensor
            results["gt_bboxes"] = type(gt_bboxes)(torch.as_tensor(out["boxes"], dtype=old.dtype, device=old.device))
        else:
            results["gt_bboxes"] = out["boxes"]
        results["gt_bboxes_labels"] = out["labels"]
        results["gt_masks"] = BitmapMasks(out["masks"], height, width)
        results["gt_ignore_flags"] = out["ignore_flags"]
        return results

    def __call__(self, results: dict) -> dict:  # BaseTransform's behaviour, also when mmcv is absent
        return self.transform(results)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(pool={self.pool!r}, classes={'given' if self.classes else None}, "
                f"{', '.join(f'{k}={v!r}' for k, v in self.copy_paste_kwargs.items())})")


def register(force: bool = False) -> None:
    """Register `XPasteCopyPaste` in mmdet's TRANSFORMS registry (done on import when mmdet is present)."""
    from mmdet.registry import TRANSFORMS

    if TRANSFORMS.module_dict.get("XPasteCopyPaste") is XPasteCopyPaste:
        return  # already registered (module imported twice, e.g. custom_imports and user code)
    TRANSFORMS.register_module(module=XPasteCopyPaste, force=force)


def _register_if_available() -> None:
    import importlib.util

    if importlib.util.find_spec("mmdet") is None:
        return
    try:
        register()
    except (ImportError, AssertionError) as exc:  # mmdet asserts on an incompatible mmcv version
        warnings.warn(f"mmdet is installed but could not be imported, XPasteCopyPaste is not registered: {exc}",
                      stacklevel=2)


_register_if_available()
