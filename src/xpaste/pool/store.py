"""The instance pool: RGBA cut-outs on disk plus a Parquet index, append-only and atomic.

Layout of a pool folder:
    pool.json                          format, version, categories, creation config
    index/part-000000.parquet ...      index shards; one shard per flush, each written atomically
    instances/<category_id>/<instance_id>.png

A PNG is written (atomically) before the shard that lists it, so a crash can leave an unlisted PNG (harmless,
rewritten identically on retry) but never an index row without its file. Instance ids are content hashes, so
adding the same cut-out twice stores it once.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from xpaste._version import __version__
from xpaste.core.instance import RECORD_COLUMNS, content_hash, crop_to_alpha, validate_rgba
from xpaste.errors import XPasteError
from xpaste.io import read_json, resolve_inside, write_bytes_atomic, write_json_atomic
from xpaste.pool.sampler import CategoryIndex, sample_rows

POOL_FORMAT = "xpaste-pool"
POOL_VERSION = 1
HEADER = "pool.json"
INDEX_DIR = "index"
# The core index columns (numeric ones are read at open; instance_id and path on first use).
CORE_COLUMNS = ["instance_id", "category_id", "path", "width", "height"]


class _ByteLRU:
    """A bounded cache of decoded cut-outs (per process: every DataLoader worker has its own)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.bytes = 0
        self.items: OrderedDict[int, np.ndarray] = OrderedDict()

    def get(self, key: int) -> np.ndarray | None:
        value = self.items.get(key)
        if value is not None:
            self.items.move_to_end(key)
        return value

    def put(self, key: int, value: np.ndarray) -> None:
        if value.nbytes > self.max_bytes:
            return
        self.items[key] = value
        self.bytes += value.nbytes
        while self.bytes > self.max_bytes:
            _, old = self.items.popitem(last=False)
            self.bytes -= old.nbytes


def _encode_png(rgba: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA), [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def _decode_png(path: Path) -> np.ndarray:
    import cv2

    data = np.fromfile(path, dtype=np.uint8) if path.exists() else None
    if data is None:
        raise XPasteError("pool file is missing", path, "the pool folder is incomplete; rebuild or re-import it")
    bgra = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if bgra is None or bgra.ndim != 3 or bgra.shape[2] != 4:
        raise XPasteError("pool file is not a readable RGBA PNG", path)
    return cv2.cvtColor(bgra, cv2.COLOR_BGRA2RGBA)


def _normalise_categories(categories: Iterable[dict] | dict[int, str] | None) -> list[dict]:
    if categories is None:
        return []
    if isinstance(categories, dict):
        categories = [{"id": int(k), "name": str(v)} for k, v in categories.items()]
    out, seen = [], set()
    for c in categories:
        cid = int(c["id"])
        if cid in seen:
            raise ValueError(f"duplicate category id {cid}")
        seen.add(cid)
        out.append({**c, "id": cid, "name": str(c.get("name", cid))})
    return out


class InstancePool:
    """RGBA cut-outs by category. Use `open`, `create` or `from_arrays`; never the constructor directly."""

    def __init__(self, root: Path | None, header: dict, columns: dict[str, np.ndarray],
                 arrays: list[np.ndarray] | None = None, cache_bytes: int = 256 * 2**20, writable: bool = False):
        self.root = root
        self.header = header
        self.categories: dict[int, str] = {int(c["id"]): c["name"] for c in header.get("categories", [])}
        self._arrays = arrays
        self._cache_bytes = cache_bytes
        self._cache = _ByteLRU(cache_bytes)
        self._writable = writable
        self._pending: list[dict] = []
        self._known_ids: set | None = None
        self._shards: list[Path] = []
        self._set_columns(columns)

    def _set_columns(self, columns: dict[str, np.ndarray]) -> None:
        # String columns may be absent (None): `open` defers them, since turning 1M Arrow strings into Python
        # objects is the slowest part of opening a big pool, and sampling never needs them.
        self._instance_ids = None if columns.get("instance_id") is None else np.asarray(columns["instance_id"], object)
        self._paths = None if columns.get("path") is None else np.asarray(columns["path"], object)
        self.category_ids = np.asarray(columns["category_id"], dtype=np.int64)
        self.widths = np.asarray(columns["width"], dtype=np.int64)
        self.heights = np.asarray(columns["height"], dtype=np.int64)
        self.index = CategoryIndex.build(self.category_ids)

    @property
    def instance_ids(self) -> np.ndarray:
        if self._instance_ids is None:
            self._instance_ids = self._read_string_column("instance_id")
        return self._instance_ids

    @property
    def paths(self) -> np.ndarray:
        if self._paths is None:
            self._paths = self._read_string_column("path")
        return self._paths

    def _read_string_column(self, name: str) -> np.ndarray:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self._shards:
            return np.zeros(0, dtype=object)
        chunks = [pq.read_table(s, columns=[name]).column(name) for s in self._shards]
        values = pa.chunked_array([c for chunk in chunks for c in chunk.chunks], type=pa.string())
        if len(values) != len(self.category_ids):
            raise XPasteError("index shards changed while the pool was open", self.root, "open it again")
        return values.to_numpy(zero_copy_only=False)

    def _known(self) -> set:
        """Ids already pooled, built on the first write only: reading a 1M-row pool does not need it."""
        if getattr(self, "_known_ids", None) is None:
            self._known_ids = set(self.instance_ids.tolist())
        return self._known_ids

    # ----------------------------------------------------------------- constructors
    @classmethod
    def from_arrays(cls, rgba_list: Sequence[np.ndarray], category_ids: Sequence[int],
                    categories: dict[int, str] | Iterable[dict] | None = None) -> InstancePool:
        """An in-memory pool (tests, benchmarks). Cut-outs are cropped to their alpha box."""
        if len(rgba_list) != len(category_ids):
            raise ValueError(f"{len(rgba_list)} cut-outs but {len(category_ids)} category ids")
        arrays = [np.ascontiguousarray(crop_to_alpha(validate_rgba(a, f"cut-out {i}")))
                  for i, a in enumerate(rgba_list)]
        cats = _normalise_categories(categories) or [{"id": int(c), "name": str(c)} for c in sorted(set(category_ids))]
        columns = {
            "instance_id": [content_hash(a) for a in arrays],
            "category_id": [int(c) for c in category_ids],
            "path": [""] * len(arrays),
            "width": [a.shape[1] for a in arrays],
            "height": [a.shape[0] for a in arrays],
        }
        header = {"format": POOL_FORMAT, "version": POOL_VERSION, "categories": cats, "config": {}}
        pool = cls(None, header, {k: np.asarray(v) if k != "instance_id" else v for k, v in columns.items()},
                   arrays=arrays)
        unknown = set(pool.category_ids.tolist()) - set(pool.categories)
        if unknown:
            raise ValueError(f"category ids {sorted(unknown)} are not in the categories given")
        return pool

    @classmethod
    def create(cls, path: str | os.PathLike, categories: Iterable[dict] | dict[int, str],
               config: dict | None = None, exist_ok: bool = False) -> InstancePool:
        """Create an empty pool folder (or, with exist_ok, open an existing one for appending)."""
        root = Path(path)
        if (root / HEADER).exists():
            if not exist_ok:
                raise XPasteError("a pool already exists here", root, "pass exist_ok / --append, or pick a new folder")
            pool = cls.open(root, writable=True)
            pool.add_categories(categories)
            return pool
        header = {"format": POOL_FORMAT, "version": POOL_VERSION, "categories": _normalise_categories(categories),
                  "config": config or {}, "created_by": f"xpaste {__version__}"}
        root.mkdir(parents=True, exist_ok=True)
        write_json_atomic(root / HEADER, header, indent=1)
        empty = {k: np.zeros(0, dtype=object if k in ("instance_id", "path") else np.int64) for k in CORE_COLUMNS}
        return cls(root, header, empty, writable=True)

    @classmethod
    def open(cls, path: str | os.PathLike, cache_bytes: int = 256 * 2**20, writable: bool = False) -> InstancePool:
        """Open a pool folder lazily: only the core index columns are read; pixels load on demand."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        root = Path(path)
        header = read_json(root / HEADER) if (root / HEADER).exists() else None
        if header is None:
            raise XPasteError("not an xpaste pool (no pool.json)", root, "create one with `xpaste build-pool` or `xpaste pool import-coco`")
        if not isinstance(header, dict) or header.get("format") != POOL_FORMAT:
            raise XPasteError("pool.json is not an xpaste pool header", root / HEADER)
        if int(header.get("version", 0)) > POOL_VERSION:
            raise XPasteError(f"pool format version {header.get('version')} is newer than this xpaste reads "
                              f"({POOL_VERSION})", root / HEADER, "upgrade xpaste")
        shards = sorted((root / INDEX_DIR).glob("part-*.parquet"))
        numeric = ["category_id", "width", "height"]
        tables = []
        for shard in shards:
            try:
                tables.append(pq.read_table(shard, columns=numeric))
            except Exception as e:  # noqa: BLE001 - any Arrow error means a damaged shard
                raise XPasteError(f"unreadable index shard: {e}", shard) from None
        if tables:
            table = pa.concat_tables(tables, promote_options="default")
            columns = {k: table.column(k).to_numpy() for k in numeric}
        else:
            columns = {k: np.zeros(0, np.int64) for k in numeric}
        columns.update(instance_id=None, path=None)
        pool = cls(root, header, columns, cache_bytes=cache_bytes, writable=writable)
        pool._shards = shards
        if not tables:
            pool._instance_ids = pool._paths = np.zeros(0, dtype=object)
        unknown = set(pool.index.categories.tolist()) - set(pool.categories)
        if unknown:
            raise XPasteError(f"index lists category ids {sorted(unknown)[:10]} missing from pool.json", root)
        return pool

    # ----------------------------------------------------------------- reading
    def __len__(self) -> int:
        return len(self.category_ids)

    def __repr__(self) -> str:
        where = self.root if self.root else "memory"
        return f"InstancePool({where}, {len(self)} instances, {len(self.index.categories)} categories)"

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_cache"] = _ByteLRU(self._cache_bytes)  # workers start with an empty cache
        if state["_pending"]:
            raise RuntimeError("flush() a pool before sending it to another process")
        return state

    def rgba(self, row: int) -> np.ndarray:
        """The RGBA cut-out of pool row `row` (read-only array, cached)."""
        if self._arrays is not None:
            return self._arrays[row]
        cached = self._cache.get(row)
        if cached is not None:
            return cached
        path = resolve_inside(self.root, self.paths[row], "pool index path")
        rgba = _decode_png(path)
        rgba.setflags(write=False)
        self._cache.put(row, rgba)
        return rgba

    def rows_of(self, category_id: int) -> np.ndarray:
        return self.index.rows_of(category_id)

    def counts(self) -> dict[int, int]:
        return {int(c): int(n) for c, n in zip(self.index.categories, self.index.counts)}

    def sample(self, rng: np.random.Generator, n: int, mode: str = "balanced",
               present: np.ndarray | None = None, weights: dict[int, float] | None = None) -> np.ndarray:
        return sample_rows(self.index, rng, n, mode, present, weights)

    def records(self) -> "Any":
        """The full index (all columns) as a pyarrow Table; in-memory pools give the core columns."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.root is None:
            return pa.table({"instance_id": list(self.instance_ids), "category_id": self.category_ids,
                             "path": list(self.paths), "width": self.widths, "height": self.heights})
        shards = sorted((self.root / INDEX_DIR).glob("part-*.parquet"))
        if not shards:
            return pa.table({k: pa.array([], type=pa.string() if t is str else pa.int64() if t is int else pa.float64())
                             for k, t in RECORD_COLUMNS.items()})
        return pa.concat_tables([pq.read_table(s) for s in shards], promote_options="default")

    # ----------------------------------------------------------------- writing
    def add_categories(self, categories: Iterable[dict] | dict[int, str]) -> None:
        self._require_writable()
        changed = False
        for c in _normalise_categories(categories):
            if c["id"] in self.categories:
                if self.categories[c["id"]] != c["name"]:
                    raise XPasteError(f"category {c['id']} is {self.categories[c['id']]!r} in the pool but "
                                      f"{c['name']!r} here", self.root)
                continue
            self.header["categories"].append(c)
            self.categories[c["id"]] = c["name"]
            changed = True
        if changed:
            write_json_atomic(self.root / HEADER, self.header, indent=1)

    def add(self, rgba: np.ndarray, category_id: int, crop: bool = True, **fields: Any) -> str | None:
        """Store one cut-out; returns its instance id, or None when the same pixels are already pooled.

        `fields` fill the record columns (source, model, prompt, seed, segmenter, clip_score, ...); unknown
        names become free score columns.
        """
        self._require_writable()
        category_id = int(category_id)
        if category_id not in self.categories:
            raise XPasteError(f"unknown category id {category_id}", self.root, "add it to the pool's categories first")
        rgba = validate_rgba(rgba)
        if crop:
            rgba = crop_to_alpha(rgba)
        rgba = np.ascontiguousarray(rgba)
        instance_id = content_hash(rgba)
        if instance_id in self._known():
            return None
        rel = f"instances/{category_id}/{instance_id}.png"
        write_bytes_atomic(self.root / rel, _encode_png(rgba), durable=False)
        row = {k: None for k in RECORD_COLUMNS}
        row.update({"instance_id": instance_id, "category_id": category_id,
                    "category": self.categories[category_id], "path": rel,
                    "width": int(rgba.shape[1]), "height": int(rgba.shape[0])})
        for key, value in fields.items():
            if key in ("instance_id", "category_id", "path", "width", "height"):
                raise ValueError(f"{key} is set by the pool, not by the caller")
            row[key] = value
        self._pending.append(row)
        self._known().add(instance_id)
        return instance_id

    @property
    def pending_count(self) -> int:
        """Rows added but not yet written to an index shard."""
        return len(self._pending)

    def flush(self) -> None:
        """Write pending rows as one new index shard (atomically) and make them visible to this object."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self._pending:
            return
        shard_dir = self.root / INDEX_DIR
        shard_dir.mkdir(parents=True, exist_ok=True)
        existing = sorted(shard_dir.glob("part-*.parquet"))
        number = int(existing[-1].stem.split("-")[1]) + 1 if existing else 0
        table = pa.Table.from_pylist(self._pending, schema=_schema_for(self._pending))
        final = shard_dir / f"part-{number:06d}.parquet"
        tmp = shard_dir / f".part-{number:06d}.parquet.tmp"
        ids, paths = self.instance_ids, self.paths  # materialise before the shard list grows
        pq.write_table(table, tmp)
        os.replace(tmp, final)
        self._shards.append(final)
        rows = self._pending
        self._pending = []
        columns = {
            "instance_id": np.concatenate([ids, np.array([r["instance_id"] for r in rows], dtype=object)]),
            "category_id": np.concatenate([self.category_ids, [r["category_id"] for r in rows]]),
            "path": np.concatenate([paths, np.array([r["path"] for r in rows], dtype=object)]),
            "width": np.concatenate([self.widths, [r["width"] for r in rows]]),
            "height": np.concatenate([self.heights, [r["height"] for r in rows]]),
        }
        self._set_columns(columns)

    def close(self) -> None:
        if self._writable:
            self.flush()

    def __enter__(self) -> InstancePool:
        return self

    def __exit__(self, *exc) -> None:
        # Flush even after an error: every pending row's PNG is already on disk.
        self.close()

    def _require_writable(self) -> None:
        if not self._writable or self.root is None:
            raise RuntimeError("this pool is read-only; use InstancePool.create(...) to write")


def _schema_for(rows: list[dict]):
    import pyarrow as pa

    fields = []
    arrow_types = {str: pa.string(), int: pa.int64(), float: pa.float64()}
    keys = list(RECORD_COLUMNS) + sorted({k for r in rows for k in r} - set(RECORD_COLUMNS))
    for key in keys:
        if key in RECORD_COLUMNS:
            fields.append(pa.field(key, arrow_types[RECORD_COLUMNS[key]]))
        else:
            sample = next((r[key] for r in rows if r.get(key) is not None), None)
            if isinstance(sample, bool):
                typ = pa.bool_()
            elif isinstance(sample, (int, np.integer)):
                typ = pa.int64()
            elif isinstance(sample, (float, np.floating)):
                typ = pa.float64()
            else:
                typ = pa.string()
            fields.append(pa.field(key, typ))
    return pa.schema(fields)
