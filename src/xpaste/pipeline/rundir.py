"""The run directory: categories, config and versions records, and image/mask file I/O for the stages."""
from __future__ import annotations

import platform
import sys
from importlib import metadata
from pathlib import Path

import numpy as np

from xpaste.errors import XPasteError
from xpaste.io import read_json, resolve_inside, write_bytes_atomic, write_json_atomic

CATEGORIES_FILE = "categories.json"
VERSIONED_PACKAGES = ("xpaste", "numpy", "torch", "diffusers", "transformers", "open_clip_torch", "rembg",
                      "opencv-python-headless", "pyarrow", "ray")


def versions() -> dict:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def record_invocation(run_dir: Path, command: str, config: dict) -> None:
    """Keep the resolved config and library versions of the latest invocation, plus a short history."""
    import yaml

    run_dir.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(run_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False, allow_unicode=True).encode())
    history_path = run_dir / "run.json"
    history = read_json(history_path) if history_path.exists() else {"invocations": []}
    history["invocations"].append({"command": command, "versions": versions()})
    history["invocations"] = history["invocations"][-50:]
    write_json_atomic(history_path, history, indent=1)


def resolve_categories(run_dir: Path, config: dict):
    """Categories of this run: from `categories.source` (recorded on first use) or from the run's record."""
    from xpaste.categories import (categories_from_rows, categories_to_rows, load_categories,
                                   select_categories)

    path = run_dir / CATEGORIES_FILE
    recorded = categories_from_rows(read_json(path)["categories"]) if path.exists() else None
    source = config["categories"]["source"]
    if source is None:
        if recorded is None:
            raise XPasteError("no categories for this run", run_dir,
                              "pass --categories (a COCO/LVIS json, a text file, or 'cat,dog')")
        return recorded
    cats = select_categories(load_categories(str(source)), config["categories"]["select"])
    if recorded is not None and categories_to_rows(recorded) != categories_to_rows(cats):
        raise XPasteError("this run was started with other categories", path,
                          "use a new --run folder, or the same categories")
    if recorded is None:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {"categories": categories_to_rows(cats)}, indent=1)
    return cats


def save_png(run_dir: Path, rel: str, array: np.ndarray) -> None:
    import cv2

    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", array, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise RuntimeError(f"PNG encoding failed for {rel}")
    write_bytes_atomic(resolve_inside(run_dir, rel, "output path"), buf.tobytes(), durable=False)


def load_rgb(run_dir: Path, rel: str) -> np.ndarray:
    from xpaste.imageio import read_rgb

    return read_rgb(resolve_inside(run_dir, rel, "image path"))


def load_mask(run_dir: Path, rel: str) -> np.ndarray:
    import cv2

    path = resolve_inside(run_dir, rel, "mask path")
    data = np.fromfile(path, np.uint8) if path.exists() else np.zeros(0, np.uint8)
    mask = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE) if data.size else None
    if mask is None:
        raise XPasteError("missing or unreadable mask", path, "rerun the segment stage with --fresh")
    return mask
