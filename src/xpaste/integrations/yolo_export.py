"""COCO / LVIS -> ultralytics YOLO-seg export: layout, labels and the mask -> polygon conversion.

ultralytics is AGPL-3.0, so this module is an optional extra (`pip install 'xpaste[ultralytics]'`) and is
never imported by `xpaste/__init__.py`.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import yaml
from ultralytics.data.converter import merge_multi_segment

from xpaste.data.coco import decode_annotation_mask, load_coco
from xpaste.errors import XPasteError
from xpaste.io import resolve_inside


# ----------------------------------------------------------------------------- masks <-> polygons
def mask_to_polygon(mask: np.ndarray, min_points: int = 1) -> np.ndarray | None:
    """One (M, 2) float32 pixel-coordinate polygon for a bool mask, or None when it has no usable contour.

    Every external contour with at least `min_points` points is kept; several parts are joined the way
    ultralytics' `merge_multi_segment` joins multi-polygon COCO annotations.
    """
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    parts = [c.reshape(-1, 2).astype(np.float32) + 0.5 for c in contours if len(c) >= min_points]
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    return np.concatenate(merge_multi_segment([p.reshape(-1).tolist() for p in parts]), axis=0).astype(np.float32)


def _coco_polygon(ann: dict, height: int, width: int) -> np.ndarray | None:
    """The polygon of one COCO annotation: its own polygons when it has them, else contours of its RLE mask."""
    seg = ann.get("segmentation")
    if isinstance(seg, list) and seg:
        parts = [p for p in seg if isinstance(p, list) and len(p) >= 6]
        if parts:
            if len(parts) == 1:
                return np.asarray(parts[0], np.float32).reshape(-1, 2)
            return np.concatenate(merge_multi_segment(parts), axis=0).astype(np.float32)
    mask = decode_annotation_mask(ann, height, width)  # raises ValueError for a malformed segmentation
    return mask_to_polygon(mask, min_points=3) if mask.any() else None


# ----------------------------------------------------------------------------- exporter
def _place(src: Path, dst: Path) -> None:
    """Hard-link the image (no copy of a large dataset); copy when linking is impossible (other device)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def export_yolo_seg(dataset_json: str | os.PathLike, images_dir: str | os.PathLike, out_dir: str | os.PathLike,
                    split: str = "train", val_fraction: float = 0.0, seed: int = 0,
                    overwrite: bool = False) -> Path:
    """Write a COCO / LVIS dataset (e.g. `xpaste augment` output) in the YOLO-seg layout; returns data.yaml.

    out/images/<split>/<file_name> (hard links, or copies), out/labels/<split>/<stem>.txt with one line
    `class x1 y1 x2 y2 ...` per instance (coordinates normalised to [0, 1]), and out/data.yaml. Classes are
    0..K-1 in category-id order (`names` keeps the category names). Crowd annotations are skipped, as YOLO has
    no ignore regions; images without instances get an empty label file (background images). With
    `val_fraction` > 0 a seeded random share of the images goes to images/val, else `val` points at `split`.
    """
    dataset = load_coco(dataset_json)
    out = Path(out_dir)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    for sub in ("images", "labels"):
        if (out / sub).exists() and any((out / sub).iterdir()):
            if not overwrite:
                raise XPasteError(f"{sub}/ already exists and is not empty", out,
                                  "pick a new --out or pass --overwrite (stale labels and ultralytics' .cache "
                                  "files would otherwise mix with the new export)")
            shutil.rmtree(out / sub)
    cat_ids = sorted(int(c["id"]) for c in dataset.categories)
    class_of = {c: i for i, c in enumerate(cat_ids)}
    names = {i: str(dataset.category_by_id[c]["name"]) for i, c in enumerate(cat_ids)}

    images = list(dataset.images)
    splits = [split] * len(images)
    n_val = int(round(val_fraction * len(images)))
    if n_val:
        for i in np.random.default_rng(seed).permutation(len(images))[:n_val]:
            splits[int(i)] = "val"
    skipped = 0
    for info, part in zip(images, splits):
        h, w = int(info["height"]), int(info["width"])
        src = resolve_inside(images_dir, info["file_name"], "file_name")
        if not src.is_file():
            raise XPasteError("image file not found", src)
        rel = Path(info["file_name"])
        _place(src, out / "images" / part / rel)
        lines = []
        for ann in dataset.annotations_for(info["id"]):
            if ann.get("iscrowd", 0):
                continue
            try:
                poly = _coco_polygon(ann, h, w)
            except ValueError:
                poly = None
            if poly is None:
                skipped += 1
                continue
            xy = np.clip(poly / np.array([w, h], np.float32), 0.0, 1.0).reshape(-1)
            lines.append(" ".join([str(class_of[int(ann["category_id"])])] + [f"{v:.6f}" for v in xy]))
        label = (out / "labels" / part / rel).with_suffix(".txt")
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("\n".join(lines) + ("\n" if lines else ""))
    data = {"path": str(out.resolve()), "train": f"images/{split}",
            "val": "images/val" if n_val else f"images/{split}", "names": names}
    yaml_path = out / "data.yaml"
    yaml_path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    if skipped:
        print(f"export-yolo: skipped {skipped} annotations without a usable polygon")
    return yaml_path
