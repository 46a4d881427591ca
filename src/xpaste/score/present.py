"""How an image is shown to CLIP, per paper (each rule's source is given in its docstring).

- X-Paste scores a cut-out as the WHOLE generated image with white outside the binary mask (> 128); CLIP's own
  preprocessing (resize the short side to 224, centre-crop 224) then applies (method.md, Stage 2).
- DiverGen compares generated cut-outs with real instances by CLIP image-image similarity, showing a generated
  image on black outside its mask and a real instance as its box padded by 40 px, cropped from the real image
  whose pixels outside the instance mask are replaced by a 10 x 10 box blur of the image (DiverGen's
  `filteration/get_image_feature.py` and `convert_lvis_to_coco_crop.py --mode padding --fill blur`).

Pure numpy apart from OpenCV's box blur, imported inside the function that needs it.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from xpaste.data.coco import load_coco, load_sample
from xpaste.errors import XPasteError
from xpaste.ops.masks import binarize

#: DiverGen's padding around a real instance's box, in pixels (`--padding_width 40`).
DIVERGEN_PAD = 40
#: DiverGen's background blur: `cv2.blur(image, (10, 10))`, a 10 x 10 box filter.
DIVERGEN_BLUR = 10


def _check(rgb: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rgb, mask = np.asarray(rgb), np.asarray(mask)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or mask.shape != rgb.shape[:2]:
        raise ValueError(f"expected (H, W, 3) image and (H, W) mask, got {rgb.shape} and {mask.shape}")
    return rgb.astype(np.uint8, copy=False), binarize(mask)


def composite_on_white(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """X-Paste's scoring view: the whole (H, W, 3) uint8 image, white (255) wherever the mask is background.

    mask: (H, W) 0-255 soft mask (foreground = > 128, `xpaste.ops.masks.binarize`) or bool. Returns a new
    (H, W, 3) uint8 array of the input's size: CLIP's preprocessing does the resize and centre crop.
    Raises ValueError on mismatched shapes. Source: method.md Stage 2 (the reference's `img[mask <= 128] = 255`).
    """
    rgb, fg = _check(rgb, mask)
    return np.where(fg[..., None], rgb, np.uint8(255))


def composite_on_black(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """DiverGen's view of a generated image: the whole (H, W, 3) uint8 image, black (0) outside the mask.

    mask: (H, W) 0-255 soft mask (> 128) or bool. Source: DiverGen `get_image_feature.py` (`image[mask == 0] = 0`
    on its binary masks). Raises ValueError on mismatched shapes.
    """
    rgb, fg = _check(rgb, mask)
    return np.where(fg[..., None], rgb, np.uint8(0))


def real_instance_view(image: np.ndarray, mask: np.ndarray, pad: int = DIVERGEN_PAD,
                       blur: int = DIVERGEN_BLUR) -> np.ndarray:
    """DiverGen's view of a real instance: its tight box grown by `pad` px per side (clipped to the image),
    cropped from `image` whose pixels outside the instance mask are a `blur` x `blur` box blur of the image.

    image: (H, W, 3) uint8, the instance's whole source image; mask: (H, W) bool or 0-255 (> 128).
    Returns (h, w, 3) uint8. Raises ValueError on mismatched shapes or an empty mask.
    Source: DiverGen `convert_lvis_to_coco_crop.py --mode padding --padding_width 40 --fill blur`
    (`cv2.blur(image, (10, 10))` outside the mask, then crop `[x - 40, y - 40, x + w + 40, y + h + 40]`).
    """
    import cv2

    image, fg = _check(image, mask)
    rows, cols = np.flatnonzero(fg.any(axis=1)), np.flatnonzero(fg.any(axis=0))
    if rows.size == 0:
        raise ValueError("empty instance mask")
    h, w = fg.shape
    y0, y1 = max(int(rows[0]) - pad, 0), min(int(rows[-1]) + 1 + pad, h)
    x0, x1 = max(int(cols[0]) - pad, 0), min(int(cols[-1]) + 1 + pad, w)
    blurred = cv2.blur(np.ascontiguousarray(image), (blur, blur))
    out = np.where(fg[..., None], image, blurred)
    return np.ascontiguousarray(out[y0:y1, x0:x1])


class RealViews:
    """DiverGen's view of each real instance of a pool (`xpaste.score.real_instance_view`): its box padded by
    40 px, cut from its source image with a blurred background.

    The source image is found for pools made by `xpaste pool import-coco` (pool.json records the dataset and the
    images folder, each row its image_id and ann_id) and checked against the stored cut-out (category and size);
    otherwise, e.g. for pools imported from X-Paste json files, only the cut-out itself is there to show (its
    pixels with a blurred background, no padding): `fallbacks` counts those.
    """

    def __init__(self, pool: Any):
        self.pool, self.fallbacks = pool, 0
        header = getattr(pool, "header", None) or {}
        cfg = header.get("config") or {}
        records = pool.records()
        self.dataset = self.images = None
        self.keys: list = [None] * len(pool)
        if cfg.get("import") == "coco" and cfg.get("images") and {"image_id", "ann_id"} <= set(records.column_names):
            self.images = cfg["images"]
            self._dataset_path = cfg.get("dataset")
            self.keys = list(zip(records.column("image_id").to_pylist(), records.column("ann_id").to_pylist()))

    def view(self, row: int) -> np.ndarray:
        rgba = self.pool.rgba(row)
        source = self._source(row, rgba)
        if source is None:
            self.fallbacks += 1
            return real_instance_view(rgba[..., :3], rgba[..., 3] > 0)
        return source

    def _source(self, row: int, rgba: np.ndarray) -> np.ndarray | None:
        key = self.keys[row]
        if key is None or key[0] is None or key[1] is None:
            return None
        try:
            if self.dataset is None:
                self.dataset = load_coco(self._dataset_path)
            sample = load_sample(self.dataset, int(key[0]), self.images)
        except (XPasteError, OSError, TypeError):
            return None
        hits = np.flatnonzero(np.asarray(sample.targets.extra["ann_id"]) == int(key[1]))
        if hits.size != 1:
            return None
        mask = sample.targets.masks[hits[0]]
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        same = (int(sample.targets.labels[hits[0]]) == int(self.pool.category_ids[row]) and rows.size
                and (rows[-1] + 1 - rows[0], cols[-1] + 1 - cols[0]) == rgba.shape[:2])
        return real_instance_view(sample.image, mask) if same else None
