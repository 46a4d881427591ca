"""The Segmenter protocol shared by every foreground backend, plus the paper's binarisation.

A segmenter turns object-centric RGB images into soft foreground masks. Backends differ wildly in
their native output (GrabCut labels, CLIPSeg logits, U2-Net saliency), so the contract fixes one
common currency: a uint8 (H, W) map in 0-255 at the input image's size, min-max normalised per image
(method.md, Stage 2: X-Paste normalises every segmenter's output per image to 0-255 and binarises at > 128,
which makes an ensemble's members comparable). The normalisation and the binarisation live in
`xpaste.ops.masks` (`normalize_soft`, `binarize`) and are re-exported here.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from xpaste.ops.masks import BINARY_THRESHOLD, binarize, normalize_soft

__all__ = ["BINARY_THRESHOLD", "Segmenter", "BoxSegmenter", "binarize", "normalize_soft", "check_batch", "check_boxes"]


@runtime_checkable
class Segmenter(Protocol):
    """A foreground segmenter: batched images (+ one text prompt each) in, soft masks out."""

    #: Unique, human-readable id recorded with each mask (e.g. "grabcut", "rembg:u2net").
    name: str

    def segment(self, images: list[np.ndarray], prompts: list[str]) -> list[np.ndarray]:
        """Soft masks for a batch.

        images: (H, W, 3) uint8 RGB arrays; sizes may differ within a batch.
        prompts: one text per image (the category name); prompt-free backends ignore it.
        Returns one (H, W) uint8 array in 0-255 per image, at that image's size, min-max normalised per
        image (`normalize_soft`: the image's lowest value 0, its highest 255; a constant output all 0).
        """
        ...


@runtime_checkable
class BoxSegmenter(Protocol):
    """Optional: a segmenter that can also be prompted with boxes (`xpaste masks-from-boxes`: sam, sam2, sam3).

    Unlike `segment`, whose soft masks are min-max normalised per image (an ensemble's members compared), a box
    prompt asks for one object's mask, which may be absent: the answer is the model's own binary decision
    (SAM/SAM 2: logit > 0, SAM 3: probability > 0.5), never stretched, so an empty mask stays empty.
    """

    name: str

    def segment_boxes(self, images: list[np.ndarray], boxes: list[np.ndarray],
                      prompts: list[list[str]] | None = None) -> list[np.ndarray]:
        """Binary masks for boxes.

        images: (H, W, 3) uint8 RGB arrays. boxes: per image an (N, 4) float array of XYXY pixel boxes (x2, y2
        exclusive; inside the image). prompts: per image N texts (the category names: SAM 3 uses them, the
        others ignore them). Returns per image an (N, H, W) bool array at the image's size; a mask may reach
        outside its box (the caller clips) or be empty.
        """
        ...


def check_boxes(images: list[np.ndarray], boxes: list[np.ndarray], prompts: list[list[str]] | None = None
                ) -> list[np.ndarray]:
    """`check_batch` for box prompts: one (N, 4) finite box array per image (and N prompts when given);
    returns the boxes as float64 arrays. ValueError otherwise."""
    check_batch(images)
    if len(boxes) != len(images):
        raise ValueError(f"got {len(images)} images but {len(boxes)} box lists (one per image)")
    if prompts is not None and len(prompts) != len(images):
        raise ValueError(f"got {len(images)} images but {len(prompts)} prompt lists (one per image)")
    out = []
    for i, b in enumerate(boxes):
        arr = np.asarray(b, dtype=np.float64).reshape(-1, 4) if len(b) else np.zeros((0, 4))
        if not np.isfinite(arr).all():
            raise ValueError(f"image {i}: boxes must be finite numbers")
        if prompts is not None and len(prompts[i]) != len(arr):
            raise ValueError(f"image {i}: got {len(arr)} boxes but {len(prompts[i])} prompts (one per box)")
        out.append(arr)
    return out


def check_batch(images: list[np.ndarray], prompts: list[str] | None = None) -> None:
    """Raise a concise ValueError for inputs every backend would otherwise mangle silently."""
    if prompts is not None and len(prompts) != len(images):
        raise ValueError(f"got {len(images)} images but {len(prompts)} prompts (one prompt per image)")
    for i, img in enumerate(images):
        if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            shape = getattr(img, "shape", None)
            dtype = getattr(img, "dtype", type(img).__name__)
            raise ValueError(f"image {i}: expected an (H, W, 3) uint8 RGB array, got shape {shape} dtype {dtype}")
        if img.shape[0] == 0 or img.shape[1] == 0:
            raise ValueError(f"image {i} is empty: shape {img.shape}")

