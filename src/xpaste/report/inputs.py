"""What the report reads: a pool, a pipeline run folder, an augmented dataset and its target dataset, loaded once
into `Inputs` (`load_inputs`), with the run's record of what ran (`run_record`) and the foreign-pool check
(`foreign_pool`). The page itself is `xpaste.report.html`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xpaste.data.coco import load_coco
from xpaste.data.stats import category_stats
from xpaste.errors import XPasteError
from xpaste.io import read_json
from xpaste.pipeline.rundir import RunDir
from xpaste.pool.store import InstancePool

log = logging.getLogger("xpaste.report.html")  # the page's logger: its warnings keep their name

RECORD_FIELDS = ["category_id", "source", "model", "segmenter", "clip_score", "area_frac", "prompt", "instance_id"]


@dataclass
class Inputs:
    pool: Any = None
    cols: dict[str, np.ndarray] = field(default_factory=dict)  # pool records, one array per column
    run: Path | None = None
    decisions: list[dict] = field(default_factory=list)
    augmented: Path | None = None
    aug: dict | None = None
    dataset: Path | None = None
    dataset_rows: list[dict] | None = None
    notes: list[str] = field(default_factory=list)
    ran: dict = field(default_factory=dict)  # what the run folder records (`run_record`)
    foreign: str | None = None  # one line when the augmented set was pasted from another pool (`foreign_pool`)


def load_inputs(pool, run, augmented, dataset) -> Inputs:
    inp = Inputs()
    if run is not None:
        import pyarrow.parquet as pq


        inp.run = Path(run)
        path = RunDir(inp.run).decisions_file
        if not path.is_file():
            raise XPasteError("not a pipeline run folder (no build_pool/decisions.parquet)", inp.run,
                              "run `xpaste build-pool` on it first")
        inp.decisions = pq.read_table(path).to_pylist()
        inp.ran = run_record(inp.run)
        if pool is None and (RunDir(inp.run).default_pool_dir / "pool.json").is_file():
            pool = RunDir(inp.run).default_pool_dir
            inp.notes.append(f"pool taken from the run folder: {pool}")
    if pool is not None:
        inp.pool = pool if isinstance(pool, InstancePool) else InstancePool.open(pool)
        table = inp.pool.records()
        n = len(inp.pool)
        for name in RECORD_FIELDS:
            values = (table.column(name).to_numpy(zero_copy_only=False)[:n] if name in table.column_names
                      else np.full(n, None, dtype=object))
            inp.cols[name] = values
        inp.cols["clip_score"] = np.array([np.nan if v is None else v for v in inp.cols["clip_score"]], np.float64)
        inp.cols["area_frac"] = np.array([np.nan if v is None else v for v in inp.cols["area_frac"]], np.float64)
        inp.cols["category_id"] = inp.pool.category_ids
    if augmented is not None:
        inp.augmented = Path(augmented)
        inp.aug = read_json(inp.augmented / "annotations.json")
        if not isinstance(inp.aug, dict) or not all(isinstance(inp.aug.get(k), list) for k in ("images", "annotations")):
            raise XPasteError("annotations.json has no images/annotations lists", inp.augmented / "annotations.json")
        recorded = ((inp.aug.get("info") or {}).get("xpaste") or {}).get("dataset") if isinstance(
            inp.aug.get("info"), dict) else None
        if dataset is None and recorded and Path(recorded).is_file():
            dataset = recorded
            inp.notes.append(f"target dataset taken from the augmented folder's settings: {recorded}")
    if dataset is not None:
        inp.dataset = Path(dataset)
        inp.dataset_rows = category_stats(load_coco(inp.dataset))
    if inp.pool is not None and inp.aug is not None:
        inp.foreign = foreign_pool(inp.pool, inp.aug)
        if inp.foreign:
            log.warning("WARNING: %s", inp.foreign)
    return inp


UPSTREAM_STAGES = ("generate", "retrieve", "segment", "score")


def run_record(run: Path) -> dict:
    """What the run folder says actually ran: the stages with a record (STAGE/stage.json) plus build-pool, the
    segmenters and CLIP model build-pool recorded, its resolved options (RUN/build_pool/stage-*.json, the one
    for the latest pool: summary.json's) and its preset."""
    rd = RunDir(run)
    stages = [name for name in UPSTREAM_STAGES if (rd.stage_dir(name) / "stage.json").is_file()]
    stages.append("build-pool")
    summary, record = {}, {}
    try:
        summary = read_json(rd.build_summary_file) if rd.build_summary_file.is_file() else {}
    except XPasteError:
        summary = {}
    records = sorted(rd.stage_dir("build-pool").glob("stage-*.json"))
    for path in records:
        try:
            r = read_json(path)
        except XPasteError:
            continue
        if not isinstance(r, dict):
            continue
        if not record or (summary.get("pool") and Path(str(r.get("out"))) == Path(summary["pool"]).resolve()):
            record = r
    return {"stages": stages, "summary": summary if isinstance(summary, dict) else {},
            "record": record}


def foreign_pool(pool: InstancePool, aug: dict) -> str | None:
    """One line when the augmented set's pasted instances are not this pool's (an augmented set from another
    pool), else None. Pasted annotations carry the pool's `instance_id`; an older set without ids is compared by
    the pool folder its settings record."""
    pasted = [a for a in aug["annotations"] if a.get("pasted")]
    ids = {str(a["instance_id"]) for a in pasted if a.get("instance_id") is not None}
    if ids:
        missing = len(ids - {str(i) for i in pool.instance_ids})
        if missing:
            return (f"the augmented set was pasted from another pool: {missing} of its {len(ids)} pasted "
                    f"instances are not in this pool ({pool.root or 'in memory'})")
        return None
    recorded = ((aug.get("info") or {}).get("xpaste") or {}).get("pool") if isinstance(aug.get("info"), dict) else None
    if pasted and recorded and pool.root and Path(recorded).resolve() != Path(pool.root).resolve():
        return f"the augmented set records another pool ({recorded}), not this one ({pool.root})"
    return None


def clip_ran(inp: Inputs) -> bool:
    """Whether CLIP scored anything: a finite score in the run's decisions, or else in the pool."""
    values = [d.get("clip_score") for d in inp.decisions] if inp.decisions else (
        inp.cols["clip_score"].tolist() if inp.pool is not None else [])
    return any(v is not None and np.isfinite(v) for v in values)


def category_names(inp: Inputs) -> dict[int, str]:
    names = {int(d["category_id"]): str(d.get("category") or d["category_id"]) for d in inp.decisions}
    if inp.pool is not None:
        names.update(inp.pool.categories)
    return names


