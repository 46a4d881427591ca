"""Scoring cut-outs with CLIP and filtering them into a pool (X-Paste Stage 2-3).

Light on purpose: the numpy filters and the views shown to CLIP (`xpaste.score.present`) import no torch.
The CLIP scorer lives in `xpaste.score.clip` (needs the `clip` extra) and is reached through SCORERS.
"""
from __future__ import annotations

from xpaste.score.filters import (Selection, adaptive_threshold, best_per_image, category_bars,
                                  dedup_by_embedding, select_instances)
from xpaste.score.present import composite_on_black, composite_on_white, real_instance_view

#: name -> "module:Class" for scorers built from a config string.
SCORERS: dict[str, str] = {"clip": "xpaste.score.clip:ClipScorer"}

#: The text X-Paste scores every cut-out against (method.md, Stage 2).
PROMPT_TEMPLATE = "a photo of {name}"

__all__ = ["SCORERS", "PROMPT_TEMPLATE", "composite_on_white", "composite_on_black", "real_instance_view",
           "prompt_for", "adaptive_threshold", "best_per_image", "category_bars", "select_instances", "Selection",
           "dedup_by_embedding"]


def prompt_for(name: str, template: str = PROMPT_TEMPLATE) -> str:
    """The scoring text for a category name; LVIS underscores become spaces."""
    return template.format(name=name.replace("_", " "))

