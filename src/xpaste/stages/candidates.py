"""The candidates table that generate and retrieve write (one row per image, `candidate_schema`) and that
segment, score and build-pool read back (`read_candidates`)."""
from __future__ import annotations

from pathlib import Path

from xpaste.pipeline.shards import read_stage

CANDIDATE_FIELDS = [("candidate_id", "string"), ("kind", "string"), ("category_id", "int64"),
                    ("category", "string"), ("path", "string"), ("source", "string"), ("model", "string"),
                    ("prompt", "string"), ("seed", "int64"), ("steps", "int64"), ("guidance", "float64"),
                    ("width", "int64"), ("height", "int64"), ("url", "string"), ("retrieval_score", "float64")]


def candidate_schema():
    import pyarrow as pa

    return pa.schema([(name, getattr(pa, typ)()) for name, typ in CANDIDATE_FIELDS])


def candidate_row(**values) -> dict:
    row = {name: None for name, _ in CANDIDATE_FIELDS}
    row.update(values)
    return row



def read_candidates(run_dir: Path):
    """Object candidates from generate and retrieve, sorted by id (the order every later stage uses)."""
    import pyarrow as pa

    tables = [read_stage(run_dir / name, candidate_schema()) for name in ("generate", "retrieve")]
    table = pa.concat_tables(tables, promote_options="default")
    rows = [r for r in table.to_pylist() if r["kind"] == "object"]
    return sorted(rows, key=lambda r: r["candidate_id"])
