"""`xpaste pool repair`: rebuild a version 2 pool's index manifest from its intact index parts.

A pool whose `index/manifest.json` was lost (a copy or sync that skipped it, a hand clean-up), whose manifest
lists a part that is gone, or whose data shard lost its tail is refused when opened (`xpaste.pool.layout`).
Repair rebuilds what can be rebuilt, checked against the pixels:

- every `index/part-*.parquet` file that still reads is taken, in file-number order (the order the writer
  made them in: a later part holds later rows, a compacted part all rows of the parts before it);
- rows are deduplicated by instance id (content hash), first kept: a crash or an interrupted compaction leaves
  unlisted parts whose rows are also in later parts;
- every kept row's bytes are read from its data shard and checked (crc32 when the index has it, else decoded):
  a row that fails is damaged.

Nothing is dropped silently: damaged rows, unreadable parts and listed parts that are missing are refused in
one line unless `drop_damaged` is given. When the rows kept are exactly those of the readable parts, in order,
only the manifest is written; otherwise one new part holds the kept rows and the manifest lists it (the old
parts stay on disk, unlisted, so ignored). The writer's lock is held throughout.
"""
from __future__ import annotations

import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from xpaste.errors import XPasteError
from xpaste.io import atomic_path, exclusive_lock, read_json, write_json_atomic
from xpaste.pool.codec import CutoutError, decode_raw
from xpaste.pool.header import read_header
from xpaste.pool.layout import (CHECKSUM, INDEX_DIR, MANIFEST, PART_GLOB, PART_NAME, file_number, part_name,
                                repair_command, shard_name)
from xpaste.pool.store import InstancePool


@dataclass
class RepairReport:
    """What `repair_pool` did; `summary()` is the line the CLI prints."""

    parts: list[str] = field(default_factory=list)  # parts the new manifest lists
    rows: int = 0  # rows the repaired pool holds
    duplicates: int = 0  # rows dropped as repeated instance ids (crash or compaction leftovers)
    damaged: list[tuple[str, str]] = field(default_factory=list)  # (what, why): dropped with drop_damaged
    rewritten: bool = False  # a new part was written (else only the manifest)
    needed: bool = True  # False: the pool opened as it was, nothing written

    def summary(self) -> str:
        if not self.needed:
            return f"nothing to repair: the pool opens with {self.rows} instances"
        text = (f"manifest rebuilt: {self.rows} instances in {len(self.parts)} index part(s) "
                f"({', '.join(self.parts)}){', rows rewritten into a new part' if self.rewritten else ''}")
        if self.duplicates:
            text += f"; {self.duplicates} repeated rows dropped"
        if self.damaged:
            text += f"; {len(self.damaged)} damaged items dropped (first: {self.damaged[0][0]}: {self.damaged[0][1]})"
        return text


def _manifest_parts(root: Path) -> list[str] | None:
    """Names the manifest lists; None when it is missing or unreadable (then nothing it lists is known)."""
    try:
        parts = read_json(root / INDEX_DIR / MANIFEST).get("parts")
    except (XPasteError, OSError, AttributeError):
        return None
    return [p for p in parts if isinstance(p, str)] if isinstance(parts, list) else None


def _opens(root: Path) -> int | None:
    """The row count when the pool opens as it is, and no part file sits beside a missing manifest."""
    if not (root / INDEX_DIR / MANIFEST).exists() and any((root / INDEX_DIR).glob(PART_GLOB)):
        return None  # an incomplete pool opens without its unlisted parts: still worth rebuilding
    try:
        return len(InstancePool.open(root, cache_bytes=0))
    except XPasteError:
        return None


def _row_ok(root: Path, codec: str, fds: dict[int, int | None], row: dict) -> str | None:
    """Why the row's stored bytes are unusable, or None when they are intact."""
    shard, offset, nbytes = row.get("shard"), row.get("offset"), row.get("nbytes")
    if not all(isinstance(v, int) for v in (shard, offset, nbytes)) or offset < 0 or nbytes < 0:
        return "location columns missing or negative"
    if shard not in fds:
        try:
            fds[shard] = os.open(root / shard_name(shard), os.O_RDONLY)
        except OSError as e:
            fds[shard] = None
            return f"{shard_name(shard)} cannot be read: {e.strerror}"
    fd = fds[shard]
    if fd is None:
        return f"{shard_name(shard)} cannot be read"
    blob = os.pread(fd, nbytes, offset)
    if len(blob) != nbytes:
        return f"{shard_name(shard)} is truncated (needs bytes {offset}..{offset + nbytes})"
    crc = row.get(CHECKSUM)
    if isinstance(crc, int) and crc >= 0:
        return None if zlib.crc32(blob) == crc else f"checksum mismatch in {shard_name(shard)} at byte {offset}"
    try:
        decode_raw(blob, int(row["height"]), int(row["width"]), codec, root / shard_name(shard))
    except (CutoutError, KeyError, TypeError, ValueError) as e:
        return str(e)
    return None


def repair_pool(path: str | os.PathLike, drop_damaged: bool = False) -> RepairReport:
    """Rebuild the manifest of the version 2 pool at `path` from its intact index parts (see the module doc).

    Raises XPasteError: no pool, a version 1 pool, another writer holds the pool, no index part reads, or
    damaged rows/parts found without `drop_damaged` (one line naming the first and the flag to pass)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(path)
    header = read_header(root)
    if header["version"] != 2:
        raise XPasteError(f"a version {header['version']} pool has no manifest to repair (its index parts are found "
                          "by name)", root, "open it as it is, or convert it: xpaste pool migrate OLD NEW")
    with exclusive_lock(root, "pool"):
        opened = _opens(root)
        if opened is not None:
            return RepairReport(rows=opened, needed=False)
        report = RepairReport()
        listed = _manifest_parts(root) or []
        report.damaged += [(f"{INDEX_DIR}/{p}", "listed in the manifest but missing") for p in listed
                           if PART_NAME.fullmatch(p) and not (root / INDEX_DIR / p).is_file()]
        tables, names = [], []
        for part in sorted((root / INDEX_DIR).glob(PART_GLOB), key=file_number):
            if not PART_NAME.fullmatch(part.name):
                continue
            try:
                tables.append(pq.read_table(part))
                names.append(part.name)
            except Exception as e:  # noqa: BLE001 - any Arrow error means a damaged part
                report.damaged.append((f"{INDEX_DIR}/{part.name}", "unreadable: " + " ".join(str(e).split())))
        if not tables:
            raise XPasteError(f"no index part in {INDEX_DIR}/ can be read: nothing to rebuild the manifest from", root,
                              "restore index/ from a backup, or rebuild the pool")
        try:
            table = pa.concat_tables(tables, promote_options="default")
        except pa.ArrowException as e:
            raise XPasteError(f"the index parts {names} do not share one schema: {e}", root / INDEX_DIR,
                              "restore index/ from a backup, or rebuild the pool") from None
        keep, seen, fds = [], set(), {}
        columns = [c for c in ("instance_id", "shard", "offset", "nbytes", CHECKSUM, "width", "height")
                   if c in table.column_names]
        try:
            for i, row in enumerate(table.select(columns).to_pylist()):
                if row.get("instance_id") in seen:
                    report.duplicates += 1
                    continue
                why = _row_ok(root, header["codec"], fds, row)
                if why is not None:
                    report.damaged.append((f"row {i} ({row.get('instance_id')})", why))
                    continue
                seen.add(row.get("instance_id"))
                keep.append(i)
        finally:
            for fd in fds.values():
                if fd is not None:
                    os.close(fd)
        if report.damaged and not drop_damaged:
            what, why = report.damaged[0]
            raise XPasteError(f"{len(report.damaged)} damaged items found, the first ({what}): {why}; "
                              f"{len(keep)} intact rows can be kept", root,
                              f"restore the damaged files from a backup, or keep the intact rows: "
                              f"{repair_command(root, '--drop-damaged')}")
        if not keep:
            raise XPasteError("no intact row left to rebuild the pool from", root,
                              "restore the pool from a backup, or rebuild it")
        if len(keep) == table.num_rows:
            report.parts = names
        else:
            number = max([file_number(p) for p in (root / INDEX_DIR).glob(PART_GLOB)], default=-1) + 1
            name = part_name(number)
            with atomic_path(root / INDEX_DIR / name) as tmp:
                pq.write_table(table.take(pa.array(keep, pa.int64())), tmp)
            report.parts, report.rewritten = [name], True
        write_json_atomic(root / INDEX_DIR / MANIFEST, {"parts": report.parts}, indent=0)
        report.rows = len(InstancePool.open(root, cache_bytes=0))  # the repaired pool must open
    return report


__all__ = ["RepairReport", "repair_pool"]
