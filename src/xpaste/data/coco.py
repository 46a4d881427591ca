"""COCO / LVIS datasets: load and validate the json, decode masks and images, write annotations back.

The raw json dicts are kept as they are (every field preserved, LVIS' `frequency`, `neg_category_ids`, ...),
so a dataset that is loaded and written again loses nothing. Validation happens once, at load time, with
one clear error naming the file and the offending id; mask decoding is deferred to `load_sample` because an
LVIS-sized file has 1.27M annotations and decoding them all up front would take minutes.

No annotation disappears silently: `load_sample` lists every annotation it does not convert with a reason
code (SKIP_REASONS; `count_skipped_by_reason` tallies them for summaries), and keeps the valid parts of a
multi-part polygon. Images are read by `xpaste.imageio` (as displayed: EXIF orientation applied).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from xpaste.core.sample import Sample
from xpaste.core.targets import Targets
from xpaste.errors import XPasteError
from xpaste.imageio import exif_orientation
from xpaste.imageio import read_rgb as read_image_rgb  # the package's one image reader (EXIF applied)
from xpaste.io import read_json, resolve_inside, write_json_atomic
from xpaste.ops.masks import (
    DEGENERATE_POLYGON,
    INVALID_SEGMENTATION,
    SIZE_MISMATCH,
    SegmentationError,
    rle_decode,
    rle_encode,
    segmentation_to_rle,
    tight_box,
)

_LISTS = ("images", "annotations", "categories")
EXTRA_DTYPES = {"iscrowd": np.dtype(bool), "ann_id": np.dtype(np.int64)}


@dataclass(eq=False)
class CocoDataset:
    """A COCO or LVIS dataset as its raw json parts. Lookups are built lazily, once.

    The lookup caches assume the lists are not mutated after first use; build a new `CocoDataset` instead.
    """

    path: Path | None
    header: dict[str, Any] = field(default_factory=dict)
    images: list[dict] = field(default_factory=list)
    categories: list[dict] = field(default_factory=list)
    annotations: list[dict] = field(default_factory=list)

    @classmethod
    def from_json(cls, obj: Any, path: str | os.PathLike | None = None) -> CocoDataset:
        """Validate a parsed json object and wrap it (raises XPasteError naming `path`)."""
        _validate(obj, path)
        header = {k: v for k, v in obj.items() if k not in _LISTS}
        return cls(None if path is None else Path(path), header, obj["images"], obj["categories"],
                   obj["annotations"])

    @cached_property
    def image_by_id(self) -> dict[int, dict]:
        return {img["id"]: img for img in self.images}

    @cached_property
    def category_by_id(self) -> dict[int, dict]:
        return {cat["id"]: cat for cat in self.categories}

    @cached_property
    def _anns_by_image(self) -> dict[int, list[dict]]:
        index: dict[int, list[dict]] = {}
        for ann in self.annotations:
            index.setdefault(ann["image_id"], []).append(ann)
        return index

    def annotations_for(self, image_id: int) -> list[dict]:
        """The annotations of one image, in file order (an empty list when it has none)."""
        return list(self._anns_by_image.get(image_id, ()))

    @property
    def is_lvis(self) -> bool:
        return any("frequency" in c for c in self.categories) or any(
            "neg_category_ids" in img for img in self.images
        )

    def __repr__(self) -> str:
        kind = "LVIS" if self.is_lvis else "COCO"
        return (f"CocoDataset({kind}, path={self.path}, images={len(self.images)}, "
                f"annotations={len(self.annotations)}, categories={len(self.categories)})")


# ----------------------------------------------------------------------------------------------- validation
# Ids must fit a signed 64-bit integer: pycocotools, lvis, numpy (int64 `ann_id` columns), Parquet and
# torch all store them so; a larger json integer would overflow or be silently cast to float there.
ID_MIN, ID_MAX = -(2**63), 2**63 - 1


def _is_id(v: Any) -> bool:
    return type(v) is int and ID_MIN <= v <= ID_MAX


read_json_finite = read_json  # the package's one json reader refuses NaN / Infinity (xpaste.io.read_json)


def _check_records(records: list, kind: str, required: dict[str, str], path) -> None:
    """Per-record checks for the small lists (images, categories): clear messages, cheap enough."""
    seen: set[int] = set()
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise XPasteError(f"{kind} #{i} is a {type(rec).__name__}, expected an object", path)
        rid = rec.get("id", "?")
        for key, typ in required.items():
            if key not in rec:
                raise XPasteError(f"{kind} #{i} (id={rid}) has no {key!r}", path)
            value = rec[key]
            ok = _is_id(value) if typ in ("int", "posint") else isinstance(value, str)
            if ok and typ == "posint":
                ok = value > 0
            if not ok:
                want = {"int": "an integer in the signed 64-bit range", "posint": "a positive integer",
                        "str": "a string"}[typ]
                raise XPasteError(f"{kind} #{i} (id={rid}) has {key!r}={value!r}, expected {want}", path)
        if rec["id"] in seen:
            raise XPasteError(f"duplicate {kind} id {rec['id']}", path)
        seen.add(rec["id"])


def _check_annotations(anns: list, image_ids: set, category_ids: set, path) -> None:
    """Annotation checks for 1M+ records: column-wise fast path, slow scan only to name the culprit."""
    keys = ("id", "image_id", "category_id")
    try:
        columns = [[a[k] for a in anns] for k in keys]
        fast_ok = all(all(type(v) is int for v in col) for col in columns)
        fast_ok = fast_ok and all(ID_MIN <= min(col) and max(col) <= ID_MAX for col in columns if col)
    except (KeyError, TypeError):
        fast_ok = False
    if not fast_ok:
        for i, ann in enumerate(anns):
            if not isinstance(ann, dict):
                raise XPasteError(f"annotation #{i} is a {type(ann).__name__}, expected an object", path)
            for k in keys:
                if k not in ann:
                    raise XPasteError(f"annotation #{i} (id={ann.get('id', '?')}) has no {k!r}", path)
                if not _is_id(ann[k]):
                    raise XPasteError(
                        f"annotation #{i} (id={ann.get('id', '?')}) has {k!r}={ann[k]!r}, expected an integer"
                        " in the signed 64-bit range", path)
        raise AssertionError("unreachable: fast path failed but no bad annotation found")
    ann_ids, img_col, cat_col = columns
    if len(set(ann_ids)) != len(ann_ids):
        seen: set[int] = set()
        for aid in ann_ids:
            if aid in seen:
                raise XPasteError(f"duplicate annotation id {aid}", path)
            seen.add(aid)
    for col, known, what in ((img_col, image_ids, "image"), (cat_col, category_ids, "category")):
        unknown = set(col) - known
        if unknown:
            idx = next(i for i, v in enumerate(col) if v in unknown)
            raise XPasteError(
                f"annotation id {ann_ids[idx]} refers to unknown {what} id {col[idx]}"
                f" ({len(unknown)} unknown {what} id(s) in all)", path)


def _validate(obj: Any, path) -> None:
    if not isinstance(obj, dict):
        raise XPasteError(f"top level is a {type(obj).__name__}, expected an object with {list(_LISTS)}", path)
    for key in _LISTS:
        if key not in obj:
            raise XPasteError(f"missing top-level key {key!r}", path, "is this a COCO/LVIS annotation file?")
        if not isinstance(obj[key], list):
            raise XPasteError(f"top-level {key!r} is a {type(obj[key]).__name__}, expected a list", path)
    for img in obj["images"]:
        # LVIS v1 jsons have no file_name, only coco_url (".../train2017/000000391895.jpg"): use
        # "train2017/000000391895.jpg", relative to the COCO images root, as detectron2's LVIS loader does.
        if isinstance(img, dict) and "file_name" not in img and isinstance(img.get("coco_url"), str):
            img["file_name"] = "/".join(img["coco_url"].rstrip("/").split("/")[-2:])
    _check_records(obj["images"], "image",
                   {"id": "int", "file_name": "str", "height": "posint", "width": "posint"}, path)
    _check_records(obj["categories"], "category", {"id": "int", "name": "str"}, path)
    _check_annotations(obj["annotations"], {img["id"] for img in obj["images"]},
                       {c["id"] for c in obj["categories"]}, path)


def load_coco(path: str | os.PathLike) -> CocoDataset:
    """Read and validate a COCO / LVIS instances json.

    Refused with one XPasteError line naming the file: malformed json, NaN/Infinity tokens anywhere, missing
    lists, ids that are not integers in the signed 64-bit range, duplicate ids, annotations referring to
    unknown image or category ids, images without file_name/height/width.
    """
    return CocoDataset.from_json(read_json_finite(path), path)


def dataset_to_json(dataset: CocoDataset) -> dict:
    """The json object of a dataset: header keys first (info, licenses, ...), then the three lists."""
    return {**dataset.header, "images": dataset.images, "annotations": dataset.annotations,
            "categories": dataset.categories}


def save_coco(dataset: CocoDataset, path: str | os.PathLike) -> None:
    """Write a dataset atomically (compact json: LVIS-sized files are large)."""
    write_json_atomic(path, dataset_to_json(dataset))


# -------------------------------------------------------------------------------------------------- masks
# Why an annotation was not converted to an instance: the fixed vocabulary of `skipped_annotations` entries,
# which are (annotation id, "<reason>: <detail>") pairs.
# DEGENERATE_POLYGON, INVALID_SEGMENTATION and SIZE_MISMATCH are the decoder's (`xpaste.ops.masks`).
NO_MASK = "no_mask"  # segmentation absent, null, [] or {} (a detection-style annotation: box only)
#: a box-only annotation for which `xpaste masks-from-boxes` found no mask (marked `mask_source: "empty"`)
NO_MASK_FOUND = "no_mask_found"
OUT_OF_IMAGE = "out_of_image"  # the polygon lies entirely outside the image
EMPTY_MASK = "empty_mask"  # decodes to no pixel (zero-area polygon, all-zero RLE)
SKIP_REASONS = (NO_MASK, NO_MASK_FOUND, DEGENERATE_POLYGON, INVALID_SEGMENTATION, SIZE_MISMATCH, OUT_OF_IMAGE,
                EMPTY_MASK)
#: `mask_source` of an annotation `xpaste masks-from-boxes` made no mask for (its box kept, its reason in
#: `mask_empty`); a mask it made has the segmenter's name there (e.g. "sam2:folder").
MASK_SOURCE_EMPTY = "empty"


#: A segmentation that cannot become a mask; `reason` is one of SKIP_REASONS, str() names the annotation. The
#: decoder's own error class (`xpaste.ops.masks.SegmentationError`), under the name this module always used.
AnnotationError = SegmentationError


def skip_reason(why: str) -> str:
    """The reason code of a `skipped_annotations` entry's text ("<reason>: <detail>")."""
    code = str(why).split(":", 1)[0].strip()
    return code if code in SKIP_REASONS else INVALID_SEGMENTATION


def count_skipped_by_reason(skipped) -> dict[str, int]:
    """{reason: count} of an iterable of (annotation, why) pairs as `load_sample` lists them.

    Keys are SKIP_REASONS codes in that fixed order; only reasons that occur are present.
    """
    counts = dict.fromkeys(SKIP_REASONS, 0)
    for _, why in skipped:
        counts[skip_reason(why)] += 1
    return {k: v for k, v in counts.items() if v}


def has_mask(ann: dict) -> bool:
    """False for a box-only annotation: `segmentation` absent, null, [] or {}."""
    seg = ann.get("segmentation")
    return not (seg is None or (isinstance(seg, (list, dict)) and not seg))


def reported_empty(ann: dict) -> bool:
    """A box-only annotation `xpaste masks-from-boxes` looked at and found no mask for (`mask_source: "empty"`)."""
    return not has_mask(ann) and ann.get("mask_source") == MASK_SOURCE_EMPTY


def check_masks_present(dataset: CocoDataset) -> None:
    """Refuse, in one XPasteError line, a dataset with annotations that have a box but no mask.

    Copy-paste occludes and re-boxes instance masks; a box-only annotation cannot be occluded correctly, and
    inventing a mask (e.g. the filled box) would silently change the labels. Raises XPasteError naming the
    file, the count and the first such annotation id, with the hint to make the masks with `xpaste
    masks-from-boxes`. Annotations that command reported empty (`reported_empty`) are not refused: they are
    left out by `load_sample` with reason NO_MASK_FOUND, counted like every annotation it cannot convert.
    """
    maskless = [a for a in dataset.annotations if not has_mask(a) and not reported_empty(a)]
    if maskless:
        first = maskless[0]
        raise XPasteError(
            f"{len(maskless)} of {len(dataset.annotations)} annotations have no mask (segmentation absent or "
            f"empty; a box only), e.g. annotation id {first.get('id')} on image id {first.get('image_id')}",
            dataset.path, "copy-paste needs instance masks: make them from the boxes with `xpaste "
            "masks-from-boxes --dataset D.json --images DIR --segmenter sam2 --out D_masks.json` (a box-prompted "
            "SAM) and use D_masks.json, or add polygons or RLE, or remove these annotations")


def _decode(ann: dict, height: int, width: int) -> tuple[np.ndarray, list[int]]:
    ann_id = ann.get("id", "?")
    if reported_empty(ann):
        raise AnnotationError(NO_MASK_FOUND, f"annotation {ann_id}: masks-from-boxes found no mask for its box "
                                             f"({ann.get('mask_empty') or 'no reason recorded'})")
    if not has_mask(ann):
        raise AnnotationError(NO_MASK, f"annotation {ann_id}: no segmentation (a box only)")
    rle, dropped = segmentation_to_rle(ann["segmentation"], height, width, f"annotation {ann_id}")
    return rle_decode(rle), dropped


def decode_annotation_mask(ann: dict, height: int, width: int) -> np.ndarray:
    """The (height, width) bool mask of a COCO annotation (polygons, uncompressed or compressed RLE).

    Decoded by the package's one COCO decoder, `xpaste.ops.masks.segmentation_to_rle`: polygon parts with
    fewer than 3 points or an odd number of coordinates are left out (the rule of `xpaste.ops.polygons`,
    detectron2's); the mask may be empty (the caller decides). Raises AnnotationError (a ValueError
    with a `reason` from SKIP_REASONS) naming the annotation id when there is no segmentation or no usable
    one; a bbox is never used as a substitute because that would silently turn a missing mask into a wrong one.
    """
    return _decode(ann, height, width)[0]


def _empty_reason(ann: dict, height: int, width: int) -> str:
    """OUT_OF_IMAGE when every polygon point lies outside the image on one side, else EMPTY_MASK."""
    seg = ann.get("segmentation")
    if isinstance(seg, list):
        xs = [v for p in seg for v in p[0::2]]
        ys = [v for p in seg for v in p[1::2]]
        if xs and (max(xs) <= 0 or min(xs) >= width or max(ys) <= 0 or min(ys) >= height):
            return OUT_OF_IMAGE
    return EMPTY_MASK


def annotation_from_mask(mask: np.ndarray, category_id: int, ann_id: int, image_id: int,
                         iscrowd: bool = False, **fields: Any) -> dict:
    """A COCO annotation for a bool mask: compressed RLE, area = pixel count, bbox = tight box (x, y, w, h)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    mask = mask.astype(bool, copy=False)
    box = tight_box(mask)
    if box is None:
        raise ValueError(f"annotation {ann_id}: mask is empty")
    x1, y1, x2, y2 = box
    ann = {
        "id": int(ann_id),
        "image_id": int(image_id),
        "category_id": int(category_id),
        "segmentation": rle_encode(mask),
        "area": int(np.count_nonzero(mask)),
        "bbox": [x1, y1, x2 - x1, y2 - y1],
        "iscrowd": int(bool(iscrowd)),
    }
    clash = set(fields) & set(ann)
    if clash:
        # These keys carry the invariants (box == tight box, area == pixel count): never overwrite them.
        raise TypeError(f"extra fields may not replace {sorted(clash)}")
    ann.update(fields)
    return ann


# ------------------------------------------------------------------------------------------------ samples
def _size_hint(path: Path, image: np.ndarray, h: int, w: int) -> str:
    orientation = exif_orientation(path)
    if orientation in (5, 6, 7, 8) and image.shape[:2] == (w, h):
        return (f"the file's EXIF orientation {orientation} turns it by 90 degrees on display; xpaste, like "
                "detectron2, ultralytics and OpenCV, reads the displayed image: the json's width/height (and "
                "annotations) must describe the image as displayed")
    return "the json's width/height must match the image as displayed (EXIF orientation applied)"


def load_sample(dataset: CocoDataset, image_id: int, images_dir: str | os.PathLike) -> Sample:
    """Read one image (as displayed: EXIF orientation applied) and its instances.

    Returns a Sample: image (H, W, 3) uint8 RGB, targets (boxes XYXY float32 tight to the masks, masks
    (N, H, W) bool, labels int64 category ids, extra iscrowd bool / ann_id int64), meta with
    `skipped_annotations`: [(annotation id, "<reason>: <detail>")] for every annotation of the image not
    converted (reasons: SKIP_REASONS; count them with `count_skipped_by_reason`), and
    `trimmed_annotations`: [(annotation id, detail)] for annotations kept without some degenerate polygon parts.
    Raises XPasteError naming the file when the image is missing, unreadable, or not the json's size.
    """
    info = dataset.image_by_id.get(image_id)
    if info is None:
        raise XPasteError(f"image id {image_id!r} is not in the dataset", dataset.path)
    file_name = info["file_name"]
    path = resolve_inside(images_dir, file_name, "file_name")
    image = read_image_rgb(path)
    h, w = int(info["height"]), int(info["width"])
    if image.shape[:2] != (h, w):
        raise XPasteError(f"image is {image.shape[1]}x{image.shape[0]} (WxH, as displayed) but the dataset says "
                          f"{w}x{h}", path, _size_hint(path, image, h, w))

    masks, labels, crowd, ann_ids, skipped, trimmed = [], [], [], [], [], []
    for ann in dataset.annotations_for(image_id):
        try:
            mask, dropped = _decode(ann, h, w)
        except AnnotationError as e:
            skipped.append((ann["id"], f"{e.reason}: {e}"))
            continue
        if not mask.any():
            reason = _empty_reason(ann, h, w)
            where = "lies outside the image" if reason == OUT_OF_IMAGE else "covers no pixel"
            skipped.append((ann["id"], f"{reason}: annotation {ann['id']}: the mask {where}"))
            continue
        if dropped:
            trimmed.append((ann["id"], f"{DEGENERATE_POLYGON}: polygon part(s) {dropped} with fewer than 3 points "
                                       "or an odd number of coordinates left out"))
        masks.append(mask)
        labels.append(ann["category_id"])
        crowd.append(bool(ann.get("iscrowd", 0)))
        ann_ids.append(ann["id"])

    if masks:
        stack = np.stack(masks)
        boxes = np.array([tight_box(m) for m in stack], dtype=np.float32)
        targets = Targets(boxes, stack, np.array(labels, np.int64),
                          {"iscrowd": np.array(crowd, bool), "ann_id": np.array(ann_ids, np.int64)})
    else:
        targets = Targets.empty(h, w, dict(EXTRA_DTYPES))
    meta = {"image_id": image_id, "file_name": file_name, "height": h, "width": w, "path": str(path),
            "skipped_annotations": skipped, "trimmed_annotations": trimmed}
    return Sample(image, targets, meta)
