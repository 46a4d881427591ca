"""Encoding and decoding of pool cut-outs: packed raw RGBA (version 2) and one PNG per cut-out (version 1).

Every decoder checks what it returns against the index row (height, width, 4 channels, uint8) and against
the pixel limit, and raises `CutoutError` otherwise, so a damaged cut-out is one skipped object, not a crash
or a silently different paste.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from xpaste.errors import XPasteError
from xpaste.imageio import decode_rgba_bytes, png_size
from xpaste.io import encode_image

# Largest cut-out read, in pixels (height * width). 4096 x 4096 RGBA is 64 MiB decoded; a larger one is a
# damaged index row or a decompression bomb, never a useful paste (pastes are scaled to the destination).
DEFAULT_MAX_CUTOUT_PIXELS = 4096 * 4096
TOO_BIG_HINT = ("a damaged index row or an oversized cut-out; it is skipped. To paste it anyway, open the pool "
                "from Python with InstancePool.open(path, max_cutout_pixels=N) (no CLI option raises the limit)")


class CutoutError(XPasteError):
    """One pool cut-out cannot be used (missing, unreadable, not RGBA, not the indexed size, or too large).

    Paste code catches it and skips that one object; the pool remembers the row in `InstancePool.bad_rows`.
    """


_BLOB_HEADER = 8  # uint32 little-endian height, then width: checked against the index row on every read


def encode_raw(rgba: np.ndarray, codec: str) -> bytes:
    """An 8-byte size header (uint32 LE height, width) + the C-order bytes of an (h, w, 4) uint8 array
    compressed with `codec` (see header.CODECS)."""
    rgba = np.ascontiguousarray(rgba, dtype=np.uint8)
    head = np.array(rgba.shape[:2], dtype="<u4").tobytes()
    data = rgba.tobytes()
    if codec == "raw":
        return head + data
    import pyarrow as pa

    return head + pa.Codec(codec).compress(data, asbytes=True)


def decode_raw(blob: bytes, height: int, width: int, codec: str, where: str | os.PathLike) -> np.ndarray:
    """The (height, width, 4) uint8 array of a blob written by `encode_raw`. Raises CutoutError when the blob's
    size header disagrees with the index row or the codec finds the data damaged."""
    if len(blob) < _BLOB_HEADER:
        raise CutoutError(f"cut-out data is {len(blob)} bytes, too short", where)
    stored = tuple(int(v) for v in np.frombuffer(blob[:_BLOB_HEADER], dtype="<u4"))
    if stored != (int(height), int(width)):
        raise CutoutError(f"cut-out data is {stored[1]}x{stored[0]}, the index says {width}x{height}", where)
    size = int(height) * int(width) * 4
    payload = memoryview(blob)[_BLOB_HEADER:]
    if codec == "raw":
        data = payload
    else:
        import pyarrow as pa

        try:
            data = pa.decompress(payload, decompressed_size=size, codec=codec)
        except (OSError, ValueError, pa.ArrowException) as e:
            raise CutoutError(f"cut-out data is damaged ({codec}: {e})", where) from None
    if len(data) != size:
        raise CutoutError(f"cut-out data holds {len(data)} bytes, the index says {height}x{width}x4", where)
    return np.frombuffer(data, np.uint8).reshape(int(height), int(width), 4)


def encode_png(rgba: np.ndarray, level: int = 3) -> bytes:
    """PNG bytes of an (h, w, 4) uint8 RGBA array (for version 1 pools and `xpaste pool export-png`), with
    `xpaste.io.encode_image` at zlib `level`. Raises ValueError for another shape or dtype."""
    return encode_image(rgba, ".png", png_compression=level)


def decode_png(path: Path, max_pixels: int = DEFAULT_MAX_CUTOUT_PIXELS) -> np.ndarray:
    """The (h, w, 4) uint8 RGBA array of a version 1 cut-out file (its stored pixels, see
    `xpaste.imageio.decode_rgba_bytes`). Raises CutoutError (missing, unreadable, not 8-bit RGBA, too big)."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise CutoutError("pool file is missing", path, "the pool folder is incomplete; rebuild or re-import it") from None
    except OSError as e:
        raise CutoutError(f"pool file cannot be read: {e.strerror or e}", path) from None
    size = png_size(data)  # checked before decoding, so a bomb is refused cheaply
    if size is None:
        raise CutoutError("pool file is not a readable RGBA PNG", path)
    if size[0] * size[1] > max_pixels:
        raise CutoutError(f"cut-out is {size[1]}x{size[0]} px, over the limit of {max_pixels} pixels", path,
                          TOO_BIG_HINT)
    rgba = decode_rgba_bytes(data)
    if rgba is None:
        raise CutoutError("pool file is not a readable 8-bit RGBA PNG", path)
    return rgba
