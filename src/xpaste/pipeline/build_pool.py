"""Stage 3: filter scored cut-outs into the instance pool (X-Paste's selection, plus dedup and DiverGen).

Per candidate image the segmenter with the best CLIP score wins; a per-category adaptive bar
min(t, max - d) and an area-fraction range filter the winners; the largest connected component is
cropped to RGBA; near-duplicates (embedding cosine >= dedup) within a category are dropped, best first;
optionally cut-outs too far from the category's real instances (DiverGen) are dropped. Every decision is
written to `<run>/build_pool/decisions.parquet` (for the report), and the pool is appended in a fixed
order, so a killed build resumes to the same pool (the pool deduplicates by content hash).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from xpaste.errors import XPasteError
from xpaste.pipeline.masks import read_candidates
from xpaste.pipeline.rundir import load_mask, load_rgb, resolve_categories
from xpaste.pipeline.shards import read_stage


def _decisions(run_dir: Path, config: dict) -> list[dict]:
    from xpaste.pipeline.masks import ScoreStage, SegmentStage
    from xpaste.score.filters import adaptive_threshold, dedup_by_embedding

    b = config["build_pool"]
    candidates = {r["candidate_id"]: r for r in read_candidates(run_dir)}
    segments = {(r["candidate_id"], r["segmenter"]): r
                for r in read_stage(run_dir / "segment", SegmentStage.schema(None)).to_pylist()}
    scores = read_stage(run_dir / "score", ScoreStage.schema(None)).to_pylist()
    if not scores and config["score"]["clip"] is None:
        return _unscored_decisions(candidates, segments, config)
    if not scores:
        raise XPasteError("no CLIP scores in this run", run_dir,
                          "run `xpaste score` first, or set score.clip to null to build without CLIP")
    best: dict[str, dict] = {}
    for row in scores:  # per image, the best-scoring segmenter (ties: the earlier segmenter in the config)
        if not np.isfinite(row["clip_score"]) or segments[(row["candidate_id"], row["segmenter"])]["area_frac"] <= 0:
            continue  # an empty mask (a white composite) must never win
        current = best.get(row["candidate_id"])
        if current is None or row["clip_score"] > current["clip_score"]:
            best[row["candidate_id"]] = row
    decisions = []
    by_category: dict[int, list[dict]] = {}
    for cid in sorted(best):
        row = best[cid]
        seg = segments[(cid, row["segmenter"])]
        d = {**candidates[cid], "segmenter": row["segmenter"], "clip_score": float(row["clip_score"]),
             "area_frac": float(seg["area_frac"]), "mask_path": seg["mask_path"],
             "embedding": np.asarray(row["embedding"], np.float32), "decision": "kept", "bar": np.nan}
        by_category.setdefault(d["category_id"], []).append(d)
        decisions.append(d)
    lo, hi = float(b["area_min"]), float(b["area_max"])
    for cat_id, rows in sorted(by_category.items()):
        in_range = [r for r in rows if lo <= r["area_frac"] <= hi]
        bar = adaptive_threshold([r["clip_score"] for r in in_range], float(b["t"]), float(b["d"]))
        for r in rows:
            r["bar"] = bar
            if r["area_frac"] <= 0:
                r["decision"] = "empty mask"
            elif not lo <= r["area_frac"] <= hi:
                r["decision"] = "area out of range"
            elif r["clip_score"] < bar:
                r["decision"] = "below CLIP bar"
        kept = sorted((r for r in rows if r["decision"] == "kept"), key=lambda r: (-r["clip_score"], r["candidate_id"]))
        if b["dedup"] is not None and len(kept) > 1:
            keep = dedup_by_embedding(np.stack([r["embedding"] for r in kept]), float(b["dedup"]))
            for r, k in zip(kept, keep):
                if not k:
                    r["decision"] = "near duplicate"
    return decisions


def _unscored_decisions(candidates: dict, segments: dict, config: dict) -> list[dict]:
    """Without CLIP weights (score.clip: null): per image, the first segmenter in the config whose mask area is
    in range wins; there is no CLIP bar and no embedding dedup. Every record says clip_score NaN."""
    b = config["build_pool"]
    lo, hi = float(b["area_min"]), float(b["area_max"])
    order = list(config["segment"]["segmenters"])
    by_candidate: dict[str, list[dict]] = {}
    for (cid, _), seg in segments.items():
        by_candidate.setdefault(cid, []).append(seg)
    decisions = []
    for cid in sorted(by_candidate):
        if cid not in candidates:
            continue
        segs = sorted(by_candidate[cid], key=lambda r: order.index(r["segmenter"]) if r["segmenter"] in order else 99)
        chosen = next((r for r in segs if r["area_frac"] > 0 and lo <= r["area_frac"] <= hi), segs[0])
        decision = "kept" if chosen["area_frac"] > 0 and lo <= chosen["area_frac"] <= hi else (
            "empty mask" if chosen["area_frac"] <= 0 else "area out of range")
        decisions.append({**candidates[cid], "segmenter": chosen["segmenter"], "clip_score": float("nan"),
                          "area_frac": float(chosen["area_frac"]), "mask_path": chosen["mask_path"],
                          "embedding": np.zeros(0, np.float32), "decision": decision, "bar": float("nan")})
    return decisions


def _real_similarity_filter(decisions: list[dict], config: dict) -> None:
    """DiverGen: drop kept cut-outs whose mean cosine to the category's real instances is too low."""
    from xpaste.pool.store import InstancePool
    from xpaste.score import composite_on_white
    from xpaste.score.clip import ClipScorer

    b, s = config["build_pool"], dict(config["score"])
    recorded = Path(config["run_dir"]) / "score" / "stage.json"
    if recorded.exists():  # the real instances must be embedded by the model that scored the cut-outs
        from xpaste.io import read_json

        s.update({k: v for k, v in read_json(recorded)["fingerprint"].items() if k in ("clip", "pretrained")})
    real = InstancePool.open(b["real_pool"])
    scorer = ClipScorer(s["clip"], s["pretrained"], device=config["device"], batch_size=int(s["batch_size"]))
    for cat_id in sorted({d["category_id"] for d in decisions if d["decision"] == "kept"}):
        rows = real.rows_of(cat_id)
        if len(rows) == 0:
            continue  # no real instances to compare with: nothing to say
        cutouts = [real.rgba(int(r)) for r in rows]
        ref = scorer.embed_images([composite_on_white(c[..., :3], c[..., 3]) for c in cutouts])
        for d in decisions:
            if d["category_id"] == cat_id and d["decision"] == "kept":
                d["real_similarity"] = float(np.mean(ref @ d["embedding"]))
                if d["real_similarity"] < float(b["real_min_similarity"]):
                    d["decision"] = "far from real instances"


def cutout(image: np.ndarray, soft: np.ndarray) -> np.ndarray | None:
    """RGBA crop of the largest connected component of soft > 128; alpha = soft mask inside it."""
    from xpaste.ops.masks import largest_component

    binary = soft > 128
    if not binary.any():
        return None
    component = largest_component(binary)
    rows, cols = np.flatnonzero(component.any(axis=1)), np.flatnonzero(component.any(axis=0))
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    rgba = np.empty((y1 - y0, x1 - x0, 4), np.uint8)
    rgba[..., :3] = image[y0:y1, x0:x1]
    rgba[..., 3] = np.where(component[y0:y1, x0:x1], soft[y0:y1, x0:x1], 0)
    return rgba


def build_pool(run_dir: str | Path, config: dict, progress: bool = True) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm import tqdm

    from xpaste.io import write_json_atomic
    from xpaste.pool.store import InstancePool

    start = time.perf_counter()
    run_dir = Path(run_dir)
    categories = resolve_categories(run_dir, config)
    decisions = _decisions(run_dir, config)
    if config["build_pool"]["real_pool"] and config["score"]["clip"] is not None:
        _real_similarity_filter(decisions, config)
    out = Path(config["build_pool"]["out"] or run_dir / "pool")
    pool_cats = [{"id": c.id, "name": c.name} for c in categories]
    kept = [d for d in decisions if d["decision"] == "kept"]
    added = 0
    with InstancePool.create(out, pool_cats, config={"build_pool": config["build_pool"],
                                                     "score": config["score"]}, exist_ok=True) as pool:
        for d in tqdm(kept, desc="build-pool", unit="inst", disable=not progress):
            try:
                rgba = cutout(load_rgb(run_dir, d["path"]), load_mask(run_dir, d["mask_path"]))
            except XPasteError as e:
                d["decision"] = f"unreadable: {e.message}"
                continue
            if rgba is None:
                d["decision"] = "empty mask"
                continue
            instance_id = pool.add(rgba, d["category_id"], crop=True, source=d["source"], model=d["model"] or "",
                                   prompt=d["prompt"] or "", seed=int(d["seed"]) if d["seed"] is not None else -1,
                                   segmenter=d["segmenter"], clip_score=d["clip_score"], area_frac=d["area_frac"],
                                   candidate_id=d["candidate_id"])
            d["instance_id"] = instance_id or ""
            added += instance_id is not None
            if pool.pending_count >= int(config["build_pool"]["flush_every"]):
                pool.flush()
    table = pa.Table.from_pylist([{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in d.items()
                                   if k != "embedding"} for d in decisions])
    (run_dir / "build_pool").mkdir(parents=True, exist_ok=True)
    tmp = run_dir / "build_pool" / ".decisions.parquet.tmp"
    pq.write_table(table, tmp)
    tmp.replace(run_dir / "build_pool" / "decisions.parquet")
    counts: dict[str, int] = {}
    for d in decisions:
        counts[d["decision"]] = counts.get(d["decision"], 0) + 1
    summary = {"pool": str(out), "candidates": len(decisions), "added": added, "decisions": counts,
               "seconds": round(time.perf_counter() - start, 3)}
    write_json_atomic(run_dir / "build_pool" / "summary.json", summary, indent=1)
    return summary
