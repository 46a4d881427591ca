"""Where everything lives in a pool folder: the file names, and the index columns that locate a cut-out's bytes.

The one home of the on-disk layout; the reader (`xpaste.pool.store`) and the writer (`xpaste.pool.writer`)
both take their names from here, and this module imports neither.

Version 2 (written by `xpaste.pool.writer.PoolWriter`):
    pool.json                         format, version 2, categories, config, codec (see xpaste.pool.header)
    index/manifest.json               {"parts": ["part-000000.parquet", ...]}: the index parts in order
    index/part-NNNNNN.parquet         index rows; numeric columns shard, offset, nbytes locate the pixels
    data/shard-NNNNNN.bin             cut-outs packed back to back: each one the C-order (h, w, 4) uint8
                                      RGBA bytes compressed with the header's codec (lz4_raw by default)
    index column `crc32`              zlib.crc32 of each row's stored bytes, checked on every read (~9 us for
                                      50 KiB), so damaged bytes that still decode are a CutoutError, never a
                                      silently different paste. Pools written before it (no column, or null
                                      values in rows appended to such a pool's older parts) read unchecked.

Version 1 (still read; `xpaste pool migrate` converts it): index/part-*.parquet found by glob (no manifest),
and one PNG per cut-out at instances/<category_id>/<instance_id>.png named by each row's `path`.

Part and shard numbers are never reused: a writer numbers a new file after the highest one present, listed or
not (an unlisted file is what a crash leaves behind).
"""
from __future__ import annotations

import re
from pathlib import Path

from xpaste.errors import XPasteError
from xpaste.io import read_json

HEADER = "pool.json"
INDEX_DIR = "index"
DATA_DIR = "data"
MANIFEST = "manifest.json"  # inside INDEX_DIR
PART_GLOB = "part-*.parquet"  # index parts, inside INDEX_DIR
SHARD_GLOB = "shard-*.bin"  # data shards, inside DATA_DIR
PART_NAME = re.compile(r"part-\d{6}\.parquet")
CHECKSUM = "crc32"  # optional index column (version 2): zlib.crc32 of the stored bytes; -1 (or absent) = unchecked
LOCATION_COLUMNS = ("shard", "offset", "nbytes", CHECKSUM)  # index columns set by the writer, never by a caller


def part_name(number: int) -> str:
    """File name (inside INDEX_DIR) of index part `number`: 'part-000012.parquet'."""
    return f"part-{int(number):06d}.parquet"


def shard_name(number: int) -> str:
    """Relative path of data shard `number` inside a version 2 pool: 'data/shard-000003.bin'."""
    return f"{DATA_DIR}/shard-{int(number):06d}.bin"


def file_number(path: str | Path) -> int:
    """The number of a part or shard file: 12 for 'part-000012.parquet' or 'data/shard-000012.bin'.

    Raises ValueError for a name without a number after its first '-'."""
    return int(Path(path).stem.split("-")[1])


def list_parts(root: Path, version: int) -> list[Path]:
    """The index part files of a pool, in row order (v2: from the manifest, [] when it has none yet; v1: by name).

    Raises XPasteError naming the manifest when its field 'parts' is not a list of part-NNNNNN.parquet names
    (or the manifest is not valid json)."""
    if version == 1:
        return sorted((root / INDEX_DIR).glob(PART_GLOB))
    path = root / INDEX_DIR / MANIFEST
    if not path.exists():
        return []
    manifest = read_json(path)
    parts = manifest.get("parts") if isinstance(manifest, dict) else None
    if not isinstance(parts, list) or not all(isinstance(p, str) and PART_NAME.fullmatch(p) for p in parts):
        raise XPasteError("index manifest field 'parts' must be a list of part-NNNNNN.parquet names", path,
                          "the pool index is damaged; rebuild the pool")
    return [root / INDEX_DIR / p for p in parts]
