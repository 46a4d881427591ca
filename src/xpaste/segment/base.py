"""The Segmenter protocol shared by every foreground backend, plus the paper's binarisation.

A segmenter turns object-centric RGB images into soft foreground masks. Backends differ wildly in
their native output (GrabCut labels, CLIPSeg logits, U2-Net saliency), so the contract fixes one
common currency: a uint8 (H, W) map in 0-255 at the input image's size. X-Paste normalises every
segmenter to this range and binarises at > 128, which makes an ensemble's members comparable.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

#: X-Paste binarises every soft mask at > 128 (0-255 scale).
BINARY_THRESHOLD = 128


@runtime_checkable
class Segmenter(Protocol):
    """A foreground segmenter: batched images (+ one text prompt each) in, soft masks out."""

    #: Unique, human-readable id recorded with each mask (e.g. "grabcut", "rembg:u2net").
    name: str

    def segment(self, images: list[np.ndarray], prompts: list[str]) -> list[np.ndarray]:
        """Soft masks for a batch.

        images: (H, W, 3) uint8 RGB arrays; sizes may differ within a batch.
        prompts: one text per image (the category name); prompt-free backends ignore it.
        Returns one (H, W) uint8 array in 0-255 per image, at that image's size.
        """
        ...


def binarize(soft: np.ndarray, threshold: int = BINARY_THRESHOLD) -> np.ndarray:
    """Bool foreground mask from a 0-255 soft mask (> threshold, 128 as in the paper)."""
    return np.asarray(soft) > threshold


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


def to_uint8(prob: np.ndarray) -> np.ndarray:
    """Map probabilities in [0, 1] to a 0-255 uint8 map (rounded, NaN-safe)."""
    prob = np.nan_to_num(np.asarray(prob, np.float32), nan=0.0)
    return np.clip(np.rint(prob * 255.0), 0, 255).astype(np.uint8)
