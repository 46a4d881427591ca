"""X-Paste for ultralytics YOLO-seg: a training-time paste transform (the exporter is in `yolo_export`).

ultralytics is AGPL-3.0, so this module is an optional extra (`pip install 'xpaste[ultralytics]'`) and is
never imported by `xpaste/__init__.py`.

Online pasting (checked against ultralytics 8.4.190):

    from xpaste.integrations.ultralytics import xpaste_trainer
    YOLO("yolo11n-seg.pt").train(data="data.yaml", trainer=xpaste_trainer(pool, max_paste=10))

Scale prior (method.md, Stage 4): given a pool, the trainer measures X-Paste's per-category prior from the
training labels of the data yaml (the train split's YOLO-seg polygons -> boxes, sqrt(w * h) in image
fractions, as `xpaste stats` measures sqrt(box area / image area)) unless `scale_prior=` is given.
A transform built by hand takes `scale_prior=` (a training json, `xpaste stats` output, or a mapping keyed
by pool category id; `scale_prior_from_yolo_labels` measures one from a YOLODataset's labels) and warns
once without one.

`xpaste_trainer` returns a `SegmentationTrainer` subclass whose `build_dataset` installs an
`XPasteYOLOTransform` in the training dataset's pipeline right after ultralytics' geometric step (Mosaic +
RandomPerspective, the analogue of the large-scale jitter X-Paste pastes after), so MixUp, HSV and flips then
treat pasted and original objects alike. `install_xpaste(dataset, transform)` does the same for a dataset
built by your own trainer; it also survives `close_mosaic`, which rebuilds the pipeline.

Polygons of pasted / occluded instances come from `xpaste.integrations.yolo_export.mask_to_polygon` (one
polygon per instance; see there). `export_yolo_seg` and `mask_to_polygon` stay importable from here.
"""
from __future__ import annotations

from typing import Any, Mapping

import cv2
import numpy as np
from ultralytics.data.augment import Compose, Format, LetterBox, RandomPerspective
from ultralytics.models.yolo.segment import SegmentationTrainer
from ultralytics.utils.instance import Instances
from ultralytics.utils.ops import resample_segments

from xpaste.core.sample import Sample
from xpaste.integrations.common import (build_copy_paste, label_map_from_names, mask_areas, open_pool, remap_prior,
                                        reseed_for_worker, scale_prior_from_records, source_rows, tracked_targets)
from xpaste.integrations.yolo_export import export_yolo_seg, mask_to_polygon  # noqa: F401  (re-exported)
from xpaste.paste.config import PasteConfig
from xpaste.paste.transform import CopyPaste

SEGMENT_POINTS = 1000  # ultralytics resamples every polygon to this many points (YOLODataset.update_labels_info)


# ----------------------------------------------------------------------------- online transform
def _class_map(pool, names: Mapping[int, str] | list | None, class_map: Mapping[int, int] | None) -> dict[int, int]:
    """Pool category id -> YOLO class index. Every pooled category must map, so no paste is ever unlabeled.
    `names` are matched to the pool's category names by `label_map_from_names` (the package's one name rule;
    ValueError when a name is ambiguous)."""
    if class_map is not None:
        mapping = {int(k): int(v) for k, v in class_map.items()}
    elif names is not None:
        mapping = label_map_from_names(names, pool.categories)
    else:  # export_yolo_seg's numbering of the dataset the pool was cut from
        mapping = {cid: i for i, cid in enumerate(sorted(pool.categories))}
    missing = sorted(set(np.unique(pool.category_ids).tolist()) - set(mapping))
    if missing:
        raise ValueError(f"pool categories {missing[:10]} have no YOLO class; pass class_map= or names= covering "
                         "them, or use a pool restricted to the dataset's categories")
    return mapping


class XPasteYOLOTransform:
    """Paste pool instances into an ultralytics `labels` dict (img BGR, cls (N, 1), instances with segments).

    `XPasteYOLOTransform(pool, names=..., **copy_paste_kwargs)` (pool: an InstancePool or a pool folder) or
    `XPasteYOLOTransform(copy_paste, ...)`; the CopyPaste is built by `integrations.common.build_copy_paste`
    (no `scale_prior`: a warning, once; options with a ready CopyPaste: TypeError).
    Class ids: `class_map` {pool category id: YOLO class}, or `names` (the data.yaml names; matched by category
    name, case, `_`, `-` and spacing ignored), or by default the pool's categories in id order
    (export_yolo_seg's numbering). The instances come back in the format and normalisation they came in;
    originals a paste did not touch keep their exact polygon and box, occluded ones get a polygon of their
    visible part (or are dropped, by CopyPaste's rule), pasted ones get a polygon resampled to the input's
    point count. `calls` / `pasted` count work done in this process (a DataLoader worker counts in its own
    copy).
    """

    def __init__(self, pool_or_copy_paste: Any, *, names: Mapping[int, str] | list | None = None,
                 class_map: Mapping[int, int] | None = None, scale_prior: Any = None, **options: Any) -> None:
        # options: PasteConfig fields, config, seed, category_weights
        cp = build_copy_paste(pool_or_copy_paste, scale_prior=scale_prior, options=options, where=type(self).__name__)
        self.copy_paste = cp
        self.class_map = _class_map(cp.pool, names, class_map)
        self._to_pool = {v: k for k, v in self.class_map.items()}
        self._base_seed = cp.seed
        self._worker_key: tuple | None = None
        self.calls = 0
        self.pasted = 0

    def __repr__(self) -> str:
        return f"XPasteYOLOTransform({self.copy_paste!r})"

    def _reseed_for_worker(self) -> None:
        # As in the other adapters: each DataLoader worker draws its own pastes, reproducibly per seed.
        self._worker_key = reseed_for_worker(self.copy_paste, self._base_seed, self._worker_key)

    def __call__(self, labels: dict) -> dict:
        img = labels["img"]
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"XPasteYOLOTransform needs 3-channel uint8 images, got {img.shape} {img.dtype}")
        if "semantic_mask" in labels:
            raise ValueError("XPasteYOLOTransform supports instance segmentation labels, not semantic masks")
        inst: Instances = labels["instances"]
        if inst.keypoints is not None:
            raise ValueError("XPasteYOLOTransform cannot paste into pose labels (pasted objects have no keypoints)")
        self._reseed_for_worker()
        h, w = img.shape[:2]
        fmt, normalized = inst._bboxes.format, inst.normalized
        inst.convert_bbox("xyxy")
        inst.denormalize(w, h)
        boxes, segments = inst.bboxes.astype(np.float32), inst.segments
        n = len(boxes)
        if len(segments) != n:
            raise ValueError(f"XPasteYOLOTransform needs one polygon per instance ({n} boxes, {len(segments)} "
                             "segments): train with task=segment on polygon labels")
        cls = labels["cls"]
        masks = np.zeros((n, h, w), bool)
        for i in range(n):  # ultralytics' own rasterisation (polygon2mask), straight into the mask's bytes
            _fill_polygon(masks[i], segments[i])
        # No widening of the boxes (truncation can leave one a pixel short of its mask): CopyPaste measures each
        # mask's extent on the mask itself and gives every non-empty mask its tight box.
        cls_int = cls.reshape(-1).astype(np.int64)
        labels_pool = np.array([self._to_pool.get(int(c), -1 - int(c)) for c in cls_int], np.int64)
        targets = tracked_targets(boxes, masks, labels_pool)
        rgb = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        out = self.copy_paste(Sample(rgb, targets, {"im_file": labels.get("im_file")}))

        t = out.targets
        src = source_rows(t)
        length = segments.shape[1] if segments.ndim == 3 and segments.shape[1] else SEGMENT_POINTS
        new_boxes, new_segs, new_cls = [], [], []
        areas_before = mask_areas(masks)
        areas = mask_areas(t.masks, t.boxes)  # CopyPaste's boxes are the tight boxes of its masks
        for j in range(len(t)):
            s = int(src[j])
            if s >= 0 and areas[j] == areas_before[s]:  # untouched: keep it bit for bit
                new_boxes.append(boxes[s])
                new_segs.append(segments[s])  # made float32 with the others below
                new_cls.append(cls_int[s])
                continue
            poly = mask_to_polygon(t.masks[j], t.boxes[j])  # CopyPaste's box encloses its mask
            if poly is None:
                continue
            new_boxes.append(t.boxes[j])
            new_segs.append(resample_segments([poly], n=length)[0])
            new_cls.append(cls_int[s] if s >= 0 else self.class_map[int(t.labels[j])])
        m = len(new_cls)
        self.calls += 1
        self.pasted += int(np.count_nonzero(src < 0))
        result = Instances(np.array(new_boxes, np.float32).reshape(m, 4),
                           np.array(new_segs, np.float32).reshape(m, length, 2), None, "xyxy", normalized=False)
        result.convert_bbox(fmt)
        if normalized:
            result.normalize(w, h)
        labels["img"] = cv2.cvtColor(out.image, cv2.COLOR_RGB2BGR)
        labels["instances"] = result
        labels["cls"] = np.array(new_cls, dtype=cls.dtype).reshape(m, 1)
        return labels


def _fill_polygon(mask: np.ndarray, segment: np.ndarray) -> None:
    """Rasterise one (K, 2) polygon into the C-contiguous (H, W) bool `mask` as ultralytics' `polygon2mask`
    does (coordinates truncated to int32, `cv2.fillPoly`), writing into the mask's own bytes (checked)."""
    buf = mask.view(np.uint8)
    written = cv2.fillPoly(buf, [segment.astype(np.int32)], 1)
    if written is not None and written is not buf and not np.shares_memory(written, buf):
        mask[...] = written.view(bool)


# ----------------------------------------------------------------------------- the training set's prior
def scale_prior_from_yolo_labels(labels: list[dict], class_map: Mapping[int, int] | None = None
                                 ) -> dict[int, tuple[float, float]]:
    """X-Paste's scale prior of a YOLODataset's `labels` (one dict per training image: `cls` (N, 1) and
    normalised xywh `bboxes` (N, 4), the boxes ultralytics derives from the polygons), keyed by pool id.

    sqrt(w * h) of a normalised box is sqrt(box area / image area), the scale `xpaste stats` measures; mean
    and population std per class by the same rule. `class_map` {pool id: class} re-keys it by pool id
    (None: keyed by class)."""
    def records():
        for i, lb in enumerate(labels):
            boxes = np.asarray(lb.get("bboxes", np.zeros((0, 4))), np.float64).reshape(-1, 4)
            cls = np.asarray(lb.get("cls", np.zeros((0, 1)))).reshape(-1)
            yield i, 1.0, 1.0, [{"category_id": int(c), "bbox": [0.0, 0.0, float(b[2]), float(b[3])]}
                                for c, b in zip(cls, boxes)]

    return remap_prior(scale_prior_from_records(records()), class_map)


# ----------------------------------------------------------------------------- hooking into training
def _insert_position(compose: Compose) -> int:
    """After the geometric step (Compose holding RandomPerspective, or a LetterBox), else before Format."""
    items = compose.transforms
    for i, t in enumerate(items):
        inner = t.transforms if isinstance(t, Compose) else [t]
        if any(isinstance(u, (RandomPerspective, LetterBox)) for u in inner):
            return i + 1
    formats = [i for i, t in enumerate(items) if isinstance(t, Format)]
    return formats[-1] if formats else len(items)


def insert_transform(compose: Compose, transform: XPasteYOLOTransform) -> Compose:
    """Insert `transform` into an ultralytics pipeline once (see `_insert_position`)."""
    if not any(t is transform for t in compose.transforms):
        compose.insert(_insert_position(compose), transform)
    return compose


class _BuildWithPaste:
    """Replaces a dataset's `build_transforms`, so rebuilt pipelines (`close_mosaic`) keep the paste.

    A plain object rather than a closure, so that the dataset still pickles for spawned workers.
    """

    def __init__(self, dataset: Any, transform: XPasteYOLOTransform) -> None:
        self.dataset, self.transform = dataset, transform

    def __call__(self, hyp: Any) -> Compose:
        transforms = type(self.dataset).build_transforms(self.dataset, hyp)
        return insert_transform(transforms, self.transform) if self.dataset.augment else transforms


def install_xpaste(dataset: Any, transform: XPasteYOLOTransform) -> Any:
    """Put `transform` into an ultralytics YOLODataset's training pipeline (no-op for non-augmenting ones)."""
    if not getattr(dataset, "augment", False):
        return dataset
    dataset.build_transforms = _BuildWithPaste(dataset, transform)
    insert_transform(dataset.transforms, transform)
    return dataset


class XPasteSegmentationTrainer(SegmentationTrainer):
    """SegmentationTrainer that pastes into its training set; configure it with `xpaste_trainer`.

    The transform is built lazily in `build_dataset`, once the trainer knows the data.yaml `names`, so a pool
    maps onto the YOLO classes by category name unless `class_map` / `names` were given, and, given a pool
    without `scale_prior=`, with the scale prior of the training labels (`scale_prior_from_yolo_labels`).
    A CopyPaste or transform given ready-made is used as it was built.
    """

    xpaste_source: Any = None  # a pool, a CopyPaste or a ready XPasteYOLOTransform
    xpaste_options: dict = {}

    def build_dataset(self, img_path: str, mode: str = "train", batch: int | None = None):
        dataset = super().build_dataset(img_path, mode, batch)
        if mode == "train" and self.xpaste_source is not None:
            transform = getattr(self, "xpaste_transform", None)
            if transform is None:
                transform = self.xpaste_source
                if not isinstance(transform, XPasteYOLOTransform):
                    transform = open_pool(transform)  # a pool folder: opened once, for the class map and the paste
                    options = dict(self.xpaste_options)
                    if "class_map" not in options:
                        options.setdefault("names", self.data["names"])
                    if not isinstance(transform, CopyPaste) and options.get("scale_prior") is None:
                        # X-Paste's prior, measured on this training set (labels of the data yaml's train)
                        class_map = _class_map(transform, options.get("names"), options.get("class_map"))
                        options["scale_prior"] = scale_prior_from_yolo_labels(dataset.labels, class_map)
                    transform = XPasteYOLOTransform(transform, **options)
                self.xpaste_transform = transform  # one transform per trainer, also across OOM rebuilds
            install_xpaste(dataset, transform)
        return dataset


def xpaste_trainer(pool_or_transform: Any, **kwargs: Any) -> type[XPasteSegmentationTrainer]:
    """A trainer class for `YOLO(...).train(trainer=...)` that pastes from `pool_or_transform`.

    `pool_or_transform`: an InstancePool, a pool folder, a CopyPaste or an XPasteYOLOTransform; kwargs go to
    XPasteYOLOTransform (PasteConfig fields, validated here; `scale_prior`, `seed`, `class_map`, `names`).
    ultralytics instantiates the trainer class itself, so the configuration travels as class attributes of
    a fresh subclass (in-process training; a multi-GPU DDP run re-imports the trainer by name in new
    processes and would lose it). Raises PasteConfigError for a bad option.
    """
    if isinstance(pool_or_transform, XPasteYOLOTransform) and kwargs:
        raise TypeError("options go to XPasteYOLOTransform when a transform is given")
    # Fail now, in one line, not when ultralytics builds the dataset (PasteConfigError for a bad option).
    PasteConfig.from_dict({k: v for k, v in kwargs.items() if k in PasteConfig.field_names()})
    return type("BoundXPasteSegmentationTrainer", (XPasteSegmentationTrainer,),
                {"xpaste_source": pool_or_transform, "xpaste_options": dict(kwargs)})
