"""Test session setup: one thread per library, and every cache/config folder inside a temp dir."""
from __future__ import annotations

import os
import tempfile

# Set before any heavy library is imported by a test module.
_SANDBOX = tempfile.mkdtemp(prefix="xpaste-tests-")
for _var, _sub in [("MPLCONFIGDIR", "mpl"), ("YOLO_CONFIG_DIR", "yolo"), ("REMBG_HOME", "rembg"),
                   ("HF_HOME", "hf"), ("XDG_CACHE_HOME", "cache"), ("XDG_CONFIG_HOME", "config"),
                   ("TORCH_HOME", "torch")]:
    os.environ.setdefault(_var, os.path.join(_SANDBOX, _sub))
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_CBWR", "COMPATIBLE")  # reproducible MKL kernels (xpaste.pipeline.determinism)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from xpaste.core.sample import Sample  # noqa: E402
from xpaste.core.targets import Targets  # noqa: E402
from xpaste.ops.masks import tight_boxes  # noqa: E402


def make_cutout(rng: np.random.Generator, height: int, width: int, shape: str = "ellipse") -> np.ndarray:
    """An RGBA cut-out with a random colour and an ellipse (or random blob) alpha."""
    rgba = np.zeros((height, width, 4), np.uint8)
    rgba[..., :3] = rng.integers(0, 256, 3, dtype=np.uint8)
    yy, xx = np.mgrid[:height, :width]
    inside = ((yy + 0.5 - height / 2) / (height / 2)) ** 2 + ((xx + 0.5 - width / 2) / (width / 2)) ** 2 < 1
    if shape == "blob":
        inside &= rng.random((height, width)) < 0.8
    inside[height // 2, width // 2] = True
    rgba[..., 3] = inside * 255
    return rgba


def make_sample(rng: np.random.Generator, height: int = 96, width: int = 128, n: int = 4) -> Sample:
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    masks = np.zeros((n, height, width), bool)
    for i in range(n):
        h, w = rng.integers(1, max(2, height // 2)), rng.integers(1, max(2, width // 2))
        y, x = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
        masks[i, y : y + h, x : x + w] = rng.random((h, w)) < 0.9
        masks[i, y, x] = True
    labels = rng.integers(1, 6, n)
    return Sample(image, Targets(tight_boxes(masks), masks, labels, {"iscrowd": np.zeros(n, bool)}),
                  {"image_id": 1})


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def small_pool():
    from xpaste.pool.store import InstancePool

    r = np.random.default_rng(1)
    arrays = [make_cutout(r, int(r.integers(6, 40)), int(r.integers(6, 40)), "blob" if i % 3 else "ellipse")
              for i in range(30)]
    cats = [1 + i % 5 for i in range(30)]
    return InstancePool.from_arrays(arrays, cats, {i: f"cat{i}" for i in range(1, 6)})
