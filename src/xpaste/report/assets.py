"""The report's image files: counter-named, written atomically, plus the pixel kernels that make them.

Asset names never come from data (category and file names may hold '/', '<', '..'): they are
`<kind>-<counter>.<ext>`, and a rerun into the same folder removes the assets the old page used that the new
page does not (and nothing else).
"""
from __future__ import annotations

import html
import re
import struct
from pathlib import Path

import numpy as np

from xpaste.io import write_bytes_atomic

THUMB = 96  # contact-sheet thumbnail side (the CSS shows it at this size)
GALLERY_SIDE = 320
PASTED_RGB, ORIGINAL_RGB = (255, 0, 220), (0, 230, 255)  # magenta / cyan: apart for colour-blind readers too
ASSET_NAME = re.compile(r"^(plot|thumb|gallery)-\d{6}\.(png|jpg)$")


class Assets:
    """Writes the images of one report under `out_dir/assets/` and returns their <img> tags."""

    def __init__(self, out_dir: Path):
        self.dir = Path(out_dir) / "assets"
        self.count = 0
        self.written: set[str] = set()

    def add(self, data: bytes, kind: str, ext: str) -> str:
        self.count += 1
        name = f"{kind}-{self.count:06d}.{ext}"
        write_bytes_atomic(self.dir / name, data, durable=False)
        self.written.add(name)
        return f"assets/{name}"

    def image(self, rgb: np.ndarray, kind: str, alt: str = "") -> str:
        """An RGB array as a JPEG asset; width/height are set so the page does not jump while it loads."""
        import cv2

        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 88])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        src = self.add(buf.tobytes(), kind, "jpg")
        return f'<img src="{src}" width="{rgb.shape[1]}" height="{rgb.shape[0]}" alt="{html.escape(alt)}">'

    def plot(self, png: bytes, alt: str, wide: bool = False) -> str:
        """A matplotlib PNG; `wide` plots (small multiples) span the whole row of the plot grid."""
        cls = "plot wide" if wide else "plot"
        width, height = struct.unpack(">II", png[16:24])  # the PNG header's size, so the layout never jumps
        return (f'<img class="{cls}" src="{self.add(png, "plot", "png")}" width="{width}" height="{height}" '
                f'alt="{html.escape(alt)}">')

    def prune(self) -> None:
        for path in self.dir.glob("*") if self.dir.exists() else []:
            if ASSET_NAME.match(path.name) and path.name not in self.written:
                path.unlink(missing_ok=True)


def resize(image: np.ndarray, scale: float) -> np.ndarray:
    import cv2

    h, w = image.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def checker_thumb(rgba: np.ndarray, side: int = THUMB) -> np.ndarray:
    """An RGBA cut-out fitted into side x side and composited on a grey checkerboard (transparency shows)."""
    small = resize(rgba, min(side / max(rgba.shape[:2]), 4.0))  # small cut-outs grow at most 4x
    yy, xx = np.mgrid[: small.shape[0], : small.shape[1]]
    board = np.where(((yy // 8 + xx // 8) % 2 == 0)[..., None], 255, 204).astype(np.float32)
    alpha = small[..., 3:4].astype(np.float32) / 255
    return (small[..., :3] * alpha + board * (1 - alpha) + 0.5).astype(np.uint8)


def outlined(rgb: np.ndarray, masks: list[tuple[np.ndarray, bool]], side: int = GALLERY_SIDE) -> np.ndarray:
    """`rgb` downscaled to at most `side` px with each (mask, pasted) outlined: pasted magenta, original cyan.

    Contours are found at full resolution and then scaled, so thin objects keep an outline; each is drawn
    over a dark halo so it reads on light and dark photos alike. Originals are drawn first, so the pasted
    outlines stay on top where they overlap.
    """
    import cv2

    scale = min(side / max(rgb.shape[:2]), 1.0)
    small = np.ascontiguousarray(resize(rgb, scale))
    for mask, pasted in sorted(masks, key=lambda m: m[1]):
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        pts = [np.round((c.astype(np.float32) + 0.5) * scale - 0.5).astype(np.int32) for c in contours]
        cv2.polylines(small, pts, True, (0, 0, 0), 4, cv2.LINE_AA)
        cv2.polylines(small, pts, True, PASTED_RGB if pasted else ORIGINAL_RGB, 2, cv2.LINE_AA)
    return small
