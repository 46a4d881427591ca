"""The one image reader of the package: files decoded as every viewer shows them (EXIF orientation applied).

Annotation tools, detectron2 (`detection_utils.read_image`), ultralytics (`exif_size` / `exif_transpose`)
and OpenCV's `cv2.imread` (IMREAD_COLOR honours the orientation tag) all give the *displayed* image, so
annotations made on a phone photo refer to the rotated pixels. Every reader here applies
`PIL.ImageOps.exif_transpose` (EXIF tag 0x0112, values 1..8 of the TIFF/EXIF 2.3 specification) after decoding,
and `image_size` gives the displayed (width, height) without decoding the pixels. Images xpaste writes are
encoded from the decoded arrays, so they are upright and carry no orientation tag.

Failures are one-line `XPasteError`s naming the file: missing, empty (0 bytes), undecodable or truncated files,
and images over `MAX_PIXELS` (a few KB of PNG can decode to gigabytes: the "decompression bomb" PIL guards
against; the header is checked before any pixel is decoded).

PIL is imported inside the functions so that `import xpaste` stays light.
"""
from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from xpaste.errors import XPasteError

# PIL raises DecompressionBombError above 2 * Image.MAX_IMAGE_PIXELS (2 * 89_478_485); the same limit here,
# checked on the header so the message is ours. Module attribute: raise it for genuine gigapixel images.
MAX_PIXELS = 178_956_970
ORIENTATION_TAG = 0x0112
# Orientations 5..8 transpose the image (width and height swap on display); 2, 3, 4 only flip/rotate 180.
_SWAPPING = (5, 6, 7, 8)


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise XPasteError("image file not found", path)
    if path.stat().st_size == 0:
        raise XPasteError("cannot decode image: the file is empty (0 bytes)", path)


def _orientation(im) -> int:
    """The EXIF orientation (1..8) of an open PIL image; 1 when absent or unreadable."""
    try:
        value = im.getexif().get(ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 - a damaged EXIF block: viewers show the stored pixels, so do we
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


@contextmanager
def _open_upright(path: str | os.PathLike, max_pixels: int | None) -> Iterator:
    """A fully decoded PIL image of `path`, EXIF orientation applied. Raises XPasteError naming the file."""
    from PIL import Image, ImageOps

    path = Path(path)
    _check_file(path)
    limit = MAX_PIXELS if max_pixels is None else int(max_pixels)
    try:
        with warnings.catch_warnings():
            # Palette images with byte transparency warn on conversion; the bomb warning is replaced by our
            # own check below.
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > limit:
                    raise XPasteError(f"image is {w}x{h} = {w * h} pixels, over the limit of {limit} "
                                      "(a decompression bomb?)", path,
                                      "raise xpaste.imageio.MAX_PIXELS if the image is genuine")
                im.load()  # a full decode here, so truncated files fail inside this try
                orientation = _orientation(im)
                if orientation != 1:
                    try:
                        im = ImageOps.exif_transpose(im)
                    except Exception:  # noqa: BLE001 - keep the stored pixels, as viewers do
                        pass
                yield im
    except XPasteError:
        raise
    except MemoryError:
        raise
    except Image.DecompressionBombError as e:
        raise XPasteError(f"image over PIL's pixel limit (a decompression bomb?): {e}", path) from None
    except Exception as e:  # PIL raises OSError, SyntaxError, EOFError, struct.error ... on corrupt files
        raise XPasteError(f"cannot decode image: {type(e).__name__}: {e}", path) from None


def _sixteen_bit_to_8(im) -> np.ndarray:
    """(H, W) uint8 of a 16-bit / 32-bit integer grayscale image, 0..65535 scaled (rounded) to 0..255.

    convert("L") would clip at 255 rather than scale; (2v + 257) // 514 == round(v / 257).
    """
    a = np.clip(np.asarray(im).astype(np.int64), 0, 65535)
    return ((2 * a + 257) // 514).astype(np.uint8)


def _to_rgb(im, background: tuple[int, int, int] | None) -> np.ndarray:
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        gray = _sixteen_bit_to_8(im)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "F":
        raise ValueError("floating-point images (mode F) have no defined 8-bit range")
    if background is not None and (mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info)):
        from PIL import Image

        im = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", im.size, (*background, 255)), im)
    if im.mode != "RGB":
        # Covers 1, L, LA, P, PA, RGBA (alpha dropped), CMYK, YCbCr, LAB, HSV.
        im = im.convert("RGB")
    return np.array(im, dtype=np.uint8)  # a writable copy: samples are edited in place by transforms


def read_rgb(path: str | os.PathLike, background: tuple[int, int, int] | None = None,
             max_pixels: int | None = None) -> np.ndarray:
    """Decode an image file into (H, W, 3) uint8 RGB, as displayed (EXIF orientation applied).

    H, W are the displayed height and width (swapped from the stored ones for orientations 5..8).
    Modes: 16-bit grayscale is scaled 0..65535 -> 0..255 (rounded); alpha is dropped, or composited over
    `background` (an RGB triple, e.g. (255, 255, 255) for product shots) when given; CMYK/P/L/1/LA are
    converted by PIL. `max_pixels` (default `MAX_PIXELS`) bounds width * height before decoding.
    Raises XPasteError naming the file: not found, empty, undecodable/truncated, over the pixel limit,
    floating-point (mode F) pixels.
    """
    with _open_upright(path, max_pixels) as im:
        try:
            arr = _to_rgb(im, background)
        except ValueError as e:
            raise XPasteError(f"cannot decode image: {e}", path) from None
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise XPasteError(f"cannot decode image: unexpected pixel array shape {arr.shape}", path)
    return arr


def read_rgba(path: str | os.PathLike, max_pixels: int | None = None) -> np.ndarray:
    """Decode an image file into (H, W, 4) uint8 RGBA as displayed; opaque images get alpha 255.

    Raises XPasteError as `read_rgb`.
    """
    with _open_upright(path, max_pixels) as im:
        if im.mode.startswith("I;16") or im.mode == "I":
            gray = _sixteen_bit_to_8(im)
            return np.dstack([gray, gray, gray, np.full_like(gray, 255)])
        return np.array(im.convert("RGBA"), dtype=np.uint8)


def read_gray(path: str | os.PathLike, max_pixels: int | None = None) -> np.ndarray:
    """Decode an image file into (H, W) uint8 luminance (PIL's "L": ITU-R 601-2 luma) as displayed.

    16-bit images are scaled to 0..255. Used for mask / alpha files. Raises XPasteError as `read_rgb`.
    """
    with _open_upright(path, max_pixels) as im:
        if im.mode.startswith("I;16") or im.mode == "I":
            return _sixteen_bit_to_8(im)
        return np.array(im.convert("L"), dtype=np.uint8)


def exif_orientation(path: str | os.PathLike) -> int:
    """The EXIF orientation tag (1..8) of an image file, 1 when it has none. Reads the header only.

    Raises XPasteError when the file is missing, empty or not an image.
    """
    from PIL import Image

    path = Path(path)
    _check_file(path)
    try:
        with Image.open(path) as im:
            return _orientation(im)
    except Exception as e:  # noqa: BLE001
        raise XPasteError(f"cannot decode image: {type(e).__name__}: {e}", path) from None


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """The displayed (width, height) of an image file in pixels, from its header (no pixel decoding).

    Equals `read_rgb(path).shape[1::-1]`: stored size, swapped for EXIF orientations 5..8.
    Raises XPasteError when the file is missing, empty or not an image.
    """
    from PIL import Image

    path = Path(path)
    _check_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                orientation = _orientation(im)
    except Exception as e:  # noqa: BLE001
        raise XPasteError(f"cannot decode image: {type(e).__name__}: {e}", path) from None
    return (h, w) if orientation in _SWAPPING else (w, h)
