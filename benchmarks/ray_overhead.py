"""Ray engine versus local engine on this machine, with the tiny offline models of the tests. Prints a table.

The tiny models make compute nearly free, so the difference is the engine's own cost per item: starting
the actor pool and building the models in every actor (the local engine builds them once), shipping the
stage to the actors, scheduling one shard per task and streaming status rows back. "ray x1" uses one actor
(the same parallelism as the local engine: one process, OMP_NUM_THREADS=1), "ray xN" one actor per CPU.
Ray's own start-up (ray.init) is printed apart: `xpaste run` pays it once for all stages.

    python benchmarks/ray_overhead.py [--n 64] [--shard-size 8] [--cpus 2] [--segmenters ...]

Run it from the repository root (the tiny model builders live in tests/).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

# thread counts and MKL's code path change float results: pin them before torch loads (determinism.py)
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_CBWR", "COMPATIBLE")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

STAGES = ("generate", "segment", "score")
CATEGORIES = ["cup", "cat", "dog", "bird"]


def build_models(folder: Path) -> dict:
    from tiny_models import make_tiny_open_clip
    from tiny_models import export_tiny_u2net, make_tiny_clipseg
    from tiny_models import build_tiny_sd

    for sub in ("sd", "clip", "clipseg"):
        (folder / sub).mkdir(parents=True)
    build_tiny_sd(folder / "sd")
    return {"sd": str(folder / "sd"), "clip": make_tiny_open_clip(folder / "clip"),
            "clipseg": make_tiny_clipseg(str(folder / "clipseg")),
            "u2net": export_tiny_u2net(str(folder / "u2net_tiny.onnx"))}


def make_config(run_dir: Path, models: dict, n: int, shard_size: int, segmenters: list[str]) -> dict:
    from xpaste.stages.config import load_config

    specs = {"grabcut": "grabcut", "clipseg": f"clipseg:{models['clipseg']}", "rembg": f"rembg:{models['u2net']}"}
    updates = {
        "run_dir": str(run_dir), "shard_size": shard_size, "device": "cpu",
        "categories": {"source": ",".join(CATEGORIES)},
        "generate": {"models": [models["sd"]], "per_category": -(-n // len(CATEGORIES)), "seed": 0, "steps": 2,
                     "height": 64, "width": 64, "batch_size": 4, "scheduler": "ddim"},
        "segment": {"segmenters": [specs[s] for s in segmenters]},
        "score": {"clip": f"local-dir:{models['clip']}", "pretrained": None, "batch_size": 16},
        "build_pool": {"d": 1000.0, "area_min": 0.0, "area_max": 1.0},
    }
    return load_config(None, [], [updates]).to_dict()  # merged over the defaults and validated, as the CLI does


def run_pipeline(run_dir: Path, config: dict, engine: str) -> dict[str, dict]:
    """Time each stage through `run_stage` (the code path of the CLI); for Ray also keep the timings that
    `run_on_ray` returns (start-up, in-actor shard seconds)."""
    from xpaste.pipeline import engines
    from xpaste.stages.build_pool import build_pool
    from xpaste.pipeline.runner import run_stage
    from xpaste.stages.run import make_stage

    original, captured = engines.run_on_ray, {}

    def capture(*args, **kwargs):
        captured.update(original(*args, **kwargs))
        return captured

    engines.run_on_ray = capture  # run_stage picks its engine from the module at call time (select_engine)
    out = {}
    try:
        for name in STAGES:
            captured.clear()
            start = time.perf_counter()
            report = run_stage(make_stage(name, run_dir, config), engine=engine, progress=False)
            out[name] = {"items": report.items, "shards": report.shards, "seconds": time.perf_counter() - start,
                         **captured}
    finally:
        engines.run_on_ray = original
    build_pool(run_dir, config, progress=False)
    return out


def pool_ids(run_dir: Path) -> list:
    from xpaste.pool.store import InstancePool

    rows = InstancePool.open(run_dir / "pool").records().to_pylist()
    return [(r["instance_id"], r["candidate_id"], r["segmenter"], round(r["clip_score"], 4)) for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="candidate images (generated, then segmented)")
    parser.add_argument("--shard-size", type=int, default=8)
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="CPUs of the local Ray instance")
    parser.add_argument("--segmenters", default="grabcut,clipseg,rembg")
    args = parser.parse_args()

    import ray

    work = Path(tempfile.mkdtemp(prefix="xpaste-bench-"))
    ray_tmp = tempfile.mkdtemp(prefix="xb", dir="/tmp")  # Ray's socket paths must stay short
    segmenters = [s for s in args.segmenters.split(",") if s]
    runs: dict[str, dict] = {}
    try:
        models = build_models(work / "models")

        def run(label: str, engine: str) -> None:
            run_dir = work / label.replace(" ", "_")
            runs[label] = run_pipeline(run_dir, make_config(run_dir, models, args.n, args.shard_size, segmenters),
                                       engine)

        run("local", "local")
        start = time.perf_counter()
        ray.init(address="local", num_cpus=args.cpus, object_store_memory=200 * 2**20, include_dashboard=False,
                 log_to_driver=False, _temp_dir=ray_tmp)
        ray_init = time.perf_counter() - start
        for actors in sorted({1, args.cpus}):
            os.environ["XPASTE_RAY_ACTORS"] = str(actors)  # read by xpaste.pipeline.engines.run_on_ray
            run(f"ray x{actors}", "ray")
        same = {label: pool_ids(work / label.replace(" ", "_")) == pool_ids(work / "local")
                for label in runs if label != "local"}
        ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(ray_tmp, ignore_errors=True)

    print(f"\n{args.n} candidates, shard_size {args.shard_size}, segmenters {','.join(segmenters)}, "
          f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f}; ray.init {ray_init:.1f} s (paid once per process, not in the table)")
    print("start-up: actor pool up and models built (time to the first shard minus its work); steady: per item "
          "once the first shard is back (compare with the local ms/item, which includes its model building)")
    print(f"{'stage':<9} {'engine':<7} {'items':>5} {'seconds':>8} {'ms/item':>8} {'overhead ms/item':>16} "
          f"{'start-up s':>10} {'steady ms/item':>14}")
    for name in (*STAGES, "all 3"):
        local = runs["local"][name]["seconds"] if name != "all 3" else sum(r["seconds"] for r in runs["local"].values())
        for label, result in runs.items():
            if name == "all 3":  # per candidate image, all three stages
                r = {"items": result["generate"]["items"], "seconds": sum(v["seconds"] for v in result.values())}
            else:
                r = result[name]
            n, seconds = r["items"], r["seconds"]
            cols = f"{name:<9} {label:<7} {n:>5} {seconds:>8.2f} {1000 * seconds / n:>8.1f} "
            if label == "local":
                print(cols)
                continue
            cols += f"{1000 * (seconds - local) / n:>+16.1f} "
            if "wall_s" in r and r["shards"] > 1:
                # after the first shard is back: lazily built models (generate's) are in place by then
                steady = r["wall_s"] - r["startup_s"] - r["first_shard_s"]
                cols += f"{r['startup_s']:>10.2f} {1000 * steady / (n - min(n, args.shard_size)):>14.1f}"
            print(cols)
    print("pool equal to the local engine's: " + ", ".join(f"{k}: {v}" for k, v in same.items()))


if __name__ == "__main__":
    main()
