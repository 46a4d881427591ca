"""Small COCO/LVIS datasets written to disk for tests: synthetic shapes, every segmentation encoding."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from xpaste.ops.masks import rle_encode, tight_box


def _ellipse(h: int, w: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1


def write_dataset(root: Path, n_images: int = 4, seed: int = 0, lvis: bool = True, size=(72, 96)) -> tuple[Path, Path]:
    """Write images/ and annotations.json under `root`; returns (json path, images dir).

    Objects are large ellipses (so import-coco keeps them with a small --min-area) painted into noisy
    images; annotations alternate polygon, compressed RLE and uncompressed RLE; the last image also has a
    crowd region. With `lvis`, categories carry `frequency` and images `neg_category_ids` etc.
    """
    rng = np.random.default_rng(seed)
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    h, w = size
    categories = [{"id": c, "name": n} for c, n in [(1, "cup"), (2, "cat/dog"), (3, "fire_hydrant"), (4, "ünï")]]
    if lvis:
        for c, f in zip(categories, "frcf"):
            c.update(frequency=f, synonyms=[c["name"]], **{"def": f"a {c['name']}"})
    images, anns = [], []
    for i in range(n_images):
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        image_id = 100 + i
        for k in range(2 + i % 2):
            cat = 1 + (i + k) % 3
            m = _ellipse(h, w, rng.uniform(15, h - 15), rng.uniform(15, w - 15), rng.uniform(8, 20), rng.uniform(8, 25))
            img[m] = rng.integers(0, 256, 3, dtype=np.uint8)
            x1, y1, x2, y2 = tight_box(m)
            kind = (i + k) % 3
            if kind == 0:  # polygon of the ellipse outline
                import cv2

                contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
                seg = [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]
            elif kind == 1:
                seg = rle_encode(m)
            else:  # uncompressed RLE (column-major run lengths starting with zeros)
                flat = m.T.reshape(-1).astype(np.int8)
                change = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
                counts = np.diff(np.concatenate([[0], change])).tolist()
                seg = {"size": [h, w], "counts": counts}
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cat, "segmentation": seg,
                         "area": float(m.sum()), "bbox": [x1, y1, x2 - x1, y2 - y1], "iscrowd": 0})
        if i == n_images - 1:
            crowd = np.zeros((h, w), bool)
            crowd[2:12, 2:30] = True
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": 1, "segmentation": rle_encode(crowd),
                         "area": float(crowd.sum()), "bbox": [2, 2, 28, 10], "iscrowd": 1})
        name = f"img_{i}.jpg" if i % 2 == 0 else f"sub/img_{i}.png"
        (images_dir / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(images_dir / name, quality=95)
        record = {"id": image_id, "file_name": name, "height": h, "width": w}
        if lvis:
            record.update(neg_category_ids=[1, 2, 3, 4], not_exhaustive_category_ids=[2])
        images.append(record)
    if lvis:
        for img in images:  # a category present in the image cannot be negative
            present = {a["category_id"] for a in anns if a["image_id"] == img["id"]}
            img["neg_category_ids"] = [c for c in img["neg_category_ids"] if c not in present]
    doc = {"info": {"description": "xpaste test"}, "licenses": [], "images": images, "annotations": anns,
           "categories": categories}
    path = root / "annotations.json"
    path.write_text(json.dumps(doc))
    return path, images_dir
