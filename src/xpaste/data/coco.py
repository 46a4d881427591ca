"""COCO / LVIS datasets: load and validate the json, decode masks and images, write annotations back.

The raw json dicts are kept as they are (every field preserved, LVIS' `frequency`, `neg_category_ids`, ...),
so a dataset that is loaded and written again loses nothing. Validation happens once, at load time, with
one clear error naming the file and the offending id; mask decoding is deferred to `load_sample` because an
LVIS-sized file has 1.27M annotations and decoding them all up front would take minutes.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from xpaste.core.sample import Sample
from xpaste.core.targets import Targets
from xpaste.errors import XPasteError
from xpaste.io import read_json, resolve_inside, write_json_atomic
from xpaste.ops.masks import polygons_to_mask, rle_decode, rle_encode, tight_box

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
def _is_int(v: Any) -> bool:
    # json gives bool for true/false and float for 1.0; neither is a valid id.
    return type(v) is int


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
            ok = _is_int(value) if typ in ("int", "posint") else isinstance(value, str)
            if ok and typ == "posint":
                ok = value > 0
            if not ok:
                want = {"int": "an integer", "posint": "a positive integer", "str": "a string"}[typ]
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
    except (KeyError, TypeError):
        fast_ok = False
    if not fast_ok:
        for i, ann in enumerate(anns):
            if not isinstance(ann, dict):
                raise XPasteError(f"annotation #{i} is a {type(ann).__name__}, expected an object", path)
            for k in keys:
                if k not in ann:
                    raise XPasteError(f"annotation #{i} (id={ann.get('id', '?')}) has no {k!r}", path)
                if not _is_int(ann[k]):
                    raise XPasteError(
                        f"annotation #{i} (id={ann.get('id', '?')}) has {k!r}={ann[k]!r}, expected an integer",
                        path)
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
    """Read and validate a COCO / LVIS instances json."""
    return CocoDataset.from_json(read_json(path), path)


def dataset_to_json(dataset: CocoDataset) -> dict:
    """The json object of a dataset: header keys first (info, licenses, ...), then the three lists."""
    return {**dataset.header, "images": dataset.images, "annotations": dataset.annotations,
            "categories": dataset.categories}


def save_coco(dataset: CocoDataset, path: str | os.PathLike) -> None:
    """Write a dataset atomically (compact json: LVIS-sized files are large)."""
    write_json_atomic(path, dataset_to_json(dataset))


# -------------------------------------------------------------------------------------------------- masks
def _compressed_counts(counts: str, ann_id) -> list[int]:
    """Parse pycocotools' compressed RLE string (the LEB128-like code of maskApi.c's rleFrString).

    pycocotools does not check that the counts cover the image exactly: a short string decodes into
    uninitialised memory. Parsing it here lets us reject such masks instead of returning garbage.
    """
    out: list[int] = []
    p, n = 0, len(counts)
    while p < n:
        x = k = 0
        more = True
        while more:
            if p >= n:
                raise ValueError(f"annotation {ann_id}: truncated compressed RLE string")
            c = ord(counts[p]) - 48
            if not 0 <= c < 64:
                raise ValueError(f"annotation {ann_id}: invalid character {counts[p]!r} in compressed RLE")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x -= 1 << (5 * k)  # sign extension
        if len(out) > 2:
            x += out[-2]  # counts after the first two are stored as deltas to the run two before
        out.append(x)
    return out


def _decode_rle(seg: dict, height: int, width: int, ann_id) -> np.ndarray:
    size, counts = seg.get("size"), seg.get("counts")
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(_is_int(v) for v in size)):
        raise ValueError(f"annotation {ann_id}: RLE 'size' must be [height, width], got {size!r}")
    if tuple(size) != (height, width):
        raise ValueError(
            f"annotation {ann_id}: RLE size {list(size)} differs from the image size [{height}, {width}]")
    if isinstance(counts, list):
        if not all(_is_int(v) and v >= 0 for v in counts):
            raise ValueError(f"annotation {ann_id}: uncompressed RLE counts must be non-negative integers")
        runs = counts
    elif isinstance(counts, (str, bytes)):
        text = counts.decode("ascii", errors="replace") if isinstance(counts, bytes) else counts
        runs = _compressed_counts(text, ann_id)
        if any(v < 0 for v in runs):
            raise ValueError(f"annotation {ann_id}: compressed RLE has negative run lengths")
    else:
        raise ValueError(f"annotation {ann_id}: RLE counts is a {type(counts).__name__}, expected list or str")
    if sum(runs) != height * width:
        raise ValueError(f"annotation {ann_id}: RLE runs cover {sum(runs)} pixels, expected "
                         f"{height}x{width}={height * width}")
    return rle_decode({"size": [height, width], "counts": counts})


def _decode_polygons(seg: list, height: int, width: int, ann_id) -> np.ndarray:
    # pycocotools reads a 4-number "polygon" as a box and allocates memory proportional to the polygon's
    # perimeter, so malformed or absurdly distant coordinates are rejected before rasterising.
    limit = 8 * max(height, width) + 64
    for j, poly in enumerate(seg):
        if not isinstance(poly, (list, tuple)):
            raise ValueError(f"annotation {ann_id}: polygon {j} is a {type(poly).__name__}, expected a list")
        if len(poly) < 6 or len(poly) % 2:
            raise ValueError(f"annotation {ann_id}: polygon {j} has {len(poly)} coordinates "
                             f"(needs an even number, at least 6 = 3 points)")
        for v in poly:
            if type(v) not in (int, float) or not math.isfinite(v) or abs(v) > limit:
                raise ValueError(f"annotation {ann_id}: polygon {j} has an invalid coordinate {v!r}")
    return polygons_to_mask(seg, height, width)


def decode_annotation_mask(ann: dict, height: int, width: int) -> np.ndarray:
    """The (height, width) bool mask of a COCO annotation (polygons, uncompressed or compressed RLE).

    Raises ValueError naming the annotation id when the segmentation is missing or malformed; a bbox is
    never used as a substitute because that would silently turn a broken mask into a wrong one.
    """
    ann_id = ann.get("id", "?")
    seg = ann.get("segmentation")
    if seg is None or (isinstance(seg, (list, dict)) and not seg):
        raise ValueError(f"annotation {ann_id}: no segmentation")
    if isinstance(seg, list):
        mask = _decode_polygons(seg, height, width, ann_id)
    elif isinstance(seg, dict):
        mask = _decode_rle(seg, height, width, ann_id)
    else:
        raise ValueError(f"annotation {ann_id}: segmentation is a {type(seg).__name__}, expected list or dict")
    return np.ascontiguousarray(mask, dtype=bool)


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


# ------------------------------------------------------------------------------------------------- images
def _pil_to_rgb(im) -> np.ndarray:
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        # 16-bit grayscale: convert("L") would clip at 255 rather than scale, so scale 0..65535 to 0..255
        # with rounding ((2v + 257) // 514 == round(v / 257)).
        a = np.clip(np.asarray(im).astype(np.int64), 0, 65535)
        gray = ((2 * a + 257) // 514).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "F":
        raise ValueError("floating-point images (mode F) have no defined 8-bit range")
    if mode != "RGB":
        # Covers 1, L, LA, P, PA, RGBA (alpha dropped), CMYK, YCbCr, LAB, HSV.
        im = im.convert("RGB")
    return np.array(im, dtype=np.uint8)  # a writable copy: samples are edited in place by transforms


def read_image_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file into (H, W, 3) uint8 RGB.

    EXIF orientation is deliberately not applied: COCO's height/width describe the stored pixel array.
    """
    import warnings

    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise XPasteError("image file not found", path)
    try:
        with warnings.catch_warnings():
            # Palette images with byte transparency warn on conversion; the alpha is dropped anyway.
            warnings.simplefilter("ignore", UserWarning)
            with Image.open(path) as im:
                im.load()  # force a full decode here, so truncated files fail inside this try
                arr = _pil_to_rgb(im)
    except MemoryError:
        raise
    except Exception as e:  # PIL raises OSError, SyntaxError, EOFError, struct.error ... on corrupt files
        raise XPasteError(f"cannot decode image: {type(e).__name__}: {e}", path) from None
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise XPasteError(f"cannot decode image: unexpected pixel array shape {arr.shape}", path)
    return arr


# ------------------------------------------------------------------------------------------------ samples
def load_sample(dataset: CocoDataset, image_id: int, images_dir: str | os.PathLike) -> Sample:
    """Read one image and its instances. Broken or empty annotations are skipped and listed in meta."""
    info = dataset.image_by_id.get(image_id)
    if info is None:
        raise XPasteError(f"image id {image_id!r} is not in the dataset", dataset.path)
    file_name = info["file_name"]
    path = resolve_inside(images_dir, file_name, "file_name")
    image = read_image_rgb(path)
    h, w = int(info["height"]), int(info["width"])
    if image.shape[:2] != (h, w):
        raise XPasteError(
            f"image is {image.shape[1]}x{image.shape[0]} (WxH) but the dataset says {w}x{h}", path,
            "the json's width/height must match the stored pixels (EXIF rotation is not applied)")

    masks, labels, crowd, ann_ids, skipped = [], [], [], [], []
    for ann in dataset.annotations_for(image_id):
        try:
            mask = decode_annotation_mask(ann, h, w)
        except ValueError as e:
            skipped.append((ann["id"], str(e)))
            continue
        if not mask.any():
            skipped.append((ann["id"], "empty mask"))
            continue
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
            "skipped_annotations": skipped}
    return Sample(image, targets, meta)
