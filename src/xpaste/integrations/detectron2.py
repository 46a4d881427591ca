"""X-Paste for detectron2, over its public dataset-dict format (detectron2 is imported only by the mapper).

Training with the mapper (MODEL.MASK_ON with INPUT.MASK_FORMAT "bitmask"):

    from xpaste.integrations.detectron2 import add_xpaste_config, make_xpaste_mapper
    add_xpaste_config(cfg)
    cfg.INPUT.XPASTE.POOL = "path/to/pool"
    cfg.INPUT.MASK_FORMAT = "bitmask"
    loader = build_detection_train_loader(cfg, mapper=make_xpaste_mapper(cfg, is_train=True))

The mapper pastes after the geometric augmentations (the destination image is already resized/cropped/
flipped) and before `annotations_to_instances`, which is where X-Paste pastes. `paste_into_dataset_dict` is
the same step as a plain function for custom mappers.

Category ids: detectron2 dataset dicts hold CONTIGUOUS ids (0..K-1, `thing_dataset_id_to_contiguous_id`),
while a pool holds the dataset's original ids. `category_map` maps pool id -> contiguous id; the mapper
takes it from the training dataset's metadata unless given one.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from xpaste.core.sample import Sample
from xpaste.core.targets import Targets
from xpaste.integrations.workers import reseed_for_worker
from xpaste.ops.masks import masks_to_rles, polygons_to_mask, rle_decode, tight_boxes

XYXY_ABS, XYWH_ABS = 0, 1  # detectron2.structures.BoxMode values (an IntEnum, so plain ints compare equal)
_SRC = "_xpaste_source_index"  # input annotation of each output instance, -1 = pasted
_FORMATS = ("BGR", "RGB")


def paste_into_dataset_dict(dataset_dict: dict, image: np.ndarray, copy_paste, rng: np.random.Generator | None = None,
                            image_format: str = "BGR", category_map: Mapping[int, int] | None = None,
                            segmentation: str = "rle") -> tuple[np.ndarray, dict]:
    """Paste pool instances into one transformed detectron2 sample; returns (image, new dataset_dict).

    `image` is the (H, W, 3) uint8 image after the geometric augmentations, in `image_format` ("BGR", the
    detectron2 default, or "RGB"); `dataset_dict["annotations"]` are in that image's absolute coordinates
    (as `detection_utils.transform_instance_annotations` leaves them): `bbox` with `bbox_mode` 0 (XYXY_ABS)
    or 1 (XYWH_ABS), `segmentation` as polygons, a COCO RLE dict or a 2-D mask array, `category_id`
    (contiguous), optional `iscrowd`.

    Every output annotation has `bbox` (XYXY_ABS, the tight box of its mask, exclusive x2/y2 as detectron2's
    BitMasks boxes), `bbox_mode` 0, `segmentation` and `pasted`. `segmentation="rle"` writes compressed COCO
    RLE dicts {"size", "counts"}; "mask" writes 2-D bool arrays (no encode/decode; the mapper uses it).
    Both are read by `annotations_to_instances` only with mask_format="bitmask": polygon input is turned
    into bitmasks, so cfg.INPUT.MASK_FORMAT must be "bitmask". Original annotations keep their other keys
    (`iscrowd` included; `area`, when present, is updated to the visible mask area); an annotation whose
    mask is empty keeps its bbox. Pasted ones get category_map[pool category id] (the pool id when no map
    is given) and iscrowd 0. Occluded originals are dropped by the core rule (see `CopyPaste`).
    The input dict and image are not modified.
    """
    if image_format not in _FORMATS:
        raise ValueError(f"image_format must be one of {_FORMATS}, got {image_format!r}")
    if segmentation not in ("rle", "mask"):
        raise ValueError(f"segmentation must be 'rle' or 'mask', got {segmentation!r}")
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    height, width = image.shape[:2]
    annos = list(dataset_dict.get("annotations", []))
    if any("keypoints" in a for a in annos):
        raise ValueError("keypoint annotations are not supported: pasted objects would have no keypoints")
    inverse = None if category_map is None else {int(v): int(k) for k, v in category_map.items()}
    targets = annotations_to_targets(annos, height, width, inverse)
    rgb = image[..., ::-1] if image_format == "BGR" else image
    sample = Sample(np.ascontiguousarray(rgb), targets, {"image_id": dataset_dict.get("image_id")})
    out = copy_paste(sample, rng=rng)
    new_annos = targets_to_annotations(out.targets, annos, category_map, segmentation)
    new_image = out.image[..., ::-1] if image_format == "BGR" else out.image
    new_dict = dict(dataset_dict)
    new_dict["annotations"] = new_annos
    return np.ascontiguousarray(new_image), new_dict


# ----------------------------------------------------------------------------- dataset dict <-> Targets
def bbox_to_xyxy(bbox, bbox_mode) -> np.ndarray:
    """A detectron2 absolute bbox (XYXY_ABS or XYWH_ABS) as float32 XYXY."""
    box = np.asarray(bbox, dtype=np.float64).reshape(4)
    mode = int(bbox_mode)
    if mode == XYWH_ABS:
        box = np.array([box[0], box[1], box[0] + box[2], box[1] + box[3]])
    elif mode != XYXY_ABS:
        raise ValueError(f"bbox_mode {bbox_mode!r} is not supported (XYXY_ABS=0 or XYWH_ABS=1 only)")
    return box.astype(np.float32)


def segmentation_to_mask(segm: Any, height: int, width: int) -> np.ndarray:
    """Rasterise a detectron2 `segmentation` (polygons, RLE dict or 2-D mask) into an (H, W) bool mask.

    Polygons are rasterised with pycocotools, as detectron2's `polygons_to_bitmask` does."""
    if isinstance(segm, np.ndarray):
        if segm.shape != (height, width):
            raise ValueError(f"segmentation mask is {segm.shape}, image is {(height, width)}")
        return segm.astype(bool)
    if isinstance(segm, dict):
        size = tuple(int(v) for v in segm["size"])
        if size != (height, width):
            raise ValueError(f"RLE size {size} differs from the image {(height, width)}")
        return rle_decode(segm)
    if isinstance(segm, (list, tuple)):
        polygons = [np.asarray(p, dtype=np.float64).reshape(-1) for p in segm]
        # Fewer than 3 points enclose no pixel (a crop can leave such slivers); pycocotools rejects them.
        polygons = [p for p in polygons if len(p) >= 6]
        if not polygons:
            return np.zeros((height, width), bool)
        return polygons_to_mask(polygons, height, width)
    raise TypeError(f"unsupported segmentation type {type(segm).__name__}")


def annotations_to_targets(annos: list[dict], height: int, width: int,
                           inverse_map: Mapping[int, int] | None = None) -> Targets:
    """xpaste Targets of detectron2 annotations; labels in pool id space (for 'present' sampling).

    Boxes are the tight boxes of the masks (an annotation with an empty mask keeps its own bbox), so the
    boxes of untouched instances come out equal to their masks' boxes too."""
    n = len(annos)
    masks = np.zeros((n, height, width), bool)
    for i, a in enumerate(annos):
        if "segmentation" not in a:
            raise ValueError("annotations need a 'segmentation' to paste over them (MODEL.MASK_ON=True)")
        masks[i] = segmentation_to_mask(a["segmentation"], height, width)
    boxes = tight_boxes(masks)
    empty = ~masks.any(axis=(1, 2))
    for i in np.flatnonzero(empty):
        boxes[i] = bbox_to_xyxy(annos[i]["bbox"], annos[i].get("bbox_mode", XYXY_ABS))
    ids = [int(a["category_id"]) for a in annos]
    # Originals whose contiguous id has no pool category get -1: they only matter for 'present' sampling.
    labels = ids if inverse_map is None else [inverse_map.get(c, -1) for c in ids]
    extra = {
        _SRC: np.arange(n, dtype=np.int64),
        "iscrowd": np.array([bool(a.get("iscrowd", 0)) for a in annos], bool),
        "pasted": np.array([bool(a.get("pasted", False)) for a in annos], bool),  # kept from an earlier paste
    }
    return Targets(boxes, masks, np.array(labels, np.int64), extra)


def targets_to_annotations(t: Targets, annos: list[dict], category_map: Mapping[int, int] | None = None,
                           segmentation: str = "rle") -> list[dict]:
    """detectron2 annotations (XYXY_ABS) of pasted Targets; `annos` are the input annotations."""
    src = t.extra[_SRC]
    pasted = t.extra["pasted"].astype(bool)
    segms = masks_to_rles(t.masks, t.boxes) if segmentation == "rle" else list(t.masks)
    areas = t.masks.sum(axis=(1, 2), dtype=np.int64)
    out = []
    for i in range(len(t)):
        if src[i] >= 0:
            ann = dict(annos[src[i]])
            if "area" in ann:
                ann["area"] = float(areas[i])
        else:
            pool_id = int(t.labels[i])
            if category_map is not None and pool_id not in category_map:
                raise KeyError(f"pool category {pool_id} has no contiguous id in category_map; "
                               "map every pool category or use a pool of the training categories only")
            ann = {"category_id": int(category_map[pool_id]) if category_map is not None else pool_id,
                   "iscrowd": 0, "area": float(areas[i])}
        ann["bbox"] = [float(v) for v in t.boxes[i]]
        ann["bbox_mode"] = XYXY_ABS
        ann["segmentation"] = segms[i]
        ann["pasted"] = bool(pasted[i])
        out.append(ann)
    return out


# ----------------------------------------------------------------------------- config and mapper
def add_xpaste_config(cfg) -> None:
    """Add cfg.INPUT.XPASTE.* (a yacs / detectron2 CfgNode) with the defaults of `CopyPaste`."""
    node = type(cfg)()  # the caller's CfgNode class: yacs, fvcore or detectron2
    node.POOL = ""  # pool folder (xpaste pool build / import)
    node.MAX_PASTE = 20  # pasted objects per image ~ U[0, MAX_PASTE)
    node.SAMPLING = "balanced"  # balanced | uniform | present | weighted
    node.BLEND = "hard"  # hard | alpha | gaussian | poisson
    node.SCALE_PRIOR = ""  # optional `xpaste stats` json: per-category object scale
    node.FLIP_PROB = 0.5
    node.MAX_ROTATION = 0.0
    node.COLOR_JITTER = 0.0
    node.SEED = -1  # < 0: unseeded; mixed with each DataLoader worker's seed
    cfg.INPUT.XPASTE = node


def copy_paste_kwargs_from_cfg(cfg) -> dict[str, Any]:
    """CopyPaste keyword arguments from cfg.INPUT.XPASTE."""
    x = cfg.INPUT.XPASTE
    kwargs: dict[str, Any] = {"max_paste": int(x.MAX_PASTE), "sampling": str(x.SAMPLING), "blend": str(x.BLEND),
                              "flip_prob": float(x.FLIP_PROB), "max_rotation": float(x.MAX_ROTATION),
                              "color_jitter": float(x.COLOR_JITTER),
                              "seed": None if int(x.SEED) < 0 else int(x.SEED)}
    if x.SCALE_PRIOR:
        from xpaste.data.stats import load_stats, scale_prior_from_stats

        kwargs["scale_prior"] = scale_prior_from_stats(load_stats(x.SCALE_PRIOR))
    return kwargs


def make_xpaste_mapper(cfg, is_train: bool = True, pool=None, category_map: Mapping[int, int] | None = None,
                       **copy_paste_kwargs):
    """A `detectron2.data.DatasetMapper` that pastes pool instances while training (plain mapper otherwise).

    `pool`: an InstancePool, a path, or None for cfg.INPUT.XPASTE.POOL. `category_map`: pool id ->
    contiguous id; default: the `thing_dataset_id_to_contiguous_id` of cfg.DATASETS.TRAIN[0] when its
    metadata has one, else identity. Keyword arguments override the CopyPaste options from the config.
    """
    mapper_class = _mapper_class()
    from detectron2.data import DatasetMapper, MetadataCatalog

    from xpaste.paste.transform import CopyPaste
    from xpaste.pool.store import InstancePool

    if not is_train:
        return DatasetMapper(cfg, is_train=False)
    pool = pool if pool is not None else cfg.INPUT.XPASTE.POOL
    if not pool:
        raise ValueError("no pool: set cfg.INPUT.XPASTE.POOL or pass pool=")
    if isinstance(pool, (str, os.PathLike)):
        pool = InstancePool.open(pool)
    if category_map is None and cfg.DATASETS.TRAIN:
        meta = MetadataCatalog.get(cfg.DATASETS.TRAIN[0])
        category_map = getattr(meta, "thing_dataset_id_to_contiguous_id", None)
    copy_paste = CopyPaste(pool, **{**copy_paste_kwargs_from_cfg(cfg), **copy_paste_kwargs})
    return mapper_class(cfg, True, copy_paste, category_map)


_MAPPER_CLASS = None


def _mapper_class():
    """Build the DatasetMapper subclass once, on first use, so this module imports without detectron2."""
    global _MAPPER_CLASS
    if _MAPPER_CLASS is not None:
        return _MAPPER_CLASS
    try:
        from detectron2.data import DatasetMapper
        from detectron2.data import detection_utils as utils
    except ImportError as exc:
        raise ImportError("make_xpaste_mapper needs detectron2 (install it from source, see "
                          "docs/frameworks.md); paste_into_dataset_dict works without it") from exc
    import torch

    if not hasattr(DatasetMapper, "_transform_annotations"):  # the hook below; detectron2 0.6 has it
        raise ImportError("make_xpaste_mapper needs a detectron2 whose DatasetMapper has _transform_annotations")

    class XPasteDatasetMapper(DatasetMapper):
        def __init__(self, cfg, is_train, copy_paste, category_map=None):
            super().__init__(cfg, is_train)  # DatasetMapper's @configurable path: from_config(cfg, is_train)
            if not self.use_instance_mask or self.instance_mask_format != "bitmask":
                raise ValueError("X-Paste needs MODEL.MASK_ON=True and INPUT.MASK_FORMAT='bitmask'")
            if self.image_format not in _FORMATS:
                raise ValueError(f"X-Paste needs INPUT.FORMAT in {_FORMATS}, got {self.image_format!r}")
            self.copy_paste = copy_paste
            self.category_map = None if category_map is None else {int(k): int(v) for k, v in category_map.items()}
            self._base_seed = copy_paste.seed
            self._worker_key = None

        def _transform_annotations(self, dataset_dict, transforms, image_shape):
            # DatasetMapper.__call__ has already put the augmented image in dataset_dict["image"] (CHW).
            self._worker_key = reseed_for_worker(self.copy_paste, self._base_seed, self._worker_key)
            if not self.use_keypoint:  # as DatasetMapper does; pasted objects could not have keypoints
                for anno in dataset_dict["annotations"]:
                    anno.pop("keypoints", None)
            annos = [
                utils.transform_instance_annotations(obj, transforms, image_shape,
                                                     keypoint_hflip_indices=self.keypoint_hflip_indices)
                for obj in dataset_dict.pop("annotations")
                if obj.get("iscrowd", 0) == 0  # as DatasetMapper does
            ]
            image = dataset_dict["image"].numpy().transpose(1, 2, 0)
            image, pasted = paste_into_dataset_dict({"annotations": annos}, image, self.copy_paste,
                                                    image_format=self.image_format,
                                                    category_map=self.category_map, segmentation="mask")
            dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
            annos = pasted["annotations"]
            instances = utils.annotations_to_instances(annos, image_shape, mask_format=self.instance_mask_format)
            instances.pasted = torch.tensor([a["pasted"] for a in annos], dtype=torch.bool)
            if self.recompute_boxes and instances.has("gt_masks"):  # no gt_masks when nothing is left
                instances.gt_boxes = instances.gt_masks.get_bounding_boxes()
            dataset_dict["instances"] = utils.filter_empty_instances(instances)

    # A module-level name, so pickle (spawned DataLoader workers) finds the class through __getattr__ below.
    XPasteDatasetMapper.__qualname__ = "XPasteDatasetMapper"
    _MAPPER_CLASS = XPasteDatasetMapper
    return _MAPPER_CLASS


def __getattr__(name: str):
    if name == "XPasteDatasetMapper":  # `from xpaste.integrations.detectron2 import XPasteDatasetMapper`
        return _mapper_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
