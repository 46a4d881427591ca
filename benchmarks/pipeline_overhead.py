"""Per-item overhead of the pipeline machinery (sharding, file I/O, Parquet, joins) beyond model time.

Builds tiny random models offline (the same as the tests), runs generate -> segment -> score -> build-pool
on N images with the local engine, times every model call, and prints wall time, model time and the
difference per item for each stage. Target (issue 4): under 5 ms per item per stage beyond model time.

    python benchmarks/pipeline_overhead.py [--images 64] [--shard-size 16]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MKL_CBWR", "COMPATIBLE")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

MODEL_TIME: dict[str, float] = defaultdict(float)
LOAD_TIME: dict[str, float] = defaultdict(float)


def timed(cls, method: str, key: str, table: dict = MODEL_TIME) -> None:
    original = getattr(cls, method)

    def wrapper(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            table[key] += time.perf_counter() - start

    setattr(cls, method, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=16)
    args = parser.parse_args()

    from tiny_models import make_tiny_open_clip
    from tiny_models import export_tiny_u2net
    from tiny_models import build_tiny_sd

    from xpaste.generate.diffusers_t2i import DiffusersGenerator
    from xpaste.stages.build_pool import build_pool
    from xpaste.stages.config import load_config
    from xpaste.pipeline.runner import run_stage
    from xpaste.stages.run import make_stage
    from xpaste.score.clip import ClipScorer
    from xpaste.segment.grabcut import GrabCutSegmenter
    from xpaste.segment.rembg_backend import RembgSegmenter

    timed(DiffusersGenerator, "generate", "generate")
    timed(GrabCutSegmenter, "segment", "segment")
    timed(RembgSegmenter, "segment", "segment")
    timed(ClipScorer, "embed_images", "score")
    timed(ClipScorer, "embed_texts", "score")
    timed(DiffusersGenerator, "__init__", "generate", LOAD_TIME)  # loading models is not per-item overhead
    timed(RembgSegmenter, "__init__", "segment", LOAD_TIME)
    timed(ClipScorer, "__init__", "score", LOAD_TIME)

    tmp = Path(tempfile.mkdtemp(prefix="xpaste-overhead-"))
    for sub in ("sd", "clip"):
        (tmp / sub).mkdir()
    build_tiny_sd(tmp / "sd")
    clip = make_tiny_open_clip(tmp / "clip")
    onnx = export_tiny_u2net(str(tmp / "u2net.onnx"))
    per_category = max(1, args.images // 4)
    config = load_config(None, [], [{
        "run_dir": str(tmp / "run"), "shard_size": args.shard_size, "device": "cpu",
        "categories": {"source": "cup,ball,dog,car"},
        "generate": {"models": [str(tmp / "sd")], "per_category": per_category, "steps": 2, "height": 64,
                     "width": 64, "batch_size": 8, "scheduler": "ddim"},
        "segment": {"segmenters": ["grabcut", f"rembg:{onnx}"]},
        "score": {"clip": f"local-dir:{clip}", "pretrained": None},
        "build_pool": {"d": 1000.0, "area_min": 0.0, "area_max": 1.0},
    }]).to_dict()  # stages read plain dicts
    rows = []
    for name in ("generate", "segment", "score"):
        start = time.perf_counter()
        report = run_stage(make_stage(name, Path(config["run_dir"]), config), progress=False)
        wall = time.perf_counter() - start
        rows.append((name, report.items, wall, MODEL_TIME[name], LOAD_TIME[name]))
    start = time.perf_counter()
    summary = build_pool(config["run_dir"], config, progress=False)
    rows.append(("build-pool", summary["candidates"], time.perf_counter() - start, 0.0, 0.0))

    print(f"\nPipeline overhead, local engine, {per_category * 4} images 64x64, shard size {args.shard_size}, "
          "tiny random models (model time = time inside generate/segment/embed calls)")
    print(f"{'stage':<11} {'items':>6} {'wall s':>8} {'load s':>7} {'model s':>8} {'overhead ms/item':>17}")
    for name, items, wall, model, load in rows:
        overhead = 1000 * (wall - model - load) / max(items, 1)
        print(f"{name:<11} {items:>6} {wall:8.2f} {load:7.2f} {model:8.2f} {overhead:17.2f}")
    print("segment items are images (x2 segmenters); score items are (image, segmenter) cut-outs; build-pool has no "
          "model calls (its time is all overhead: joins, connected components, compressing cut-outs into the "
          "pool's data shards and writing its Parquet index)")


if __name__ == "__main__":
    main()
