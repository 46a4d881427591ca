"""GrabCut (OpenCV) as a weight-free segmenter for object-centric images.

Generated and filtered web images show one object roughly centred on a simple background, so a
rectangle inset a few percent from the border is a good prior: everything outside is background,
everything inside is "probably foreground" and GrabCut's colour GMMs refine it. No model files and no
network, which makes it the baseline that always works (and the ensemble member of last resort).
"""
from __future__ import annotations

import cv2
import numpy as np

from xpaste.ops.masks import normalize_soft
from xpaste.segment.base import check_batch


class GrabCutSegmenter:
    """OpenCV GrabCut initialised with a border-inset rectangle; soft mask is 0 or 255.

    A mask with no foreground, or one that is all foreground, is constant and so all 0 after the per-image
    min-max normalisation every segmenter applies (`normalize_soft`, method.md Stage 2).

    iterations: GrabCut EM iterations (5 by default; a spec "grabcut:8" passes "8").
    margin: fraction of width/height left outside the rectangle on each side (at least 1 px).
    max_side: images larger than this are segmented at reduced size and the mask is scaled back,
        which bounds the cost (GrabCut is roughly linear in pixels, ~0.5 s at 512x512).
    """

    def __init__(self, iterations: int | str = 5, margin: float = 0.05, max_side: int | None = 512,
                 name: str | None = None):
        self.iterations = int(iterations)
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")
        if not 0.0 <= margin < 0.5:
            raise ValueError(f"margin must be in [0, 0.5), got {margin}")
        self.margin = float(margin)
        self.max_side = max_side
        self.name = name or "grabcut"

    def segment(self, images: list[np.ndarray], prompts: list[str] | None = None) -> list[np.ndarray]:
        # GrabCut has no notion of text; prompts are accepted for the common Segmenter signature.
        check_batch(images, prompts)
        return [self._segment_one(img) for img in images]

    def _segment_one(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        work = image
        scale = 1.0
        if self.max_side and max(h, w) > self.max_side:
            scale = self.max_side / max(h, w)
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            work = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        wh, ww = work.shape[:2]
        # At least one pixel of certain background is needed to fit the background GMM.
        mx, my = max(1, round(ww * self.margin)), max(1, round(wh * self.margin))
        if ww - 2 * mx < 1 or wh - 2 * my < 1:
            return np.zeros((h, w), np.uint8)  # too small to hold a rectangle inside a border
        # Channel order does not matter to GrabCut's colour models, so RGB is passed as is.
        labels = np.zeros((wh, ww), np.uint8)
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        # GrabCut seeds its k-means from OpenCV's thread RNG, whose state depends on earlier calls in the
        # process: reseed so a mask depends only on its image (a resumed run must equal an uninterrupted one).
        cv2.setRNGSeed(0)
        cv2.grabCut(np.ascontiguousarray(work), labels, (mx, my, ww - 2 * mx, wh - 2 * my), bgd, fgd,
                    self.iterations, cv2.GC_INIT_WITH_RECT)
        fg = (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)
        mask = fg.astype(np.uint8) * 255
        if scale != 1.0:
            mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)
        return normalize_soft(mask)
