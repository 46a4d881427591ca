"""A training set whose objects are all small, for the 'prior by default' tests of every adapter.

Every object is a square of 13-15 px on a 256 x 256 image: sqrt(box area / image area) lies in
[0.051, 0.059]. X-Paste's rule (method.md, Stage 4) draws a pasted object's s from Normal(mean, std) of its
category, so pasted objects must be as small; without the prior they are drawn from U(0.05, 0.3)
(median 0.175). The expected median comes from pycocotools reading the json (an independent oracle),
never from xpaste.

Tolerance (`assert_follows_prior`): the median of the planned sizes within 15 % of the training median.
Sources of spread: the category stds (< 0.003), rounding of each side to whole pixels (<= 0.5 px of 14,
~4 % per object, unbiased), and sampling (n >= 40 pastes); 15 % is about 3x that, and the no-prior median
is 3x the training one, so a missing prior always fails the check.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from conftest import make_cutout
from PIL import Image

from xpaste.pool.store import InstancePool

SIZE = 256
NAMES = {1: "cup", 2: "dog", 3: "kite"}


def write_small_object_coco(root: Path, n_images: int = 6, seed: int = 0) -> tuple[Path, Path]:
    """images/*.png + train.json (polygons, 3 objects per image, one crowd region that must not count)."""
    rng = np.random.default_rng(seed)
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(n_images):
        img = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
        for k in range(3):
            side = int(rng.integers(13, 16))
            x, y = int(rng.integers(10, SIZE - 30)), int(rng.integers(10, SIZE - 30))
            img[y : y + side, x : x + side] = rng.integers(0, 256, 3, dtype=np.uint8)
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 1 + (i + k) % 3, "iscrowd": 0,
                         "bbox": [x, y, side, side], "area": float(side * side),
                         "segmentation": [[x, y, x + side, y, x + side, y + side, x, y + side]]})
        if i == 0:  # a huge crowd region: counting it would raise category 1's prior a lot
            anns.append({"id": len(anns) + 1, "image_id": 1, "category_id": 1, "iscrowd": 1,
                         "bbox": [0, 0, 200, 200], "area": 40000.0,
                         "segmentation": [[0, 0, 200, 0, 200, 200, 0, 200]]})
        name = f"{i:03d}.png"
        Image.fromarray(img).save(images_dir / name)
        images.append({"id": i + 1, "file_name": name, "height": SIZE, "width": SIZE})
    js = root / "train.json"
    js.write_text(json.dumps({"images": images, "annotations": anns,
                              "categories": [{"id": c, "name": n} for c, n in NAMES.items()]}))
    return js, images_dir


def training_median(json_path: Path) -> float:
    """Median sqrt(box area / image area) of the non-crowd annotations, read with pycocotools."""
    from pycocotools.coco import COCO

    coco = COCO(str(json_path))
    values = [np.sqrt(a["bbox"][2] * a["bbox"][3] / (coco.imgs[a["image_id"]]["height"]
                                                    * coco.imgs[a["image_id"]]["width"]))
              for a in coco.dataset["annotations"] if not a["iscrowd"]]
    return float(np.median(values))


def prior_pool(n: int = 12) -> InstancePool:
    """Cut-outs of 30-60 px (much larger than the training objects), one name per training category."""
    r = np.random.default_rng(5)
    arrays = [make_cutout(r, int(r.integers(30, 60)), int(r.integers(30, 60))) for _ in range(n)]
    return InstancePool.from_arrays(arrays, [1 + i % 3 for i in range(n)], NAMES)


def record_plans(copy_paste) -> list:
    """Make `copy_paste` append every plan it draws to the returned list."""
    plans = []
    draw = copy_paste.make_plan

    def recording(sample, rng=None):
        plan = draw(sample, rng)
        plans.append(plan)
        return plan

    copy_paste.make_plan = recording
    return plans


def planned_scales(plans) -> np.ndarray:
    """sqrt(object area / canvas area) of every planned paste."""
    return np.array([np.sqrt(op.width * op.height / (p.canvas_height * p.canvas_width)) for p in plans for op in p.ops])


def assert_follows_prior(scales: np.ndarray, expected_median: float, min_count: int = 40) -> None:
    assert len(scales) >= min_count, f"only {len(scales)} pastes"
    median = float(np.median(scales))
    print(f"pasted median {median:.4f} vs training {expected_median:.4f} (n={len(scales)})")  # shown with -s
    assert abs(median / expected_median - 1) < 0.15, (median, expected_median)
