"""Scale: an LVIS-sized annotation file through `stats` and `augment` (a subset), and a 1M-row pool index.

Writes a synthetic LVIS-like dataset (default 100k images, 1.27M annotations as compressed RLE, 1,203
categories with r/c/f frequencies) to a temp folder, then runs each step as its own `xpaste` process and
reports wall time and peak memory (max RSS). Takes a few minutes and ~1 GB of disk.

    python benchmarks/scale.py [--images 100000] [--annotations 1270000] [--augment-images 200]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

H, W = 480, 640


def rect_rle_counts(x0: int, y0: int, w: int, h: int) -> list[int]:
    """Uncompressed column-major COCO RLE of a w x h rectangle at (x0, y0) in an H x W image."""
    counts = [x0 * H + y0]
    for _ in range(w - 1):
        counts += [h, H - h]
    counts += [h, H * W - (x0 + w - 1) * H - y0 - h]
    return counts


def write_lvis_like(path: Path, n_images: int, n_anns: int, seed: int = 0) -> None:
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(seed)
    n_cats = 1203
    freq = np.array(["r"] * 337 + ["c"] * 461 + ["f"] * 405)
    # long tail: category of each annotation ~ Zipf-like over categories
    weights = 1.0 / np.arange(1, n_cats + 1) ** 1.1
    cat_of = rng.choice(n_cats, size=n_anns, p=weights / weights.sum()) + 1
    img_of = np.sort(rng.integers(0, n_images, size=n_anns)) + 1
    ws, hs = rng.integers(4, 120, n_anns), rng.integers(4, 120, n_anns)
    xs, ys = rng.integers(0, W - 120, n_anns), rng.integers(0, H - 120, n_anns)
    with open(path, "w") as f:
        f.write('{"info": {"description": "synthetic LVIS-sized"}, "categories": ')
        json.dump([{"id": i + 1, "name": f"category_{i + 1}", "frequency": str(freq[i]), "synonyms": [],
                    "def": ""} for i in range(n_cats)], f)
        f.write(', "images": ')
        json.dump([{"id": i, "file_name": f"{i:012d}.jpg", "height": H, "width": W, "neg_category_ids": [],
                    "not_exhaustive_category_ids": []} for i in range(1, n_images + 1)], f)
        f.write(', "annotations": [')
        for k in range(n_anns):
            rle = mask_utils.frPyObjects({"size": [H, W], "counts": rect_rle_counts(int(xs[k]), int(ys[k]), int(ws[k]),
                                                                                   int(hs[k]))}, H, W)
            ann = {"id": k + 1, "image_id": int(img_of[k]), "category_id": int(cat_of[k]),
                   "segmentation": {"size": [H, W], "counts": rle["counts"].decode()}, "area": int(ws[k] * hs[k]),
                   "bbox": [int(xs[k]), int(ys[k]), int(ws[k]), int(hs[k])], "iscrowd": 0}
            f.write(("," if k else "") + json.dumps(ann))
        f.write("]}")


PEAK_WRAPPER = (
    "import resource, runpy, sys\n"
    "sys.argv = ['xpaste'] + sys.argv[1:]\n"
    "try:\n"
    "    runpy.run_module('xpaste', run_name='__main__')\n"
    "except SystemExit as e:\n"
    "    code = e.code\n"
    "finally:\n"
    "    print('PEAK_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
    "sys.exit(code or 0)\n"
)


def run(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one xpaste process (it reports its own ru_maxrss at exit)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PEAK_WRAPPER, *cmd], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"xpaste {' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    peak = [line.split()[1] for line in done.stderr.splitlines() if line.startswith("PEAK_KIB")]
    return wall, int(peak[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--annotations", type=int, default=1_270_000)
    parser.add_argument("--augment-images", type=int, default=200)
    parser.add_argument("--pool-rows", type=int, default=1_000_000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="xpaste-scale-"))
    rows = []
    try:
        start = time.perf_counter()
        big = tmp / "lvis_like.json"
        write_lvis_like(big, args.images, args.annotations)
        rows.append((f"write json ({big.stat().st_size / 2**20:.0f} MiB)", time.perf_counter() - start, float("nan")))
        rows.append(("xpaste stats",) + run(["stats", str(big), "--out", str(tmp / "stats.json")]))

        from PIL import Image

        from xpaste.pool.store import InstancePool

        images = tmp / "images"
        images.mkdir()
        rng = np.random.default_rng(0)
        for i in range(1, args.augment_images + 1):
            Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(images / f"{i:012d}.jpg", quality=85)
        cats = [{"id": c, "name": f"category_{c}"} for c in range(1, 1204)]
        with InstancePool.create(tmp / "pool", cats) as pool:
            for k in range(300):
                h, w = (int(v) for v in rng.integers(30, 200, 2))
                rgba = np.zeros((h, w, 4), np.uint8)
                rgba[..., :3] = rng.integers(0, 256, 3)
                rgba[..., 3] = 255
                rgba[0, 0, 3] = 254 - k % 200  # distinct pixels -> distinct ids
                pool.add(rgba, 1 + (k * 7) % 1203)
        rows.append((f"xpaste augment --max-images {args.augment_images} (1 worker)",) + run(
            ["augment", "--dataset", str(big), "--images", str(images), "--pool", str(tmp / "pool"),
             "--out", str(tmp / "aug"), "--max-images", str(args.augment_images), "--num-paste", "10"]))

        sys.path.insert(0, str(Path(__file__).parent))
        import pyarrow as pa
        import pyarrow.parquet as pq

        big_pool = tmp / "bigpool"
        (big_pool / "index").mkdir(parents=True)
        header = json.loads((tmp / "pool" / "pool.json").read_text())  # an index of 1M PNG rows: version 1 layout
        header.update(version=1, codec=None)
        (big_pool / "pool.json").write_text(json.dumps(header))
        n = args.pool_rows
        cat = np.arange(n) % 1203 + 1
        ids = [f"{i:020x}" for i in range(n)]
        table = pa.table({"instance_id": ids, "category_id": cat, "path": [f"instances/{c}/{i}.png" for c, i in zip(cat, ids)],
                          "width": np.full(n, 100), "height": np.full(n, 80), "clip_score": rng.random(n) * 30})
        for k in range(10):
            pq.write_table(table.slice(k * n // 10, n // 10), big_pool / "index" / f"part-{k:06d}.parquet")
        code = (f"import resource, time; t=time.perf_counter(); from xpaste.pool.store import InstancePool; "
                f"p=InstancePool.open({str(big_pool)!r}); print(time.perf_counter()-t, len(p), "
                f"resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
        out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()
        rows.append((f"InstancePool.open, {int(out[1]):,} rows (time inside the process)", float(out[0]),
                     int(out[2]) / 1024))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nScale ({args.images:,} images, {args.annotations:,} annotations, RLE)")
    print(f"{'step':<58} {'seconds':>8} {'peak RSS MiB':>13}")
    for name, seconds, rss in rows:
        print(f"{name:<58} {seconds:8.1f} {rss:13.0f}")
    print("each step is its own process; peak RSS is that process's ru_maxrss")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
