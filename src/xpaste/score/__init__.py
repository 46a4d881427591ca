"""Scoring cut-outs with CLIP and filtering them into a pool (X-Paste Stage 2-3).

Light on purpose: the numpy filters and the white-background compositing import no torch. The CLIP
scorer lives in `xpaste.score.clip` (needs the `clip` extra) and is reached through SCORERS.
"""
from __future__ import annotations

import numpy as np

from xpaste.score.filters import (adaptive_threshold, best_per_image, dedup_by_embedding,
                                  select_instances)

#: name -> "module:Class" for scorers built from a config string.
SCORERS: dict[str, str] = {"clip": "xpaste.score.clip:ClipScorer"}

#: The text X-Paste scores every cut-out against.
PROMPT_TEMPLATE = "a photo of {name}"

__all__ = ["SCORERS", "PROMPT_TEMPLATE", "composite_on_white", "prompt_for", "adaptive_threshold",
           "best_per_image", "select_instances", "dedup_by_embedding"]


def prompt_for(name: str, template: str = PROMPT_TEMPLATE) -> str:
    """The scoring text for a category name; LVIS underscores become spaces."""
    return template.format(name=name.replace("_", " "))


def composite_on_white(rgb: np.ndarray, soft_mask: np.ndarray) -> np.ndarray:
    """Alpha-composite an (H, W, 3) uint8 image over white using a 0-255 (or bool) (H, W) mask.

    X-Paste scores a cut-out on white so that CLIP judges the object's shape and texture, not the
    background it was generated on: a mask that leaks background or misses the object scores lower.
    """
    rgb = np.asarray(rgb)
    mask = np.asarray(soft_mask)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or mask.shape != rgb.shape[:2]:
        raise ValueError(f"expected (H, W, 3) image and (H, W) mask, got {rgb.shape} and {mask.shape}")
    alpha = mask.astype(np.float32) if mask.dtype != bool else mask.astype(np.float32) * 255.0
    alpha = (alpha / 255.0)[..., None]
    out = rgb.astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
