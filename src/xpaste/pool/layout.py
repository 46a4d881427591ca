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

Damage is refused when a pool is opened, never read as an empty pool (`list_parts`, `check_shard_sizes`): a
missing manifest while index parts (or data bytes) exist, a listed part that is missing, a data shard missing
or shorter than its rows need. `xpaste pool repair` (`xpaste.pool.repair`) rebuilds the manifest.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np

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


def repair_command(root: str | Path, *extra: str) -> str:
    """The command line that rebuilds a pool's manifest from its intact index parts (`xpaste pool repair`)."""
    return " ".join(shlex.quote(str(w)) for w in ("xpaste", "pool", "repair", root, *extra))


def list_parts(root: Path, version: int, interrupted: bool = False) -> list[Path]:
    """The index part files of a pool, in row order (v2: from the manifest; v1: by name).

    Version 2 without a manifest is an empty pool only when index/ holds no part file and data/ no bytes (a
    new pool); otherwise the manifest was lost, and the pool is damaged, never read as empty: XPasteError
    naming what is there and the `xpaste pool repair` to run. `interrupted` (a writer resuming a write that
    crashed before its first manifest, pool.json `incomplete`): those leftovers are ignored, as unlisted files
    always are. Raises XPasteError naming the manifest when its field 'parts' is not a list of
    part-NNNNNN.parquet names (or the manifest is not valid json), and naming the first listed part that is
    missing."""
    if version == 1:
        return sorted((root / INDEX_DIR).glob(PART_GLOB))
    path = root / INDEX_DIR / MANIFEST
    if not path.exists():
        if interrupted:
            return []
        found = sorted(p for p in (root / INDEX_DIR).glob(PART_GLOB) if PART_NAME.fullmatch(p.name))
        if found:
            names = ", ".join(p.name for p in found[:3]) + (f" (+{len(found) - 3} more)" if len(found) > 3 else "")
            raise XPasteError(f"the index manifest is missing but {INDEX_DIR}/ holds {len(found)} index part "
                              f"file(s) ({names}): the pool is damaged, not empty", path,
                              f"rebuild the manifest from the intact parts: {repair_command(root)}")
        data = sum(p.stat().st_size for p in (root / DATA_DIR).glob(SHARD_GLOB))
        if data:
            raise XPasteError(f"the pool index is missing ({INDEX_DIR}/ has no manifest and no part file) but "
                              f"{DATA_DIR}/ holds {data} bytes of cut-outs: the pool is damaged, not empty", path,
                              f"restore {INDEX_DIR}/ from a backup, or rebuild the pool (cut-outs cannot be "
                              "located without their index)")
        return []
    manifest = read_json(path)
    parts = manifest.get("parts") if isinstance(manifest, dict) else None
    if not isinstance(parts, list) or not all(isinstance(p, str) and PART_NAME.fullmatch(p) for p in parts):
        raise XPasteError("index manifest field 'parts' must be a list of part-NNNNNN.parquet names", path,
                          f"the pool index is damaged; rebuild the manifest: {repair_command(root)}")
    missing = [p for p in parts if not (root / INDEX_DIR / p).is_file()]
    if missing:
        raise XPasteError(f"index part {missing[0]} listed in {MANIFEST} is missing ({len(missing)} of "
                          f"{len(parts)} listed parts missing): the pool is damaged", root / INDEX_DIR / missing[0],
                          f"restore it from a backup, or keep the rows still readable: "
                          f"{repair_command(root, '--drop-damaged')}")
    return [root / INDEX_DIR / p for p in parts]


def check_shard_sizes(root: Path, shard: np.ndarray, offset: np.ndarray, nbytes: np.ndarray) -> None:
    """Raise XPasteError naming the first data shard that is missing or shorter than the index rows that
    point into it need (one `stat` per shard, no data read). Arrays: the index's int64 location columns."""
    if not len(shard):
        return
    # rows come in runs of one shard (the writer fills one shard at a time): reduce each run, then the few runs
    starts = np.concatenate(([0], np.flatnonzero(shard[1:] != shard[:-1]) + 1))
    run_need = np.maximum.reduceat(offset + nbytes, starts)
    run_rows = np.diff(np.append(starts, len(shard)))
    numbers, inverse = np.unique(shard[starts], return_inverse=True)
    need = np.zeros(len(numbers), np.int64)
    np.maximum.at(need, inverse, run_need)
    rows = np.bincount(inverse, weights=run_rows, minlength=len(numbers)).astype(np.int64)
    for number, needed, count in zip(numbers.tolist(), need.tolist(), rows.tolist()):
        path = root / shard_name(number)
        hint = ("restore it from a backup, or drop the rows it held: "
                f"{repair_command(root, '--drop-damaged')}")
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise XPasteError(f"data shard {shard_name(number)} is missing ({count} index rows point into it): "
                              "the pool is damaged", path, hint) from None
        if size < needed:
            raise XPasteError(f"data shard {shard_name(number)} is truncated: {size} bytes, the index needs "
                              f"{needed} ({count} rows point into it): the pool is damaged", path, hint)
