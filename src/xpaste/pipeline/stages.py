"""The stage registry and the joins between stage outputs."""
from __future__ import annotations

from pathlib import Path

from xpaste.pipeline.shards import read_stage

STAGE_ORDER = ("generate", "retrieve", "segment", "score", "build-pool")


def segment_rows_with_paths(run_dir: Path) -> list[dict]:
    """Segment rows joined with their candidate (image path, category name), in (candidate, segmenter) order."""
    from xpaste.pipeline.masks import SegmentStage, read_candidates

    candidates = {r["candidate_id"]: r for r in read_candidates(run_dir)}
    out = []
    for row in read_stage(run_dir / "segment", SegmentStage.schema(None)).to_pylist():
        cand = candidates.get(row["candidate_id"])
        if cand is not None:
            out.append({**row, "path": cand["path"], "category": cand["category"]})
    return out


def make_stage(name: str, run_dir: Path, config: dict):
    from xpaste.pipeline.acquire import GenerateStage, RetrieveStage
    from xpaste.pipeline.masks import ScoreStage, SegmentStage

    classes = {"generate": GenerateStage, "retrieve": RetrieveStage, "segment": SegmentStage, "score": ScoreStage}
    return classes[name](Path(run_dir), config)
