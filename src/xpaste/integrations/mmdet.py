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

Scale prior (method.md, Stage 4: X-Paste sizes each pasted object by its category's sizes in the training
set): add `custom_hooks = [dict(type="XPasteScalePriorHook")]`, which measures it from the training
dataset's `ann_file` before training starts (a pipeline transform cannot see its dataset), or pass
`scale_prior=<the training json>` to the transform. Without either, the transform warns once when it first
runs and sizes objects by `no_prior_scale`. Options are `PasteConfig` fields, validated when it is built.
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Mapping, Sequence

import numpy as np

from xpaste.core.sample import Sample
from xpaste.data.stats import resolve_scale_prior
from xpaste.integrations.common import (IGNORE, PASTED, as_bool_masks, build_copy_paste, from_pool_label,
                                        label_map_from_names, mask_boxes, open_pool, polygons_to_masks, remap_prior,
                                        reseed_for_worker, source_rows, to_pool_labels, tracked_targets)
from xpaste.paste.config import PasteConfig

try:  # mmcv (or mmcv-lite) gives the base class mmengine pipelines expect; the helpers work without it.
    from mmcv.transforms import BaseTransform as _Base
except ImportError:  # pragma: no cover - depends on the environment
    _Base = object
try:
    from mmengine.hooks import Hook as _HookBase
except ImportError:  # pragma: no cover - depends on the environment
    _HookBase = object

__all__ = ["XPasteCopyPaste", "XPasteScalePriorHook", "attach_scale_prior", "label_map_from_classes",
           "paste_arrays", "polygons_to_masks", "register"]
# What the missing-prior warning names: where the prior comes from in an mmdet config.
_NO_PRIOR = ("mmdet XPasteCopyPaste (add custom_hooks=[dict(type='XPasteScalePriorHook')] or "
             "pass scale_prior=<ann_file>)")


# ----------------------------------------------------------------------------- numpy conversions
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
    import cv2

    height, width = img.shape[:2]
    masks = as_bool_masks(masks)  # a view of 0/1 uint8 BitmapMasks: no copy
    if masks.shape[1:] != (height, width):
        raise ValueError(f"gt_masks are {masks.shape[1:]}, img is {(height, width)}")
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    labels = np.asarray(labels, np.int64).reshape(-1)
    n = len(labels)
    ignore_flags = np.zeros(n, bool) if ignore_flags is None else np.asarray(ignore_flags, bool).reshape(-1)
    if not len(boxes) == len(masks) == len(ignore_flags) == n:
        raise ValueError(f"{len(boxes)} gt_bboxes, {len(masks)} gt_masks, {n} labels, {len(ignore_flags)} flags")
    tight, nonempty = mask_boxes(masks)
    tight[~nonempty] = boxes[~nonempty]
    # Originals' labels in pool-id space, so 'present' sampling compares like with like.
    targets = tracked_targets(tight, masks, to_pool_labels(labels, label_map), {IGNORE: ignore_flags})
    out = copy_paste(Sample(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), targets), rng=rng)
    t = out.targets
    src = source_rows(t)
    kept = src >= 0
    new_labels = np.empty(len(t), np.int64)
    new_labels[kept] = labels[src[kept]]
    for i in np.flatnonzero(~kept):
        new_labels[i] = from_pool_label(int(t.labels[i]), label_map, "label_map/classes")
    # The masks are CopyPaste's new bool array: its 0/1 bytes are the uint8 masks, no copy needed.
    return {"img": cv2.cvtColor(out.image, cv2.COLOR_RGB2BGR), "boxes": t.boxes.astype(np.float32),
            "masks": t.masks.view(np.uint8), "labels": new_labels,
            "ignore_flags": t.extra[IGNORE].astype(bool) & kept, PASTED: ~kept}


def label_map_from_classes(classes: Sequence[str], pool_categories: Mapping[int, str]) -> dict[int, int]:
    """{pool category id: index in `classes`} for the pool categories whose name names a class, by the
    package's one name rule (`integrations.common.label_map_from_names`: exact name first, else case, `_`,
    `-` and spacing ignored); ValueError when a pool name names several classes."""
    return label_map_from_names(list(classes), pool_categories)


# ----------------------------------------------------------------------------- the transform
class XPasteCopyPaste(_Base):
    """Paste pool instances into mmdet 3.x results (see the module docstring).

    `pool`: a pool folder (opened lazily in each process, so DataLoader workers open their own) or an
    InstancePool. `classes` / `label_map`: pool category -> mmdet label (see the module docstring; `classes`
    are matched to the pool's names by `label_map_from_classes`).
    `scale_prior`: the training set's prior (its annotation json, `xpaste stats` output or a mapping keyed
    by pool category id); left out, `attach_scale_prior(dataset)` / `XPasteScalePriorHook` measure it from
    the dataset's `ann_file`, and a transform that runs without any prior warns once. Every other keyword
    is a `PasteConfig` field (max_paste, sampling, blend, ...) plus `seed` and `category_weights`; they are
    validated when the transform is built (a bad one raises `PasteConfigError`, in one line). Each
    DataLoader worker reseeds from its torch seed mixed with `seed`, so workers differ and runs repeat.
    """

    def __init__(self, pool: Any, classes: Sequence[str] | None = None, label_map: Mapping[int, int] | None = None,
                 scale_prior: Any = None, seed: int | None = None,
                 category_weights: Mapping[int, float] | None = None, **options: Any) -> None:
        if classes is not None and label_map is not None:
            raise ValueError("give classes or label_map, not both")
        self.pool = os.fspath(pool) if isinstance(pool, (str, os.PathLike)) else pool
        self.classes = None if classes is None else [str(c) for c in classes]
        self.label_map = None if label_map is None else {int(k): int(v) for k, v in label_map.items()}
        self.config = PasteConfig.from_dict(options)  # fails here, before any pipeline runs
        self.seed = seed
        self.category_weights = None if category_weights is None else dict(category_weights)
        self.scale_prior = os.fspath(scale_prior) if isinstance(scale_prior, os.PathLike) else scale_prior
        self._label_prior: dict | None = None  # measured from the dataset, keyed by mmdet label
        self._copy_paste = None
        self._owner_pid: int | None = None
        self._worker_key: tuple | None = None
        if not isinstance(self.pool, str):
            self._build(check_only=True)  # an in-memory pool: fail early on bad classes / weights

    @property
    def copy_paste_kwargs(self) -> dict:
        return {"config": self.config, "seed": self.seed, "category_weights": self.category_weights}

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if isinstance(self.pool, str):  # spawned workers reopen the pool themselves
            state["_copy_paste"] = None
        return state

    def set_dataset_prior(self, label_prior: Mapping[int, tuple[float, float]]) -> None:
        """Use `label_prior` ({mmdet label: (mean, std)}) unless a `scale_prior` was given explicitly."""
        if self.scale_prior is None:
            self._label_prior = {int(k): tuple(v) for k, v in label_prior.items()}
            self._copy_paste = None  # rebuilt with it on next use

    def _prior(self, pool, check_only: bool = False) -> Any:
        """The prior to build with: explicit, else the dataset's re-keyed by pool id; None when there is none
        (`build_copy_paste` then warns), {} for the early check (a hook may still attach the dataset's)."""
        if self.scale_prior is not None:
            return self.scale_prior
        if self._label_prior is None:
            return {} if check_only else None
        # pool id -> label; with neither classes nor label_map, pool ids are the labels.
        return remap_prior(self._label_prior, self.label_map if self.label_map is not None
                           else {int(c): int(c) for c in pool.categories})

    def _build(self, check_only: bool = False) -> None:
        pool = open_pool(self.pool)
        if self.classes is not None:
            self.label_map = label_map_from_classes(self.classes, pool.categories)
            if not self.label_map:
                raise ValueError("no pool category name is in classes "
                                 f"(pool has {sorted(pool.categories.values())[:5]}...)")
        copy_paste = build_copy_paste(pool, scale_prior=self._prior(pool, check_only), options=self.copy_paste_kwargs,
                                      where=_NO_PRIOR)
        if not check_only:
            self._copy_paste, self._owner_pid = copy_paste, os.getpid()

    def _paster(self):
        if self._copy_paste is None or (isinstance(self.pool, str) and self._owner_pid != os.getpid()):
            self._build()
        self._worker_key = reseed_for_worker(self._copy_paste, self.seed, self._worker_key)
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
        copy_paste = self._paster()
        out = paste_arrays(img, boxes, masks, labels, results.get("gt_ignore_flags"), copy_paste,
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
        # BitmapMasks(array) stacks a copy of its input; out["masks"] is a new array nothing else holds, so it
        # is handed over after the constructor has run (on an empty stack: same attributes, same checks).
        gt_masks = BitmapMasks(out["masks"][:0], height, width)
        gt_masks.masks = out["masks"]
        results["gt_masks"] = gt_masks
        results["gt_ignore_flags"] = out["ignore_flags"]
        return results

    def __call__(self, results: dict) -> dict:  # BaseTransform's behaviour, also when mmcv is absent
        return self.transform(results)

    def __repr__(self) -> str:
        changed = {k: v for k, v in self.config.to_dict().items() if v != getattr(type(self.config)(), k)}
        return (f"{type(self).__name__}(pool={self.pool!r}, classes={'given' if self.classes else None}, "
                f"seed={self.seed!r}, {', '.join(f'{k}={v!r}' for k, v in changed.items())})")


# ----------------------------------------------------------------------------- the prior of the dataset
def _base_datasets(dataset: Any) -> list:
    """The datasets inside mmengine wrappers (ConcatDataset.datasets, RepeatDataset / ClassBalancedDataset
    .dataset), innermost first."""
    if hasattr(dataset, "datasets"):
        return [d for inner in dataset.datasets for d in _base_datasets(inner)]
    if hasattr(dataset, "dataset") and not hasattr(dataset, "ann_file"):
        return _base_datasets(dataset.dataset)
    return [dataset]


def attach_scale_prior(dataset: Any) -> int:
    """Give every `XPasteCopyPaste` in the pipelines of `dataset` (an mmdet dataset, possibly wrapped) the
    scale prior of that dataset's `ann_file`, measured by `xpaste stats`' rule on its original annotations
    (crowd and `pasted` ones left out) and keyed by mmdet label through the dataset's `cat2label`.
    Transforms given an explicit `scale_prior` keep it. Returns how many transforms got a prior."""
    count = 0
    for ds in _base_datasets(dataset):
        transforms = [t for t in getattr(getattr(ds, "pipeline", None), "transforms", [])
                      if isinstance(t, XPasteCopyPaste) and t.scale_prior is None]
        ann_file = getattr(ds, "ann_file", None)
        if not transforms or not ann_file:
            continue
        by_json_id = resolve_scale_prior(ann_file)
        cat2label = getattr(ds, "cat2label", None)  # CocoDataset / LVISDataset: json category id -> label
        label_prior = by_json_id if not cat2label else remap_prior(by_json_id, {v: k for k, v in cat2label.items()})
        for t in transforms:
            t.set_dataset_prior(label_prior)
            count += 1
    return count


class XPasteScalePriorHook(_HookBase):
    """mmengine hook (`custom_hooks = [dict(type="XPasteScalePriorHook")]`): before training, measures the
    training dataset's scale prior and hands it to its `XPasteCopyPaste` transforms (`attach_scale_prior`).
    It runs before the DataLoader starts its workers, so every worker inherits the prior."""

    priority = "NORMAL"

    def before_train(self, runner) -> None:
        attach_scale_prior(runner.train_dataloader.dataset)


def register(force: bool = False) -> None:
    """Register `XPasteCopyPaste` (TRANSFORMS) and `XPasteScalePriorHook` (HOOKS) in mmdet's registries
    (done on import when mmdet is present)."""
    from mmdet.registry import TRANSFORMS

    from mmdet.registry import HOOKS

    if TRANSFORMS.module_dict.get("XPasteCopyPaste") is not XPasteCopyPaste:  # not twice (custom_imports + code)
        TRANSFORMS.register_module(module=XPasteCopyPaste, force=force)
    if HOOKS.module_dict.get("XPasteScalePriorHook") is not XPasteScalePriorHook:
        HOOKS.register_module(module=XPasteScalePriorHook, force=force)


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
