"""Digests of a job's inputs and outputs, and the comparison of two records: what every resumable job
(the sharded stages, build-pool, augment) records so that a rerun with changed inputs is refused in one line.

- `digest(values)`: 16 hex digits of sha256 over a json-able value (sorted keys);
- `file_digest(path)`: sha256 of a file's bytes (streamed);
- `images_digest(folder, names)`: a folder as a run sees it (resolved path; name, size, mtime of each file);
- `pool_digest(pool)`: a pool's content (its header and index files; cut-outs are named by the index);
- `outputs_digest(stage_dir)`: a stage's shard tables and the run files they list (size, mtime);
  `outputs_digests(stage_dir)`: the same for each leading part of its shards (what a stage that only appended
  shards still matches);
- `first_difference(old, new)`: the first (key path, old, new) where two json-like records differ.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from xpaste.pool.layout import HEADER, INDEX_DIR

#: Columns of stage tables that name files of the run (images, masks): their size and mtime are part of
#: `outputs_digest`, so files rewritten under the same names (a rerun with another model file) count.
FILE_COLUMNS = ("path", "mask_path")


def digest(values: Any) -> str:
    """16 hex digits of sha256 over `values` as json (sorted keys; non-json values through `str`)."""
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (streamed, 64 hex digits). Raises OSError when it cannot be read."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def images_digest(images_dir: Path, file_names) -> str:
    """The images folder as the run sees it: its resolved path and (name, size, mtime) of each named file."""
    rows: list[Any] = [str(Path(images_dir).resolve())]
    for name in file_names:
        try:
            st = os.stat(Path(images_dir) / name)
            rows.append([name, st.st_size, st.st_mtime_ns])
        except OSError:
            rows.append([name, None])
    return digest(rows)


def pool_digest(pool) -> str:
    """The pool's content: its header and index files (the cut-out files are named by the index).
    `pool`: anything with a `root` folder (an `InstancePool`)."""
    root = Path(pool.root)
    files = [root / HEADER, *sorted(p for p in (root / INDEX_DIR).glob("*") if not p.name.startswith("."))]
    return digest([[p.name, file_digest(p)] for p in files if p.is_file()])


def outputs_digest(stage_dir: Path) -> str:
    """A digest of a stage's outputs: the bytes of its shard tables, in order, and the size and modification
    time of each run file they list (`FILE_COLUMNS`, relative to the run folder: the stage folder's parent).
    A stage redone (`--fresh`) or whose files were rewritten gives another digest. '' when it has no shards."""
    return outputs_digests(stage_dir)[-1]


def outputs_digests(stage_dir: Path) -> list[str]:
    """`outputs_digest` of every leading part of a stage's shard tables, in one pass: item k is the digest its
    outputs would have if they were only their first k shard tables (in name order) and the files these list,
    as they are now; item 0 is '' (no shard), the last one is `outputs_digest(stage_dir)`. A stage that only
    appended shards since a digest was recorded still has it among these, at the count of shards it then had
    (the rule of work added to a started stage: `xpaste.stages.additions`)."""
    import pyarrow.parquet as pq

    stage_dir = Path(stage_dir)
    shards = sorted(stage_dir.glob("shard-*.parquet")) if stage_dir.exists() else []
    out = [""]
    h = hashlib.sha256()
    for shard in shards:
        h.update(shard.name.encode())
        with open(shard, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        try:
            names = pq.read_schema(shard).names
            columns = [c for c in FILE_COLUMNS if c in names]
            table = pq.read_table(shard, columns=columns) if columns else None
        except Exception:  # noqa: BLE001 - a damaged shard: its bytes are in the digest already
            table = None
        for column in table.column_names if table is not None else []:
            for rel in table.column(column).to_pylist():
                try:
                    st = os.stat(stage_dir.parent / rel) if rel else None
                    h.update(f"{rel}:{st.st_size}:{st.st_mtime_ns};".encode() if st else b"-;")
                except (OSError, ValueError):
                    h.update(f"{rel}:missing;".encode())
        out.append(h.copy().hexdigest()[:16])
    return out


def first_difference(old: Any, new: Any, path: tuple = ()) -> tuple[tuple, Any, Any] | None:
    """The first (key path, old, new) where two json-like values differ (dict keys in sorted order), or None."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            found = first_difference(old.get(key), new.get(key), (*path, key))
            if found:
                return found
        return None
    return None if old == new else (path, old, new)
