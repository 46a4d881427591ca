"""The one image reader of the package: files decoded as every viewer shows them (EXIF orientation applied).

Annotation tools, detectron2 (`detection_utils.read_image`), ultralytics (`exif_size` / `exif_transpose`)
and OpenCV's `cv2.imread` (IMREAD_COLOR honours the orientation tag) all give the *displayed* image, so
annotations made on a phone photo refer to the rotated pixels. Every reader of photos here applies
`PIL.ImageOps.exif_transpose` (EXIF tag 0x0112, values 1..8 of the TIFF/EXIF 2.3 specification) after decoding,
and `image_size` gives the displayed (width, height) without decoding the pixels. Images xpaste writes are
encoded from the decoded arrays (`xpaste.io.encode_image`), so they are upright and carry no orientation tag.

Three readers serve files xpaste writes itself or checks before storing them, and say so:
- `read_mask` (a stage's mask PNG) decodes with OpenCV's IMREAD_GRAYSCALE (fast; OpenCV applies an EXIF
  orientation tag, as PIL's `exif_transpose` would, and xpaste's own masks carry none);
- `decode_rgba_bytes` (a version 1 pool cut-out PNG) decodes with OpenCV's IMREAD_UNCHANGED: the stored
  pixels, no orientation applied, BGRA swapped to RGBA (~3x faster than PIL on a cut-out);
- `image_header` and `decode_first_frame` (downloaded bytes, checked before they are stored as they came)
  give the *stored* size and pixels: the file keeps its tag, and the readers above apply it when it is read.

Failures are one-line `XPasteError`s naming the file: missing, empty (0 bytes), undecodable or truncated files,
and images over `MAX_PIXELS` (a few KB of PNG can decode to gigabytes: the "decompression bomb" PIL guards
against; the header is checked before any pixel is decoded).

PIL and OpenCV are imported inside the functions so that `import xpaste` stays light.
"""
from __future__ import annotations

import io
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
# The message of every decoding failure starts with this (then the decoder's error type and text).
DECODE_FAILED = "cannot decode image"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise XPasteError("image file not found", path)
    if path.stat().st_size == 0:
        raise XPasteError(f"{DECODE_FAILED}: the file is empty (0 bytes)", path)


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
        raise XPasteError(f"{DECODE_FAILED}: {type(e).__name__}: {e}", path) from None


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
            raise XPasteError(f"{DECODE_FAILED}: {e}", path) from None
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise XPasteError(f"{DECODE_FAILED}: unexpected pixel array shape {arr.shape}", path)
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
        raise XPasteError(f"{DECODE_FAILED}: {type(e).__name__}: {e}", path) from None


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
        raise XPasteError(f"{DECODE_FAILED}: {type(e).__name__}: {e}", path) from None
    return (h, w) if orientation in _SWAPPING else (w, h)


# ----------------------------------------------------------------------------- files xpaste writes or checks
def png_size(data: bytes | np.ndarray) -> tuple[int, int] | None:
    """(height, width) from the IHDR chunk of PNG bytes (a bytes object or a 1-D uint8 array), None when they are
    not a PNG. Reads 24 bytes, no pixels: a decompression bomb is refused before it is decoded."""
    head = data[:24].tobytes() if isinstance(data, np.ndarray) else bytes(data[:24])
    if len(head) < 24 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        return None
    return int.from_bytes(head[20:24], "big"), int.from_bytes(head[16:20], "big")


def read_mask(path: str | os.PathLike, max_pixels: int | None = None) -> np.ndarray:
    """Decode a mask file (a stage's soft mask PNG) into (H, W) uint8 with OpenCV's IMREAD_GRAYSCALE.

    8-bit grayscale files give their stored values; colour files OpenCV's luma; an EXIF orientation tag is
    applied by OpenCV (xpaste's own masks carry none). A PNG over `max_pixels` (default `MAX_PIXELS`) is refused
    from its header. Raises XPasteError naming the file: not found, empty, over the pixel limit, undecodable.
    """
    import cv2

    path = Path(path)
    _check_file(path)
    data = np.fromfile(path, np.uint8)
    _check_png_pixels(data, path, max_pixels)
    mask = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise XPasteError(f"{DECODE_FAILED}: OpenCV cannot decode it", path)
    return mask


def _check_png_pixels(data: np.ndarray, path: Path | None, max_pixels: int | None) -> None:
    size = png_size(data)
    limit = MAX_PIXELS if max_pixels is None else int(max_pixels)
    if size is not None and size[0] * size[1] > limit:
        raise XPasteError(f"image is {size[1]}x{size[0]} = {size[0] * size[1]} pixels, over the limit of {limit} "
                          "(a decompression bomb?)", path, "raise xpaste.imageio.MAX_PIXELS if the image is genuine")


def decode_rgba_bytes(data: np.ndarray) -> np.ndarray | None:
    """(H, W, 4) uint8 RGBA of an encoded 8-bit, 4-channel image in memory (a version 1 pool cut-out PNG, as a 1-D
    uint8 array): the stored pixels (OpenCV's IMREAD_UNCHANGED applies no EXIF orientation), BGRA swapped to RGBA.

    None when the bytes do not decode, or decode to something other than 8-bit with 4 channels. Bounds its input
    with `png_size` first: it checks no pixel limit itself (the pool has its own, `max_cutout_pixels`).
    """
    import cv2

    bgra = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if bgra is None or bgra.ndim != 3 or bgra.shape[2] != 4 or bgra.dtype != np.uint8:
        return None
    return cv2.cvtColor(bgra, cv2.COLOR_BGRA2RGBA)


def image_header(source: str | os.PathLike | bytes, verify: bool = False) -> tuple[str, int, int]:
    """(format, width, height) of an image file or of encoded bytes, from the header (no pixel decoding).

    format: PIL's name ('JPEG', 'PNG', 'GIF', 'WEBP', 'MPO', ...); width, height: as *stored*, before any EXIF
    orientation (`image_size` gives the displayed size). verify: first run PIL's structural check (`verify`:
    PNG chunk checksums and the like). Raises XPasteError (naming the file, for a path) when the source is
    missing, empty or not an image, or fails the check; its message starts with `DECODE_FAILED`.
    """
    from PIL import Image

    path = None if isinstance(source, (bytes, bytearray, memoryview)) else Path(source)
    if path is not None:
        _check_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            if verify:
                with Image.open(path or io.BytesIO(source)) as im:
                    im.verify()  # the image must be opened again afterwards
            with Image.open(path or io.BytesIO(source)) as im:
                return im.format, *im.size
    except Exception as e:  # noqa: BLE001 - PIL raises many types for bad data
        raise XPasteError(f"{DECODE_FAILED}: {type(e).__name__}: {e}", path) from None


def decode_first_frame(data: bytes, max_pixels: int | None = None, convert: bool = True) -> np.ndarray | None:
    """Decode every pixel of the first frame of encoded image bytes (catches truncated data that the header and
    `image_header(verify=True)` let through), as stored: no EXIF orientation applied.

    convert: return the frame as (H, W, 3) uint8 RGB, or (H, W, 4) uint8 RGBA when it has an alpha band or
    transparency (PIL's conversion); False: decode only and return None. `max_pixels` (default `MAX_PIXELS`)
    bounds width * height before decoding. Raises XPasteError (message starting with `DECODE_FAILED`, or over
    the pixel limit) when the bytes are not a whole image.
    """
    from PIL import Image

    limit = MAX_PIXELS if max_pixels is None else int(max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # palette transparency on conversion
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit, checked below
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
                if w * h > limit:
                    raise XPasteError(f"image is {w}x{h} = {w * h} pixels, over the limit of {limit} "
                                      "(a decompression bomb?)")
                im.load()
                if not convert:
                    return None
                return np.array(im.convert("RGBA" if "A" in im.getbands() or "transparency" in im.info else "RGB"),
                                dtype=np.uint8)
    except XPasteError:
        raise
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - PIL raises many types for bad data
        raise XPasteError(f"{DECODE_FAILED}: {type(e).__name__}: {e}") from None
