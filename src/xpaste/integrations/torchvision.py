"""X-Paste as a torchvision.transforms.v2 transform, for (image, target) detection/segmentation samples.

Put it in a v2 pipeline after the geometric augmentation and before the dtype conversion, e.g.

    v2.Compose([v2.RandomResizedCrop(...), XPasteCopyPaste(copy_paste),
                v2.SanitizeBoundingBoxes(labels_getter=sanitize_labels_getter),
                v2.ToDtype(torch.float32, scale=True)])

which is where the method pastes (after the large-scale-jitter crop of the destination image). It reads
samples as `wrap_dataset_for_transforms_v2(CocoDetection(...), target_keys=("boxes", "labels", "masks"))`
yields them and returns the same structure: the image as it came (tv_tensors.Image, or PIL), `boxes`
(BoundingBoxes in the input's format and dtype), `masks` (Mask, input dtype), `labels` (int64) and a new
`pasted` bool tensor, one per instance. Other target keys pass through unchanged, except the COCO fields
`iscrowd` (pasted instances get 0) and `area` (pasted and occluded instances get their mask area).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.utils.data
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from xpaste.core.sample import Sample
from xpaste.core.targets import Targets
from xpaste.integrations.common import (ISCROWD, PASTED, SOURCE_ROW, as_bool_masks, build_copy_paste, chw_from_hwc,
                                        gather_rows, hwc_from_chw, mask_areas, reseed_for_worker, source_rows)
from xpaste.paste.transform import CopyPaste

_AXIS_ALIGNED = (tv_tensors.BoundingBoxFormat.XYXY, tv_tensors.BoundingBoxFormat.XYWH,
                 tv_tensors.BoundingBoxFormat.CXCYWH)
# Raw per-instance COCO fields that cannot follow new instances (polygons cannot be re-derived cheaply).
_RAW_COCO_KEYS = ("segmentation", "bbox", "category_id")


class XPasteCopyPaste(v2.Transform):
    """Paste pool instances into (image, target) samples with an xpaste `CopyPaste`.

    `XPasteCopyPaste(copy_paste)` or `XPasteCopyPaste(pool, scale_prior=..., **options)`, with `pool` an
    InstancePool or a pool folder, and the options `PasteConfig` fields (validated there: a bad one raises
    `PasteConfigError` here, in one line) plus `config`, `category_weights` and `seed`, as `CopyPaste` takes
    them; options with a ready CopyPaste raise TypeError (`integrations.common.build_copy_paste`).

    `scale_prior` is the training set's per-category prior that X-Paste sizes pasted objects with: the
    training COCO/LVIS json itself (measured on its original annotations: crowd and `pasted` ones left
    out), `xpaste stats` output, or a mapping {category id: (mean, std)}. Without one a `UserWarning` says
    once that sizes fall back to `no_prior_scale` (pass `scale_prior={}` to choose that knowingly).

    Inside a DataLoader
    worker the paste randomness is reseeded the first time the transform runs there, from the worker's
    torch seed (DataLoader base seed + worker id, mixed with the CopyPaste's own `seed` when one was
    given), so workers never repeat each other's pastes and a seeded DataLoader is reproducible.
    """

    def __init__(self, copy_paste: CopyPaste | Any, *, scale_prior: Any = None, **options: Any) -> None:
        super().__init__()
        copy_paste = build_copy_paste(copy_paste, scale_prior=scale_prior, options=options, where=type(self).__name__)
        self.copy_paste = copy_paste
        self._base_seed = copy_paste.seed
        self._worker_key: tuple | None = None

    def extra_repr(self) -> str:
        return repr(self.copy_paste)

    # ------------------------------------------------------------------ randomness per worker
    def _reseed_for_worker(self) -> None:
        self._worker_key = reseed_for_worker(self.copy_paste, self._base_seed, self._worker_key)

    # ------------------------------------------------------------------ forward
    def forward(self, *inputs: Any) -> tuple[Any, dict]:
        sample = inputs if len(inputs) > 1 else inputs[0]
        if not (isinstance(sample, (tuple, list)) and len(sample) == 2 and isinstance(sample[1], dict)):
            raise TypeError("XPasteCopyPaste expects (image, target) with target a dict of boxes/masks/labels, "
                            f"got {type(sample).__name__}")
        image, target = sample
        self._reseed_for_worker()
        rgb = _image_to_numpy(image)
        targets, old_area = _target_to_numpy(target, rgb.shape[:2])
        out = self.copy_paste(Sample(rgb, targets, {"image_id": target.get("image_id")}))
        return _image_from_numpy(out.image, image), _target_from_numpy(out.targets, target, old_area)


def sanitize_labels_getter(inputs: Any) -> tuple[torch.Tensor, ...] | None:
    """`labels_getter` for v2.SanitizeBoundingBoxes that also filters `pasted` (and tensor iscrowd/area).

    The default getter finds only `labels`: the `pasted` flags of removed boxes would stay behind and no
    longer line up. Use `v2.SanitizeBoundingBoxes(labels_getter=sanitize_labels_getter)` after this transform.
    """
    if isinstance(inputs, (tuple, list)) and len(inputs) == 2 and isinstance(inputs[1], dict):
        inputs = inputs[1]
    if not isinstance(inputs, dict) or "labels" not in inputs:
        return None
    return tuple(inputs[k] for k in ("labels", PASTED, ISCROWD, "area") if isinstance(inputs.get(k), torch.Tensor))


# ----------------------------------------------------------------------------- conversions in
def _image_to_numpy(image: Any) -> np.ndarray:
    if isinstance(image, PIL.Image.Image):
        if image.mode != "RGB":
            raise ValueError(f"XPasteCopyPaste needs RGB images, got a PIL image in mode {image.mode!r}")
        return np.asarray(image)
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"XPasteCopyPaste needs a PIL image or a (C, H, W) tensor, got {type(image).__name__}")
    if image.is_floating_point():
        raise TypeError(f"XPasteCopyPaste needs uint8 images, got {image.dtype}: put it before "
                        "v2.ToDtype(torch.float32, scale=True) in the pipeline (and before Normalize)")
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"XPasteCopyPaste needs a (3, H, W) uint8 RGB image, got {tuple(image.shape)} {image.dtype}")
    return hwc_from_chw(image.as_subclass(torch.Tensor).detach().cpu().numpy())


def _per_instance(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.as_subclass(torch.Tensor).detach().cpu().numpy()  # plain tensor first: no tv_tensors dispatch
    return np.asarray(value)


def _target_to_numpy(target: dict, size: tuple[int, int]) -> tuple[Targets, np.ndarray | None]:
    """xpaste Targets (boxes as exclusive XYXY floats, as torchvision's COCO wrapper makes them) and the mask
    areas (only when the target has an `area` to update, else None)."""
    height, width = size
    raw = [k for k in _RAW_COCO_KEYS if k in target]
    if raw:
        raise ValueError(f"target keys {raw} are raw COCO annotations that cannot follow pasted instances; "
                         "leave them out of target_keys (use boxes/masks/labels)")
    present = [k for k in ("boxes", "masks", "labels") if k in target]
    if not present:  # torchvision's COCO wrapper gives only image_id for an image without annotations
        return Targets.empty(height, width, {SOURCE_ROW: np.int64}), np.zeros(0, np.int64)
    if len(present) < 3:
        missing = sorted({"boxes", "masks", "labels"} - set(present))
        raise ValueError(f"XPasteCopyPaste needs boxes, masks and labels; target lacks {missing} "
                         "(wrap_dataset_for_transforms_v2(..., target_keys=('boxes', 'labels', 'masks')))")
    boxes = target["boxes"]
    if isinstance(boxes, tv_tensors.BoundingBoxes):
        if boxes.format not in _AXIS_ALIGNED:
            raise ValueError(f"XPasteCopyPaste supports axis-aligned boxes only, got {boxes.format.name}")
        if tuple(boxes.canvas_size) != (height, width):
            raise ValueError(f"boxes canvas_size {tuple(boxes.canvas_size)} differs from the image ({height}, {width})")
        if boxes.format != tv_tensors.BoundingBoxFormat.XYXY:
            boxes = F.convert_bounding_box_format(boxes, new_format=tv_tensors.BoundingBoxFormat.XYXY)
    masks = _per_instance(target["masks"])
    if masks.ndim != 3 or masks.shape[1:] != (height, width):
        raise ValueError(f"masks must be (N, {height}, {width}) instance masks, got {masks.shape}")
    masks = as_bool_masks(masks)  # a view for 0/1 uint8 Masks: no copy
    n = len(masks)
    extra = {SOURCE_ROW: np.arange(n, dtype=np.int64)}
    if PASTED in target:  # a second paste transform keeps the first one's flags
        extra[PASTED] = _per_instance(target[PASTED]).astype(bool)
    targets = Targets(_per_instance(boxes).astype(np.float32), masks, _per_instance(target["labels"]), extra)
    return targets, (mask_areas(targets.masks) if "area" in target else None)


# ----------------------------------------------------------------------------- conversions out
def _image_from_numpy(rgb: np.ndarray, like: Any) -> Any:
    if isinstance(like, PIL.Image.Image):
        return PIL.Image.fromarray(rgb)  # (H, W, 3) uint8 is read as RGB
    chw = torch.empty((3,) + rgb.shape[:2], dtype=torch.uint8)
    chw_from_hwc(rgb, chw.numpy())
    chw = chw.to(like.device)
    return tv_tensors.wrap(chw, like=like) if isinstance(like, tv_tensors.Image) else tv_tensors.Image(chw)


def _gather(old: Any, src: np.ndarray, fill: np.ndarray) -> Any:
    """`old[src]` for kept input instances, `fill` for the rest; returned as the same kind (list / tensor)."""
    values = _per_instance(old)
    out = gather_rows(values, src, fill.astype(values.dtype if values.size else fill.dtype))
    if isinstance(old, torch.Tensor):
        return torch.from_numpy(out).to(old.device)
    return out.tolist()


def _target_from_numpy(t: Targets, old: dict, old_area: np.ndarray | None) -> dict:
    height, width = t.image_size
    src = source_rows(t)
    new = dict(old)  # image_id and any other key pass through
    old_boxes = old.get("boxes")
    boxes = tv_tensors.BoundingBoxes(torch.from_numpy(t.boxes), format=tv_tensors.BoundingBoxFormat.XYXY,
                                     canvas_size=(height, width))
    if isinstance(old_boxes, tv_tensors.BoundingBoxes):
        if old_boxes.format != tv_tensors.BoundingBoxFormat.XYXY:
            boxes = F.convert_bounding_box_format(boxes, new_format=old_boxes.format)
        boxes = tv_tensors.wrap(boxes.as_subclass(torch.Tensor).to(old_boxes.dtype, copy=False), like=old_boxes)
    new["boxes"] = boxes
    old_masks = old.get("masks")
    mask_dtype = old_masks.dtype if isinstance(old_masks, torch.Tensor) else torch.uint8
    masks = torch.from_numpy(t.masks)  # bool; a uint8 Mask is its 0/1 bytes, viewed without a copy
    masks = masks.view(torch.uint8) if mask_dtype == torch.uint8 else masks.to(mask_dtype)
    new["masks"] = tv_tensors.wrap(masks, like=old_masks) if isinstance(old_masks, tv_tensors.Mask) \
        else tv_tensors.Mask(masks)
    new["labels"] = torch.from_numpy(t.labels.astype(np.int64))
    new[PASTED] = torch.from_numpy(t.extra[PASTED].astype(bool))
    if ISCROWD in old:
        new[ISCROWD] = _gather(old[ISCROWD], src, np.zeros(len(t), np.int64))
    if "area" in old:
        areas = mask_areas(t.masks, t.boxes)  # CopyPaste's boxes are the tight boxes of its masks
        kept = src >= 0
        # Originals keep their annotated area unless pasted objects covered part of them.
        changed = np.ones(len(t), bool)
        changed[kept] = areas[kept] != old_area[src[kept]]
        fill = areas.astype(np.float64)
        area = _gather(old["area"], src, fill)
        if isinstance(area, torch.Tensor):
            area[torch.from_numpy(changed)] = torch.from_numpy(fill[changed]).to(area.dtype)
        else:
            area = [float(fill[i]) if changed[i] else a for i, a in enumerate(area)]
        new["area"] = area
    return new
