"""`Sample`: an RGB image with its `Targets` and free metadata."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xpaste.core.targets import Targets


@dataclass(eq=False)
class Sample:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    targets: Targets
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        image = np.asarray(self.image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
        if image.shape[:2] != self.targets.image_size:
            raise ValueError(f"image is {image.shape[:2]} but masks are {self.targets.image_size}")
        self.image = image

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    def copy(self) -> Sample:
        return Sample(self.image.copy(), self.targets.copy(), dict(self.meta))
