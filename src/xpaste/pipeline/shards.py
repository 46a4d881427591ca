"""Stage outputs as Parquet shards. A shard file appears (atomically) only when its work is complete, so
"the shard exists" is the done marker; skipped inputs are recorded in a json sidecar written just before it.
Every write goes through `xpaste.io.atomic_path`: a kill, a full disk or Ctrl-C leaves at most a hidden
temp file (removed by the next run with `clean_temp_files`), never a half-written shard under its name."""
from __future__ import annotations

from pathlib import Path

from xpaste.errors import XPasteError
from xpaste.io import atomic_path, read_json, write_json_atomic


def shard_path(stage_dir: Path, index: int) -> Path:
    return stage_dir / f"shard-{index:06d}.parquet"


def write_shard(stage_dir: Path, index: int, rows: list[dict], schema, skipped: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    stage_dir.mkdir(parents=True, exist_ok=True)
    sidecar = stage_dir / f"shard-{index:06d}.skipped.json"
    if skipped:
        write_json_atomic(sidecar, skipped, durable=False)
    else:
        sidecar.unlink(missing_ok=True)
    table = pa.Table.from_pylist(rows, schema=schema)
    with atomic_path(shard_path(stage_dir, index)) as tmp:
        pq.write_table(table, tmp)


def read_stage(stage_dir: Path, schema=None):
    """All shards of a stage, in shard order, as one pyarrow Table (empty with `schema` if none)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    shards = sorted(stage_dir.glob("shard-*.parquet")) if stage_dir.exists() else []
    tables = []
    for shard in shards:
        try:
            tables.append(pq.read_table(shard))
        except Exception as e:  # noqa: BLE001 - a damaged shard: say which one and how to redo it
            raise XPasteError(f"unreadable shard: {e}", shard, "delete the file and rerun the stage") from None
    if not tables:
        if schema is None:
            return pa.table({})
        return schema.empty_table()
    return pa.concat_tables(tables, promote_options="default")


def read_skipped(stage_dir: Path) -> list[dict]:
    out: list[dict] = []
    for sidecar in sorted(stage_dir.glob("shard-*.skipped.json")) if stage_dir.exists() else []:
        out.extend(read_json(sidecar))
    return out


def clean_temp_files(*folders: Path) -> None:
    """Remove temp files (`.NAME.*.tmp`) a killed run left behind in `folders` (they are never read)."""
    for folder in folders:
        if Path(folder).exists():
            for stale in Path(folder).glob(".*.tmp"):
                stale.unlink(missing_ok=True)
