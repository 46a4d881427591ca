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

Options: `cfg.INPUT.XPASTE` holds one key per `PasteConfig` field (upper case, same default; see
`xpaste.paste.config` for each one's meaning and source) plus POOL, SCALE_PRIOR and SEED, and the values are
validated by `PasteConfig` when the mapper is built. Scale prior (method.md, Stage 4): SCALE_PRIOR may name
the training json or `xpaste stats` output; left empty, the mapper measures it from the dataset dicts of
`cfg.DATASETS.TRAIN` (original, non-crowd, non-pasted annotations), so X-Paste's sizes are the default.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from xpaste.core.sample import Sample
from xpaste.core.targets import Targets
from xpaste.integrations.common import (ISCROWD, PASTED, build_copy_paste, chw_from_hwc, copy_mask, from_pool_label,
                                        hwc_from_chw, invert_map, mask_areas, mask_boxes, open_pool, polygon_mask,
                                        remap_prior, reseed_for_worker, scale_prior_from_records, source_rows,
                                        to_pool_labels, tracked_targets)
from xpaste.ops.masks import masks_to_rles, rle_decode
from xpaste.paste.config import PasteConfig

XYXY_ABS, XYWH_ABS = 0, 1  # detectron2.structures.BoxMode values (an IntEnum, so plain ints compare equal)
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
    import cv2

    rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if image_format == "BGR" else np.ascontiguousarray(image)
    out, annos = _paste_rgb(dataset_dict, rgb, copy_paste, rng, category_map)
    new_annos = targets_to_annotations(out.targets, annos, category_map, segmentation)
    new_image = cv2.cvtColor(out.image, cv2.COLOR_RGB2BGR) if image_format == "BGR" else out.image
    new_dict = dict(dataset_dict)
    new_dict["annotations"] = new_annos
    return new_image, new_dict


def _paste_rgb(dataset_dict: dict, rgb: np.ndarray, copy_paste, rng: np.random.Generator | None,
               category_map: Mapping[int, int] | None) -> tuple[Sample, list[dict]]:
    """The pasted Sample of a contiguous (H, W, 3) RGB image and its dataset dict, and the input annotations."""
    height, width = rgb.shape[:2]
    annos = list(dataset_dict.get("annotations", []))
    if any("keypoints" in a for a in annos):
        raise ValueError("keypoint annotations are not supported: pasted objects would have no keypoints")
    targets = annotations_to_targets(annos, height, width, invert_map(category_map))
    return copy_paste(Sample(rgb, targets, {"image_id": dataset_dict.get("image_id")}), rng=rng), annos


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
    return np.asarray(_segmentation_array(segm, height, width), dtype=bool)


def _segmentation_array(segm: Any, height: int, width: int) -> np.ndarray:
    """`segmentation_to_mask` without its final copy: the 2-D array as given or as pycocotools decodes it
    (Fortran order), nonzero = inside."""
    if isinstance(segm, np.ndarray):
        if segm.shape != (height, width):
            raise ValueError(f"segmentation mask is {segm.shape}, image is {(height, width)}")
        return segm
    if isinstance(segm, dict):
        size = tuple(int(v) for v in segm["size"])
        if size != (height, width):
            raise ValueError(f"RLE size {size} differs from the image {(height, width)}")
        return rle_decode(segm)
    if isinstance(segm, (list, tuple)):
        mask = polygon_mask(segm, height, width)  # slivers of < 3 points cover nothing
        return np.zeros((height, width), bool) if mask is None else mask
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
        copy_mask(_segmentation_array(a["segmentation"], height, width), masks[i])
    boxes, nonempty = mask_boxes(masks)
    for i in np.flatnonzero(~nonempty):
        boxes[i] = bbox_to_xyxy(annos[i]["bbox"], annos[i].get("bbox_mode", XYXY_ABS))
    ids = [int(a["category_id"]) for a in annos]
    # Originals whose contiguous id has no pool category get -1: they only matter for 'present' sampling.
    labels = to_pool_labels(ids, invert_map(inverse_map))
    extra = {
        ISCROWD: np.array([bool(a.get(ISCROWD, 0)) for a in annos], bool),
        PASTED: np.array([bool(a.get(PASTED, False)) for a in annos], bool),  # kept from an earlier paste
    }
    return tracked_targets(boxes, masks, labels, extra)


def targets_to_annotations(t: Targets, annos: list[dict], category_map: Mapping[int, int] | None = None,
                           segmentation: str = "rle") -> list[dict]:
    """detectron2 annotations (XYXY_ABS) of pasted Targets; `annos` are the input annotations."""
    segms = masks_to_rles(t.masks, t.boxes) if segmentation == "rle" else list(t.masks)
    return _to_annotations(t, annos, category_map, segms, mask_areas(t.masks, t.boxes))


def _to_annotations(t: Targets, annos: list[dict], category_map: Mapping[int, int] | None,
                    segms: list | None, areas: np.ndarray) -> list[dict]:
    """`targets_to_annotations` given the segmentations (None: no `segmentation` key) and mask areas."""
    src = source_rows(t)
    pasted = t.extra[PASTED].astype(bool)
    out = []
    for i in range(len(t)):
        if src[i] >= 0:
            ann = dict(annos[src[i]])
            if "area" in ann:
                ann["area"] = float(areas[i])
        else:
            ann = {"category_id": from_pool_label(int(t.labels[i]), category_map, "category_map"),
                   ISCROWD: 0, "area": float(areas[i])}
        ann["bbox"] = [float(v) for v in t.boxes[i]]
        ann["bbox_mode"] = XYXY_ABS
        if segms is None:
            ann.pop("segmentation", None)
        else:
            ann["segmentation"] = segms[i]
        ann[PASTED] = bool(pasted[i])
        out.append(ann)
    return out


# ----------------------------------------------------------------------------- config and mapper
def add_xpaste_config(cfg) -> None:
    """Add cfg.INPUT.XPASTE (a yacs / fvcore / detectron2 CfgNode of the caller's class): one upper-case key
    per `PasteConfig` field with its default (`PasteConfig.options()` gives each one's help), plus

    - POOL: the pool folder (`xpaste pool build` / `import-coco` output);
    - SCALE_PRIOR: "" (measure it from cfg.DATASETS.TRAIN), a training COCO/LVIS json or `xpaste stats`
      output, or "none" (no prior: every category uses NO_PRIOR_SCALE; not X-Paste's sizes);
    - SEED: < 0 unseeded; mixed with each DataLoader worker's seed.
    """
    node = type(cfg)()
    node.POOL = ""
    node.SCALE_PRIOR = ""
    node.SEED = -1
    for option in PasteConfig.options():
        node[option["name"].upper()] = option["default"]
    cfg.INPUT.XPASTE = node


def copy_paste_kwargs_from_cfg(cfg) -> dict[str, Any]:
    """`CopyPaste` keyword arguments from cfg.INPUT.XPASTE: `config` (a validated `PasteConfig`; a bad value
    raises `PasteConfigError` naming the option), `seed`, and `scale_prior` (the SCALE_PRIOR file, {} for
    "none", or None when it is to be measured from the training datasets)."""
    x = cfg.INPUT.XPASTE
    options = {}
    for name in PasteConfig.field_names():
        key = name.upper()
        if key in x:  # a config made by an older add_xpaste_config lacks newer keys: defaults apply
            value = x[key]
            options[name] = list(value) if isinstance(value, tuple) else value
    prior = str(x.SCALE_PRIOR or "")
    return {"config": PasteConfig.from_dict(options), "seed": None if int(x.SEED) < 0 else int(x.SEED),
            "scale_prior": {} if prior.lower() == "none" else (prior or None)}


def scale_prior_from_dataset_dicts(dataset_dicts: list[dict], category_map: Mapping[int, int] | None = None
                                   ) -> dict[int, tuple[float, float]]:
    """The X-Paste scale prior of detectron2 dataset dicts (before any augmentation), keyed by pool id.

    sqrt(box area / image area) per original annotation (crowd and `pasted` ones left out, boxes in
    XYXY_ABS or XYWH_ABS), mean and population std per contiguous id, by the rule of `xpaste stats`.
    `category_map` (pool id -> contiguous id) re-keys it by pool id; None: pool ids are the contiguous ids.
    """
    def records():
        for i, d in enumerate(dataset_dicts):
            annos = []
            for a in d.get("annotations", []):
                x0, y0, x1, y1 = bbox_to_xyxy(a["bbox"], a.get("bbox_mode", XYXY_ABS))
                annos.append({"category_id": a["category_id"], "bbox": [x0, y0, x1 - x0, y1 - y0],
                              ISCROWD: a.get(ISCROWD, 0), PASTED: a.get(PASTED, False)})
            yield i, d["height"], d["width"], annos

    return remap_prior(scale_prior_from_records(records()), category_map)


def _training_dicts(cfg) -> list[dict]:
    """The dataset dicts of cfg.DATASETS.TRAIN. Loading them also fills the datasets' metadata
    (`load_coco_json` sets thing_dataset_id_to_contiguous_id only when it runs)."""
    from detectron2.data import DatasetCatalog

    return [d for name in cfg.DATASETS.TRAIN for d in DatasetCatalog.get(name)]


def make_xpaste_mapper(cfg, is_train: bool = True, pool=None, category_map: Mapping[int, int] | None = None,
                       **copy_paste_kwargs):
    """A `detectron2.data.DatasetMapper` that pastes pool instances while training (plain mapper otherwise).

    `pool`: an InstancePool, a path, or None for cfg.INPUT.XPASTE.POOL. `category_map`: pool id ->
    contiguous id; default: the `thing_dataset_id_to_contiguous_id` of cfg.DATASETS.TRAIN[0] when its
    metadata has one, else identity. Keyword arguments (PasteConfig fields, `scale_prior`, `seed`) override
    the config. The scale prior is measured from cfg.DATASETS.TRAIN unless SCALE_PRIOR or `scale_prior=`
    gives one (see the module docstring).

    Raises: PasteConfigError for a bad option, ValueError without a pool, XPasteError for a pool folder that
    does not open, ImportError without detectron2.
    """
    mapper_class = _mapper_class()
    from detectron2.data import DatasetMapper, MetadataCatalog

    if not is_train:
        return DatasetMapper(cfg, is_train=False)
    pool = pool if pool is not None else cfg.INPUT.XPASTE.POOL
    if not pool:
        raise ValueError("no pool: set cfg.INPUT.XPASTE.POOL or pass pool=")
    pool = open_pool(pool)  # before the training set is loaded: a wrong folder fails at once
    options = {**copy_paste_kwargs_from_cfg(cfg), **copy_paste_kwargs}
    scale_prior = options.pop("scale_prior", None)
    dicts = _training_dicts(cfg) if cfg.DATASETS.TRAIN and (category_map is None or scale_prior is None) else None
    if category_map is None and cfg.DATASETS.TRAIN:
        meta = MetadataCatalog.get(cfg.DATASETS.TRAIN[0])
        category_map = getattr(meta, "thing_dataset_id_to_contiguous_id", None)
    if scale_prior is None and dicts is not None:  # X-Paste's prior of the training set (method.md, Stage 4)
        scale_prior = scale_prior_from_dataset_dicts(dicts, category_map)
    copy_paste = build_copy_paste(pool, scale_prior=scale_prior, options=options,
                                  where="make_xpaste_mapper without cfg.DATASETS.TRAIN or INPUT.XPASTE.SCALE_PRIOR")
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
        from detectron2.structures import BitMasks
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
                if obj.get(ISCROWD, 0) == 0  # as DatasetMapper does
            ]
            chw = dataset_dict["image"]
            if chw.dtype != torch.uint8 or chw.ndim != 3 or chw.shape[0] != 3:
                raise ValueError(f"image must be (H, W, 3) uint8, got {tuple(chw.shape[1:]) + tuple(chw.shape[:1])} "
                                 f"{chw.dtype}")
            reverse = self.image_format == "BGR"  # the core pastes RGB
            out, annos = _paste_rgb({"annotations": annos}, hwc_from_chw(chw.numpy(), reverse), self.copy_paste,
                                    None, self.category_map)
            image = torch.empty(chw.shape, dtype=torch.uint8)
            chw_from_hwc(out.image, image.numpy(), reverse)
            dataset_dict["image"] = image
            t = out.targets
            areas = mask_areas(t.masks, t.boxes)  # CopyPaste's boxes are the tight boxes of its masks
            annos = _to_annotations(t, annos, self.category_map, None, areas)
            # detectron2 builds boxes and classes; the masks go over as the one (N, H, W) bool array they
            # already are (what annotations_to_instances would stack from per-instance 2-D masks).
            instances = utils.annotations_to_instances(annos, image_shape, mask_format=self.instance_mask_format)
            if len(annos):
                instances.gt_masks = BitMasks(torch.from_numpy(t.masks))
            instances.pasted = torch.tensor([a[PASTED] for a in annos], dtype=torch.bool)
            if self.recompute_boxes and instances.has("gt_masks"):  # no gt_masks when nothing is left
                instances.gt_boxes = instances.gt_masks.get_bounding_boxes()
            # utils.filter_empty_instances' rule (boxes wider and taller than 1e-5, masks not empty), with the
            # mask test read off the areas; Instances are indexed (copied) only when one is dropped.
            keep = instances.gt_boxes.nonempty(threshold=1e-5) & torch.from_numpy(areas > 0)
            dataset_dict["instances"] = instances if bool(keep.all()) else instances[keep]

    # A module-level name, so pickle (spawned DataLoader workers) finds the class through __getattr__ below.
    XPasteDatasetMapper.__qualname__ = "XPasteDatasetMapper"
    _MAPPER_CLASS = XPasteDatasetMapper
    return _MAPPER_CLASS


def __getattr__(name: str):
    if name == "XPasteDatasetMapper":  # `from xpaste.integrations.detectron2 import XPasteDatasetMapper`
        return _mapper_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
