"""The instance pool reader: RGBA cut-outs by category, served from disk with a bounded, thread-safe cache.

The folder layout (pool.json, index parts and manifest, data shards; version 1's one PNG per cut-out) is
described in `xpaste.pool.layout`, its one home; the header's fields in `xpaste.pool.header`. This module
only reads: `xpaste.pool.writer` imports it, never the other way round.

Opening reads only numeric index columns (1M rows: a few Parquet files, well under a second); pixels are read
with one `os.pread` per cut-out and decoded on demand (lz4_raw: ~20 us for a 170 px cut-out vs ~750 us PNG).
A cut-out that cannot be used raises `CutoutError`, is logged once, and is remembered in `bad_rows`; `sample`
never draws a row known to be bad.
"""
from __future__ import annotations

import logging
import os
import threading
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Any, ClassVar, Iterable, Sequence

import numpy as np

from xpaste.core.instance import RECORD_COLUMNS, content_hash, crop_to_alpha, validate_rgba
from xpaste.errors import XPasteError
from xpaste.io import resolve_inside
from xpaste.pool.codec import DEFAULT_MAX_CUTOUT_PIXELS, TOO_BIG_HINT, CutoutError, decode_png, decode_raw
from xpaste.pool.header import POOL_FORMAT, WRITE_VERSION, normalise_categories, read_header
# the layout's names are re-exported here, their home before xpaste.pool.layout existed
from xpaste.pool.layout import (CHECKSUM, DATA_DIR, HEADER, INDEX_DIR, MANIFEST, check_shard_sizes, list_parts,
                                repair_command, shard_name)
from xpaste.pool.sampler import CategoryIndex, sample_rows

__all__ = ["InstancePool", "CutoutError", "DEFAULT_CACHE_BYTES", "DEFAULT_MAX_CUTOUT_PIXELS", "POOL_FORMAT",
           "HEADER", "INDEX_DIR", "DATA_DIR", "MANIFEST", "list_parts", "shard_name"]

log = logging.getLogger("xpaste.pool")
POOL_VERSION = WRITE_VERSION  # kept for callers of the old name
DEFAULT_CACHE_BYTES = 256 * 2**20
NUMERIC = {1: ["category_id", "width", "height"], 2: ["category_id", "width", "height", "shard", "offset", "nbytes"]}


class _ByteLRU:
    """A bounded cache of decoded cut-outs, safe to share between threads (per process: every DataLoader
    worker has its own). `bytes` always equals the sum of `nbytes` of the arrays in `items`."""

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self.items: OrderedDict[int, np.ndarray] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: int) -> np.ndarray | None:
        with self.lock:
            value = self.items.get(key)
            if value is not None:
                self.items.move_to_end(key)
            return value

    def put(self, key: int, value: np.ndarray) -> None:
        if value.nbytes > self.max_bytes:
            return
        with self.lock:
            old = self.items.pop(key, None)  # two threads that missed on one key: count it once
            if old is not None:
                self.bytes -= old.nbytes
            self.items[key] = value
            self.bytes += value.nbytes
            while self.bytes > self.max_bytes and self.items:
                _, dropped = self.items.popitem(last=False)
                self.bytes -= dropped.nbytes

    def __getstate__(self) -> dict:
        return {"max_bytes": self.max_bytes}  # a copy (another process) starts empty

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["max_bytes"])


class _Storage:
    """Row-level data shared by a pool and its remapped views: sizes, pixel locations, cache, bad rows."""

    def __init__(self, root: Path | None, version: int, codec: str | None, columns: dict[str, np.ndarray],
                 parts: list[Path], arrays: list[np.ndarray] | None, cache_bytes: int, max_pixels: int):
        self.root, self.version, self.codec, self.parts = root, version, codec, parts
        self.arrays = arrays
        self.widths = np.asarray(columns["width"], dtype=np.int64)
        self.heights = np.asarray(columns["height"], dtype=np.int64)
        self.shard = np.asarray(columns.get("shard", np.zeros(0)), dtype=np.int64)
        self.offset = np.asarray(columns.get("offset", np.zeros(0)), dtype=np.int64)
        self.nbytes = np.asarray(columns.get("nbytes", np.zeros(0)), dtype=np.int64)
        crc = columns.get(CHECKSUM)
        self.crc = None if crc is None or not (np.asarray(crc) >= 0).any() else np.asarray(crc, dtype=np.int64)
        self.strings: dict[str, np.ndarray] = {k: np.asarray(columns[k], object) for k in ("instance_id", "path")
                                               if columns.get(k) is not None}
        self.cache = _ByteLRU(cache_bytes)
        self.max_pixels = int(max_pixels)
        self.bad_rows: set[int] = set()
        self.bad_reasons: dict[int, tuple] = {}  # (message, path, hint) of each bad row's first error, raised again
        self.lock = threading.Lock()
        self._fds: dict[int, int] = {}

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.update(_fds={}, lock=None, cache=_ByteLRU(self.cache.max_bytes))
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.lock = threading.Lock()

    def string_column(self, name: str) -> np.ndarray:
        values = self.strings.get(name)
        if values is None:
            values = _read_string_column(self.root, self.parts, name, len(self.widths))
            self.strings[name] = values
        return values

    def _fd(self, shard: int) -> int:
        with self.lock:
            fd = self._fds.get(shard)
            if fd is None:
                path = self.root / shard_name(shard)
                try:
                    fd = os.open(path, os.O_RDONLY)
                except FileNotFoundError:
                    raise CutoutError("pool file is missing", path,
                                      "the pool folder is incomplete; rebuild or re-import it") from None
                except OSError as e:
                    raise CutoutError(f"pool data file cannot be read: {e.strerror}", path) from None
                if hasattr(os, "posix_fadvise"):  # cut-outs are read in random order: no read-ahead (~12% faster
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # first reads of a pool bigger than RAM)
                self._fds[shard] = fd
            return fd

    def _load(self, row: int) -> np.ndarray:
        height, width = int(self.heights[row]), int(self.widths[row])
        if self.version == 1:
            where = resolve_inside(self.root, self.string_column("path")[row], "pool index path")
        else:
            where = self.root / shard_name(self.shard[row])
        if height * width > self.max_pixels:
            raise CutoutError(f"cut-out is {width}x{height} px, over the limit of {self.max_pixels} pixels", where,
                              TOO_BIG_HINT)
        if self.version == 1:
            rgba = decode_png(where, self.max_pixels)
            if rgba.shape != (height, width, 4):
                raise CutoutError(f"cut-out is {rgba.shape[1]}x{rgba.shape[0]}, the index says {width}x{height}", where)
            rgba.setflags(write=False)
            return rgba
        nbytes, offset = int(self.nbytes[row]), int(self.offset[row])
        try:
            blob = os.pread(self._fd(int(self.shard[row])), nbytes, offset)
        except OSError as e:
            raise CutoutError(f"pool data cannot be read: {e.strerror}", where) from None
        if len(blob) != nbytes:
            raise CutoutError(f"pool data file is truncated (row {row} needs bytes {offset}..{offset + nbytes})", where,
                              "the pool data is damaged; restore it from a backup or rebuild the pool")
        if self.crc is not None and self.crc[row] >= 0 and zlib.crc32(blob) != self.crc[row]:
            raise CutoutError(f"cut-out data of row {row} is damaged (checksum mismatch at bytes "
                              f"{offset}..{offset + nbytes})", where,
                              "the pool data is damaged; restore it from a backup or rebuild the pool")
        rgba = decode_raw(blob, height, width, self.codec, where)
        rgba.setflags(write=False)  # cached and shared: a caller must not change it
        return rgba

    def read(self, row: int) -> np.ndarray:
        if self.arrays is not None:
            return self.arrays[row]
        cached = self.cache.get(row)
        if cached is not None:
            return cached
        known = self.bad_reasons.get(row)
        if known is not None:  # the same error again (same message), not reported a second time
            raise CutoutError(*known)
        try:
            rgba = self._load(row)
        except CutoutError as e:
            with self.lock:
                first = row not in self.bad_rows
                self.bad_rows.add(row)
                self.bad_reasons.setdefault(row, (e.message, e.path, e.hint))
            if first:
                log.warning("skipped pool row %d: %s", row, e)
            raise
        self.cache.put(row, rgba)
        return rgba

    def close(self) -> None:
        with self.lock:
            fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)

    def __del__(self) -> None:
        for fd in getattr(self, "_fds", {}).values():
            try:
                os.close(fd)
            except OSError:
                pass


def _read_string_column(root: Path | None, parts: list[Path], name: str, n_rows: int) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not parts:
        return np.zeros(0, dtype=object)
    try:
        chunks = [pq.read_table(p, columns=[name]).column(name) for p in parts]
    except (OSError, pa.ArrowException) as e:
        raise XPasteError(f"index changed while the pool was open: {e}", root, "open it again") from None
    values = pa.chunked_array([c for chunk in chunks for c in chunk.chunks], type=pa.string())
    if len(values) != n_rows:
        raise XPasteError("index shards changed while the pool was open", root, "open it again")
    return values.to_numpy(zero_copy_only=False)


class InstancePool:
    """RGBA cut-outs by category (read-only). Use `open` or `from_arrays`; write with `PoolWriter`.

    Attributes: `categories` {id: name}; `category_ids`, `widths`, `heights` (N,) int64 per row; `instance_ids`
    (N,) object str (content hashes, loaded on first use); `bad_rows` set of rows found unusable. Safe to
    share between threads; pickles with an empty cache (one per DataLoader worker).
    """

    #: The class `create` and `open(writable=True)` return: `xpaste.pool.writer.PoolWriter`, bound by the package
    #: `xpaste.pool` (imported before any of its modules), so that this reader never imports its writer.
    writer_class: ClassVar[Any] = None

    def __init__(self, storage: _Storage, header: dict, category_ids: np.ndarray,
                 categories: dict[int, str] | None = None, keep: np.ndarray | None = None):
        self._storage = storage
        self.header = header
        self.root = storage.root
        self.categories: dict[int, str] = (dict(categories) if categories is not None else
                                           {int(c["id"]): c["name"] for c in header.get("categories", [])})
        self.category_ids = np.asarray(category_ids, dtype=np.int64)
        self._keep = keep
        self._index_bad = 0
        self.index = CategoryIndex.build(self.category_ids, keep)

    # ----------------------------------------------------------------- constructors
    @classmethod
    def from_arrays(cls, rgba_list: Sequence[np.ndarray], category_ids: Sequence[int],
                    categories: dict[int, str] | Iterable[dict] | None = None) -> InstancePool:
        """An in-memory pool (tests, benchmarks). Cut-outs are cropped to their alpha box."""
        if len(rgba_list) != len(category_ids):
            raise ValueError(f"{len(rgba_list)} cut-outs but {len(category_ids)} category ids")
        arrays = [np.ascontiguousarray(crop_to_alpha(validate_rgba(a, f"cut-out {i}")))
                  for i, a in enumerate(rgba_list)]
        cats = normalise_categories(categories) or [{"id": int(c), "name": str(c)} for c in sorted(set(category_ids))]
        columns = {"instance_id": [content_hash(a) for a in arrays], "path": [""] * len(arrays),
                   "width": [a.shape[1] for a in arrays], "height": [a.shape[0] for a in arrays]}
        header = {"format": POOL_FORMAT, "version": WRITE_VERSION, "categories": cats, "config": {}}
        storage = _Storage(None, 0, None, columns, [], arrays, 0, DEFAULT_MAX_CUTOUT_PIXELS)
        pool = cls(storage, header, np.asarray([int(c) for c in category_ids], dtype=np.int64))
        unknown = set(pool.category_ids.tolist()) - set(pool.categories)
        if unknown:
            raise ValueError(f"category ids {sorted(unknown)} are not in the categories given")
        return pool

    @classmethod
    def create(cls, path: str | os.PathLike, categories: Iterable[dict] | dict[int, str],
               config: dict | None = None, exist_ok: bool = False, **kwargs: Any):
        """Same as `PoolWriter.create` (returns a PoolWriter); kept for existing callers."""
        return cls.writer_class.create(path, categories, config=config, exist_ok=exist_ok, **kwargs)

    @classmethod
    def open(cls, path: str | os.PathLike, cache_bytes: int = DEFAULT_CACHE_BYTES, writable: bool = False,
             max_cutout_pixels: int = DEFAULT_MAX_CUTOUT_PIXELS) -> InstancePool:
        """Open a pool folder (version 1 or 2) lazily: numeric index columns now, pixels on demand.

        `cache_bytes`: decoded cut-outs kept per process. `max_cutout_pixels`: larger cut-outs raise CutoutError.
        `writable=True` returns a `PoolWriter` for appending (old callers). Raises XPasteError for a missing,
        damaged or mistyped header or index (one line naming the file and field).
        """
        if writable:
            return cls.writer_class.open(path)
        import pyarrow as pa
        import pyarrow.parquet as pq

        root = Path(path)
        header = read_header(root)
        version = header["version"]
        # a write that crashed before its first manifest left files that are ignored, as unlisted files always are
        parts = list_parts(root, version, interrupted=header.get("incomplete") is not None)
        numeric = NUMERIC[version]
        tables, checksums = [], []
        for part in parts:
            try:
                index_file = pq.ParquetFile(part)
                with_crc = version == 2 and CHECKSUM in index_file.schema_arrow.names
                table = index_file.read(columns=numeric + [CHECKSUM] * with_crc)
                checksums.append(table.column(CHECKSUM).fill_null(-1).to_numpy().astype(np.int64) if with_crc
                                 else np.full(table.num_rows, -1, np.int64))
                tables.append(table.select(numeric))
            except Exception as e:  # noqa: BLE001 - any Arrow error (or a missing file) means a damaged index
                why = " ".join(str(e).split())
                hint = ("restore it from a backup, or keep the rows still readable: "
                        f"{repair_command(root, '--drop-damaged')}" if version == 2 else "rebuild the pool")
                raise XPasteError(f"unreadable index part {INDEX_DIR}/{part.name} (truncated or damaged: {why})", part,
                                  hint) from None
        if tables:
            table = pa.concat_tables(tables, promote_options="default")
            nulls = [k for k in numeric if table.column(k).null_count]
            if nulls:
                raise XPasteError(f"index columns {nulls} have empty values", root / INDEX_DIR,
                                  "the pool index is damaged; rebuild it")
            try:
                columns = {k: table.column(k).to_numpy().astype(np.int64, copy=False) for k in numeric}
            except (pa.ArrowException, ValueError, TypeError) as e:
                raise XPasteError(f"index columns {numeric} must be integers without nulls: {e}", root / INDEX_DIR) from None
            if version == 2:
                columns[CHECKSUM] = np.concatenate(checksums)
                check_shard_sizes(root, columns["shard"], columns["offset"], columns["nbytes"])
        else:
            columns = {k: np.zeros(0, np.int64) for k in numeric}
            columns.update(instance_id=np.zeros(0, object), path=np.zeros(0, object))
        if len(columns["width"]) and (columns["width"].min() < 1 or columns["height"].min() < 1):
            raise XPasteError("index lists a cut-out with a non-positive width or height", root / INDEX_DIR)
        storage = _Storage(root, version, header.get("codec"), columns, parts, None, cache_bytes, max_cutout_pixels)
        pool = cls(storage, header, columns["category_id"])
        unknown = set(pool.index.categories.tolist()) - set(pool.categories)
        if unknown:
            raise XPasteError(f"index lists category ids {sorted(unknown)[:10]} missing from pool.json", root / HEADER)
        return pool

    def remap_categories(self, mapping: dict[int, int], categories: dict[int, str] | None = None) -> InstancePool:
        """A view of this pool whose rows carry `mapping[pool category id]` (e.g. a dataset's ids, see
        `xpaste.pool.categories.match_categories`); rows of unmapped categories are never sampled. Pixels,
        cache and bad rows are shared with this pool. `categories`: names of the new ids (default: the pool's)."""
        table = {int(k): int(v) for k, v in mapping.items()}
        ids = np.array([table.get(int(c), -1) for c in self.category_ids.tolist()], dtype=np.int64)
        keep = ids >= 0 if self._keep is None else (ids >= 0) & self._keep
        if categories is None:
            categories = {table[c]: n for c, n in self.categories.items() if c in table}
        return InstancePool(self._storage, self.header, ids, categories, keep)

    # ----------------------------------------------------------------- reading
    @property
    def widths(self) -> np.ndarray:
        return self._storage.widths

    @property
    def heights(self) -> np.ndarray:
        return self._storage.heights

    @property
    def instance_ids(self) -> np.ndarray:
        return self._storage.string_column("instance_id")

    @property
    def paths(self) -> np.ndarray:
        """Per row, the file holding its pixels, relative to the pool folder (v1: its PNG; v2: its data shard)."""
        if self._storage.version == 2 and "path" not in self._storage.strings:
            self._storage.strings["path"] = np.array([shard_name(s) for s in self._storage.shard.tolist()], object)
        return self._storage.string_column("path")

    @property
    def version(self) -> int:
        """On-disk format version (1 or 2; 0 for an in-memory pool)."""
        return self._storage.version

    @property
    def bad_rows(self) -> set[int]:
        """Rows whose cut-out could not be used (each reported once in the log); `sample` avoids them."""
        return self._storage.bad_rows

    @property
    def incomplete(self) -> dict | None:
        """Set when a write to this pool was interrupted (or is in progress): {"since": ..., "by": ...}."""
        return self.header.get("incomplete")

    @property
    def _cache(self) -> _ByteLRU:
        return self._storage.cache

    def __len__(self) -> int:
        return len(self.category_ids)

    def __repr__(self) -> str:
        where = self.root if self.root else "memory"
        return f"InstancePool({where}, {len(self)} instances, {len(self.index.categories)} categories)"

    def rgba(self, row: int) -> np.ndarray:
        """The (h, w, 4) uint8 RGBA cut-out of pool row `row` (read-only, cached). Raises CutoutError for a
        missing, damaged, wrongly sized or oversized cut-out (reported once; the row joins `bad_rows`)."""
        return self._storage.read(int(row))

    def rows_of(self, category_id: int) -> np.ndarray:
        return self._current_index().rows_of(category_id)

    def counts(self) -> dict[int, int]:
        index = self._current_index()
        return {int(c): int(n) for c, n in zip(index.categories, index.counts)}

    def _current_index(self) -> CategoryIndex:
        bad = self._storage.bad_rows
        if len(bad) != self._index_bad:  # rebuilt only when a new bad row was found (rare)
            keep = np.ones(len(self), bool) if self._keep is None else self._keep.copy()
            keep[np.fromiter(bad, np.int64, len(bad))] = False
            self._index_bad = len(bad)
            self.index = CategoryIndex.build(self.category_ids, keep)
        return self.index

    def sample(self, rng: np.random.Generator, n: int, mode: str = "balanced",
               present: np.ndarray | None = None, weights: dict[int, float] | None = None) -> np.ndarray:
        """Draw `n` rows (int64) with `xpaste.pool.sampler.sample_rows`, never a row in `bad_rows`."""
        return sample_rows(self._current_index(), rng, n, mode, present, weights)

    def records(self) -> Any:
        """The full index (all columns) as a pyarrow Table; in-memory pools give the core columns."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.root is None:
            return pa.table({"instance_id": list(self.instance_ids), "category_id": self.category_ids,
                             "path": list(self._storage.string_column("path")), "width": self.widths,
                             "height": self.heights})
        if not self._storage.parts:
            return pa.table({k: pa.array([], type=pa.string() if t is str else pa.int64() if t is int else pa.float64())
                             for k, t in RECORD_COLUMNS.items()})
        tables = []
        for part in self._storage.parts:
            try:  # open() read the numeric columns only: damage in another column's pages shows here
                tables.append(pq.read_table(part))
            except (OSError, pa.ArrowException) as e:
                why = " ".join(str(e).split())
                raise XPasteError(f"unreadable index part {INDEX_DIR}/{part.name} (truncated or damaged: {why})",
                                  part, "restore it from a backup, or keep the rows still readable: "
                                  f"{repair_command(self.root, '--drop-damaged')}" if self._storage.version == 2
                                  else "rebuild the pool") from None
        return pa.concat_tables(tables, promote_options="default")

    def add(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("this pool is read-only; use xpaste.pool.writer.PoolWriter (or InstancePool.create) to write")

    def close(self) -> None:
        """Close open data files (reopened on the next read)."""
        self._storage.close()

    def __enter__(self) -> InstancePool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
