"""`Instance` (an RGBA cut-out) and `InstanceRecord` (one row of the pool index)."""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

# Columns of the pool index, in order, with their Arrow-compatible Python types. Free score columns may be
# added per pool (e.g. `clip_image_sim`); they are kept as they are.
RECORD_COLUMNS: dict[str, type] = {
    "instance_id": str,
    "category_id": int,
    "category": str,
    "path": str,
    "width": int,
    "height": int,
    "source": str,
    "model": str,
    "prompt": str,
    "seed": int,
    "segmenter": str,
    "clip_score": float,
    "area_frac": float,
}


def content_hash(rgba: np.ndarray) -> str:
    """Stable id of a cut-out: sha256 over its shape and pixels (first 20 hex digits)."""
    h = hashlib.sha256()
    h.update(np.asarray(rgba.shape, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(rgba, dtype=np.uint8).tobytes())
    return h.hexdigest()[:20]


def validate_rgba(rgba: np.ndarray, what: str = "cut-out") -> np.ndarray:
    rgba = np.asarray(rgba)
    if rgba.ndim != 3 or rgba.shape[2] != 4 or rgba.dtype != np.uint8:
        raise ValueError(f"{what} must be (h, w, 4) uint8 RGBA, got {rgba.shape} {rgba.dtype}")
    if rgba.shape[0] == 0 or rgba.shape[1] == 0 or not rgba[..., 3].any():
        raise ValueError(f"{what} has an empty alpha mask")
    return rgba


def crop_to_alpha(rgba: np.ndarray, threshold: int = 0) -> np.ndarray:
    """Crop an RGBA image to the tight box of alpha > threshold."""
    alpha = rgba[..., 3] > threshold
    rows = np.flatnonzero(alpha.any(axis=1))
    cols = np.flatnonzero(alpha.any(axis=0))
    if len(rows) == 0:
        raise ValueError("cut-out has an empty alpha mask")
    return rgba[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


@dataclass
class InstanceRecord:
    instance_id: str
    category_id: int
    category: str = ""
    path: str = ""
    width: int = 0
    height: int = 0
    source: str = ""
    model: str = ""
    prompt: str = ""
    seed: int = -1
    segmenter: str = ""
    clip_score: float = float("nan")
    area_frac: float = float("nan")
    scores: dict[str, Any] = field(default_factory=dict)  # free columns

    def to_row(self) -> dict[str, Any]:
        row = asdict(self)
        row.update(row.pop("scores"))
        return row


@dataclass(eq=False)
class Instance:
    """A tightly cropped RGBA cut-out with its category."""

    rgba: np.ndarray
    category_id: int
    record: InstanceRecord | None = None

    def __post_init__(self) -> None:
        self.rgba = validate_rgba(self.rgba)

    @property
    def mask(self) -> np.ndarray:
        return self.rgba[..., 3] >= 128
