"""The instance pool writer: appends cut-outs to a version 2 pool folder (layout in `xpaste.pool.layout`).

Safety rules:
- One writer per pool: `PoolWriter` holds `xpaste.io.exclusive_lock(folder, "pool")` from create/open to
  close, so a second writer (another `import-coco --append`, another `build-pool`) is refused in one line
  and nothing is lost; readers never need the lock.
- Pixels before rows: a flush makes the data shard durable (fsync), then writes the index part (temp file +
  rename), then the manifest that lists it (temp file + rename). A crash leaves at worst unlisted bytes at the
  end of a data shard or an unlisted part file (both ignored), never an index row without its pixels.
- Interrupted writes are visible: pool.json carries `incomplete` while a writer has the pool open; a clean
  `close()` (or leaving the `with` block without an exception) removes it. `xpaste pool info` reports a pool
  left incomplete, and re-running the same import (same config) resumes it: instance ids are content hashes,
  so rows already pooled are skipped as duplicates.
"""
from __future__ import annotations

import json
import logging
import os
import time
import zlib
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from xpaste._version import __version__
from xpaste.core.instance import RECORD_COLUMNS, content_hash, crop_to_alpha, validate_rgba
from xpaste.errors import XPasteError
from xpaste.io import atomic_path, exclusive_lock, naming_os_errors, write_json_atomic
from xpaste.pool.codec import encode_raw
from xpaste.pool.header import (CODECS, DEFAULT_CODEC, POOL_FORMAT, WRITE_VERSION, normalise_categories, read_header,
                                validate_header)
from xpaste.pool.layout import (DATA_DIR, HEADER, INDEX_DIR, LOCATION_COLUMNS, MANIFEST, PART_GLOB, SHARD_GLOB,
                                file_number, list_parts, part_name, shard_name)
from xpaste.pool.store import InstancePool

log = logging.getLogger("xpaste.pool")
#: What a pool writer writes in its folder (`xpaste.io.check_output`); HEADER (pool.json) marks a folder as a pool.
POOL_ENTRIES = (HEADER, INDEX_DIR, DATA_DIR)
SHARD_BYTES = 2**30  # a data shard is closed once it holds this many bytes (1M cut-outs: ~100 files)
MAX_PARTS = 8  # more index parts than this are merged into one when the writer closes (~1 ms per part on open)
_CATEGORY_HINT = ("the categories given to the pool (e.g. the dataset's) have a field of the wrong type: "
                  "fix it in the dataset json")


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str, allow_nan=True))


class PoolWriter:
    """Append-only writer of one pool folder. Use `create` or `open`; use as a context manager or call close().

    `add(rgba, category_id, **fields)` stores one cut-out and returns its instance id (None for a duplicate);
    `flush()` makes pending rows visible to readers. Not thread-safe (one thread writes).
    """

    def __init__(self, root: Path, header: dict, locks: ExitStack):
        self.root = root
        self.header = header
        self.codec = header["codec"]
        self.categories: dict[int, str] = {int(c["id"]): c["name"] for c in header["categories"]}
        self._locks = locks
        # a new pool, or a write resumed after a crash before its first manifest: unlisted files are ignored;
        # otherwise a lost manifest or a missing listed part is refused (appending would hide the rows it lists)
        interrupted = header.get("incomplete") is not None or not (root / HEADER).exists()
        self._parts = [p.name for p in list_parts(root, WRITE_VERSION, interrupted=interrupted)]
        self._rows = self._count_rows()
        existing = [file_number(p) for p in (root / INDEX_DIR).glob(PART_GLOB)]
        self._next_part = max(existing, default=-1) + 1  # never reuse a number, even an unlisted one
        self._pending: list[dict] = []
        self._known_ids: set[str] | None = None
        self._data = None
        self._shard = -1
        self._closed = False

    # ----------------------------------------------------------------- constructors
    @classmethod
    def create(cls, path: str | os.PathLike, categories: Iterable[dict] | dict[int, str],
               config: dict | None = None, exist_ok: bool = False, codec: str = DEFAULT_CODEC) -> PoolWriter:
        """Create a pool folder, or with `exist_ok` open an existing one for appending.

        Without `exist_ok`, an existing pool is refused unless a write with the same `config` was interrupted
        there (pool.json `incomplete`): then the write resumes. Raises XPasteError (pool exists, another
        writer holds it, version 1 pool, category name conflict).
        """
        if codec not in CODECS:
            raise ValueError(f"codec must be one of {CODECS}, got {codec!r}")
        root = Path(path)
        locks = ExitStack()
        locks.enter_context(exclusive_lock(root, "pool"))
        try:
            if (root / HEADER).exists():
                header = read_header(root)
                resumable = header.get("incomplete") is not None and header.get("config") == _jsonable(config or {})
                if not exist_ok and not resumable:
                    raise XPasteError("a pool already exists here", root,
                                      "pick a new folder, or add to this pool with `xpaste pool import-coco ... "
                                      "--append` (or import-xpaste --append; Python: exist_ok=True)")
                writer = cls._attach(root, header, locks)
                if not exist_ok:
                    log.warning("%s: resuming an interrupted write to this pool", root)
                writer.add_categories(categories)
                return writer
            header = {"format": POOL_FORMAT, "version": WRITE_VERSION, "codec": codec,
                      "categories": normalise_categories(categories), "config": _jsonable(config or {}),
                      "created_by": f"xpaste {__version__}"}
            validate_header(header, root / HEADER, _CATEGORY_HINT)  # never write a header no reader opens
            writer = cls(root, header, locks)
            writer._mark_incomplete()
            return writer
        except BaseException:
            locks.close()
            raise

    @classmethod
    def open(cls, path: str | os.PathLike) -> PoolWriter:
        """Open an existing version 2 pool for appending. Raises XPasteError (no pool, version 1, locked)."""
        root = Path(path)
        read_header(root)  # no pool here: refused before a lock file is created
        locks = ExitStack()
        locks.enter_context(exclusive_lock(root, "pool"))
        try:
            return cls._attach(root, read_header(root), locks)
        except BaseException:
            locks.close()
            raise

    @classmethod
    def _attach(cls, root: Path, header: dict, locks: ExitStack) -> PoolWriter:
        if header["version"] != WRITE_VERSION:
            raise XPasteError(f"this is a version {header['version']} pool (one PNG per cut-out); xpaste appends "
                              f"to version {WRITE_VERSION} pools only", root,
                              "convert it first: xpaste pool migrate OLD NEW")
        # a damaged pool (lost manifest, part or shard) is refused, never appended to: new rows would hide what
        # it lost, or land on the bytes a truncated shard's rows point at
        InstancePool.open(root, cache_bytes=0)
        writer = cls(root, header, locks)
        writer._mark_incomplete()
        return writer

    def _count_rows(self) -> int:
        import pyarrow.parquet as pq

        return sum(pq.ParquetFile(self.root / INDEX_DIR / p).metadata.num_rows for p in self._parts)

    def _mark_incomplete(self) -> None:
        self.header["incomplete"] = {"since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                     "by": f"xpaste {__version__}", "pid": os.getpid()}
        write_json_atomic(self.root / HEADER, self.header, indent=1)

    def _known(self) -> set[str]:
        """Ids already pooled, read on the first add only."""
        if self._known_ids is None:
            import pyarrow.parquet as pq

            self._known_ids = {i for p in self._parts
                               for i in pq.read_table(self.root / INDEX_DIR / p, columns=["instance_id"])
                               .column("instance_id").to_pylist()}
        return self._known_ids

    # ----------------------------------------------------------------- writing
    def add_categories(self, categories: Iterable[dict] | dict[int, str]) -> None:
        """Add categories not yet in the pool; a known id with another name raises XPasteError."""
        self._require_open()
        changed = False
        new = normalise_categories(categories)
        validate_header({**self.header, "categories": new}, self.root / HEADER, _CATEGORY_HINT)
        for c in new:
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
        """Store one (h, w, 4) uint8 RGBA cut-out; returns its instance id, or None when the same pixels
        (after cropping to alpha > 0 when `crop`) are already pooled.

        `fields` fill the record columns (source, model, prompt, seed, segmenter, clip_score, ...); unknown
        names become free score columns. Raises XPasteError for an unknown category, ValueError for an empty
        or non-RGBA array.
        """
        self._require_open()
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
        blob = encode_raw(rgba, self.codec)
        data = self._data_file(len(blob))
        offset = data.tell()
        with naming_os_errors(data.name):
            data.write(blob)
        row = {k: None for k in RECORD_COLUMNS}
        row.update({"instance_id": instance_id, "category_id": category_id,
                    "category": self.categories[category_id], "path": shard_name(self._shard),
                    "width": int(rgba.shape[1]), "height": int(rgba.shape[0]),
                    "shard": self._shard, "offset": offset, "nbytes": len(blob), "crc32": zlib.crc32(blob)})
        for key, value in fields.items():
            if key in ("instance_id", "category_id", "path", "width", "height", *LOCATION_COLUMNS):
                raise ValueError(f"{key} is set by the pool, not by the caller")
            row[key] = value
        self._pending.append(row)
        self._known().add(instance_id)
        return instance_id

    def _data_file(self, size: int):
        if self._data is not None and self._data.tell() > 0 and self._data.tell() + size > SHARD_BYTES:
            self._close_data()
        if self._data is None:
            folder = self.root / DATA_DIR
            folder.mkdir(parents=True, exist_ok=True)
            numbers = sorted(file_number(p) for p in folder.glob(SHARD_GLOB))
            number = max(numbers[-1] if numbers else 0, self._shard + 1)
            if numbers and number == numbers[-1] and (self.root / shard_name(number)).stat().st_size >= SHARD_BYTES:
                number += 1
            self._shard = number
            self._data = open(self.root / shard_name(number), "ab")  # appends after any unlisted tail of a crash
        return self._data

    def _close_data(self) -> None:
        if self._data is not None:
            self._sync_data()
            self._data.close()
            self._data = None

    def _sync_data(self) -> None:
        if self._data is not None:
            with naming_os_errors(self._data.name):
                self._data.flush()
                os.fsync(self._data.fileno())

    @property
    def pending_count(self) -> int:
        """Rows added but not yet written to an index part."""
        return len(self._pending)

    def __len__(self) -> int:
        return self._rows + len(self._pending)

    def flush(self) -> None:
        """Write pending rows as one new index part and list it in the manifest (pixels synced first)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self._pending:
            return
        self._sync_data()
        table = pa.Table.from_pylist(self._pending, schema=_schema_for(self._pending))
        name = part_name(self._next_part)
        with atomic_path(self.root / INDEX_DIR / name) as tmp:
            pq.write_table(table, tmp)
        self._next_part += 1
        self._write_manifest(self._parts + [name])
        self._rows += len(self._pending)
        self._pending = []

    def _write_manifest(self, parts: list[str]) -> None:
        write_json_atomic(self.root / INDEX_DIR / MANIFEST, {"parts": parts}, indent=0)
        self._parts = parts

    def compact(self) -> None:
        """Merge all index parts into one (same rows, same order): a pool then opens with one Parquet read."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.flush()
        if len(self._parts) < 2:
            return
        old = list(self._parts)
        try:
            table = pa.concat_tables([pq.read_table(self.root / INDEX_DIR / p) for p in old], promote_options="default")
        except pa.ArrowException as e:  # e.g. one free column written as int in one part and str in another
            log.warning("%s: index parts not merged (%s)", self.root, e)
            return
        name = part_name(self._next_part)
        with atomic_path(self.root / INDEX_DIR / name) as tmp:
            pq.write_table(table, tmp)
        self._next_part += 1
        self._write_manifest([name])
        for p in old:
            (self.root / INDEX_DIR / p).unlink(missing_ok=True)

    def close(self) -> None:
        """Flush, merge many small index parts, mark the pool complete and release the lock."""
        if self._closed:
            return
        try:
            self.flush()
            if len(self._parts) > MAX_PARTS:
                self.compact()
            self._close_data()
            self.header.pop("incomplete", None)
            write_json_atomic(self.root / HEADER, self.header, indent=1)
        finally:
            self._release()

    def _release(self) -> None:
        self._closed = True
        try:
            if self._data is not None:
                data, self._data = self._data, None
                with naming_os_errors(data.name):
                    data.close()
        finally:
            self._locks.close()

    def __enter__(self) -> PoolWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        # An error or Ctrl-C: keep what was written (pixels of every pending row are in the data file), but
        # leave `incomplete` in pool.json so the pool does not look finished.
        try:
            self.flush()
        finally:
            self._release()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            try:
                self._release()
            except Exception:  # noqa: BLE001 - interpreter shutdown
                pass

    def reader(self, **kwargs: Any):
        """An `InstancePool` over what has been flushed so far."""
        return InstancePool.open(self.root, **kwargs)

    def _require_open(self) -> None:
        if self._closed:
            raise RuntimeError("this pool writer is closed")


def _schema_for(rows: list[dict]):
    import pyarrow as pa

    fields = []
    arrow_types = {str: pa.string(), int: pa.int64(), float: pa.float64()}
    core = {**RECORD_COLUMNS, **{k: int for k in LOCATION_COLUMNS}}
    keys = list(core) + sorted({k for r in rows for k in r} - set(core))
    for key in keys:
        if key in core:
            fields.append(pa.field(key, arrow_types[core[key]]))
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
