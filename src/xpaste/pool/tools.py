"""Pool maintenance: convert a pool to the current format, and export cut-outs as PNG files to look at."""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from xpaste.categories import normalize_name
from xpaste.errors import XPasteError
from xpaste.io import check_output, refuse_overlap, safe_name, write_bytes_atomic
from xpaste.jobs import JobReport
from xpaste.pool.codec import CutoutError, encode_png
from xpaste.pool.header import DEFAULT_CODEC
from xpaste.pool.layout import HEADER, LOCATION_COLUMNS
from xpaste.pool.store import InstancePool
from xpaste.pool.writer import POOL_ENTRIES, PoolWriter

log = logging.getLogger("xpaste.pool")
#: The folders `export_png` writes under its --out: `<category id>_<name>` (`xpaste.io.check_output` patterns).
PNG_ENTRIES = ("[0-9]*_*", "-[0-9]*_*")
_SET_BY_POOL = {"instance_id", "category_id", "category", "path", "width", "height", *LOCATION_COLUMNS}


@dataclass
class MigrateReport:
    """What `migrate` did; `summary()` is the line the CLI prints, `job_report()` the same as a JobReport."""

    rows: int = 0
    written: int = 0
    duplicates: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (row, why)
    out: str = ""
    seconds: float = 0.0

    def summary(self) -> str:
        return (f"{self.written} of {self.rows} cut-outs written, {self.duplicates} duplicates, "
                f"{len(self.skipped)} unreadable skipped")

    def job_report(self) -> JobReport:
        """The same outcome as the `xpaste.jobs.JobReport` every job returns (unreadable rows as failures)."""
        counts = {"rows": self.rows, "written": self.written, "duplicates": self.duplicates}
        return JobReport("migrate", self.out or None, counts,
                         [{"item": f"row {row}", "reason": why} for row, why in self.skipped], self.seconds)


def migrate(src: str | os.PathLike, dst: str | os.PathLike, codec: str = DEFAULT_CODEC,
            progress: bool = False) -> MigrateReport:
    """Copy pool `src` (version 1 or 2) into a new version 2 pool `dst`, row for row.

    Pixels are copied exactly (PNG and the raw codecs are lossless), so instance ids, row order and every index
    column other than the pixel location (path, shard, offset, nbytes) stay the same. Unreadable cut-outs are
    skipped and listed. Raises XPasteError when `dst` already holds a pool, or is, lies inside or contains
    `src` (`xpaste.io.refuse_overlap`).
    """
    from tqdm import tqdm

    started = time.monotonic()
    src, dst = Path(src), Path(dst)
    refuse_overlap(dst, {"the old pool (OLD)": src}, flag="NEW")
    check_output(dst, writes=POOL_ENTRIES, what="NEW", own=(HEADER,))
    pool = InstancePool.open(src, cache_bytes=0)
    report = MigrateReport(rows=len(pool), out=str(dst))
    records = pool.records().to_pylist()
    config = {**pool.header.get("config", {}), "migrated_from": str(src.resolve()),
              "migrated_from_version": pool.version}
    with PoolWriter.create(dst, pool.header["categories"], config=config, codec=codec) as writer:
        for row, record in enumerate(tqdm(records, desc="migrate", unit="inst", disable=not progress)):
            try:
                rgba = pool.rgba(row)
            except CutoutError as e:
                report.skipped.append((row, str(e)))
                continue
            fields = {k: v for k, v in record.items() if k not in _SET_BY_POOL}
            if writer.add(rgba, record["category_id"], crop=False, **fields) is None:
                report.duplicates += 1
            else:
                report.written += 1
            if writer.pending_count >= 5000:
                writer.flush()
        writer.compact()
    report.seconds = time.monotonic() - started
    return report


def export_png(pool_path: str | os.PathLike, out: str | os.PathLike, category: int | str | None = None,
               limit: int | None = None) -> int:
    """Write cut-outs as RGBA PNG files `out/<category id>_<name>/<instance id>.png`; returns how many.

    `category`: an id or a name (only that category); `limit`: at most this many files. Unreadable
    cut-outs are skipped (logged). Raises XPasteError for an unknown category, or an `out` that is, lies inside
    or contains the pool (`xpaste.io.refuse_overlap`).
    """
    refuse_overlap(out, {"the pool (POOL)": pool_path})
    check_output(out, writes=PNG_ENTRIES)
    pool = InstancePool.open(pool_path, cache_bytes=0)
    rows = range(len(pool))
    if category is not None:
        wanted = _category_id(pool, category)
        rows = pool.rows_of(wanted).tolist()
        rows.sort()
    if limit is not None:
        rows = list(rows)[: max(int(limit), 0)]
    ids = pool.instance_ids
    written = 0
    for row in rows:
        try:
            rgba = pool.rgba(row)
        except CutoutError:
            continue  # logged once by the pool
        cid = int(pool.category_ids[row])
        folder = Path(out) / f"{cid}_{safe_name(pool.categories.get(cid, str(cid)))}"
        write_bytes_atomic(folder / f"{ids[row]}.png", encode_png(rgba), durable=False)
        written += 1
    return written


def _category_id(pool, category: int | str) -> int:
    text = str(category).strip()
    if text.lstrip("-").isdigit() and int(text) in pool.categories:
        return int(text)
    hits = [c for c, n in pool.categories.items() if normalize_name(n) == normalize_name(text)]
    if len(hits) != 1:
        raise XPasteError(f"category {category!r} is not {'unique' if hits else 'in the pool'}", pool.root,
                          "give a category id or name from `xpaste pool info`")
    return hits[0]
