"""Pool on disk vs in memory: CopyPaste images/s on one core, cache cold and warm, interleaved in one process.

Workload (issue 13): a 640x640 RGB destination with 8 instances, 10 pastes per image, hard blending, uniform
sampling over the whole pool. Cut-outs are synthetic photo-like RGBA crops (smooth multi-scale texture plus
sensor noise, irregular alpha), 40-300 px a side (mean ~170 px), written as `xpaste pool import-coco` writes
them (PoolWriter, default codec, a flush every 500 rows, closed). "cold": a freshly opened pool (empty cut-out
cache; the OS page cache is whatever the machine holds: this script does not drop it). "warm": the same images
again on that pool (each drawn cut-out is then in the default 256 MB cache). The in-memory pool holds the same
cut-outs as arrays (at 100k, the first 10k of them: a paste costs the same whatever the pool size).

    python benchmarks/pool_throughput.py [--sizes 10000,100000] [--images 150] [--rounds 3] [--png] [--keep DIR]
                                         [--json FILE]

--json writes the table's rows ({"rows": [{"section", "name", "value", "unit", "ratio", "ratio_to"}]}, the form
`benchmarks/bench.py` gathers into one table).

--png also writes the 10k pool in the old format (one PNG per cut-out, version 1) for comparison.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import paste_throughput  # noqa: E402

from xpaste import CopyPaste, InstancePool, Sample  # noqa: E402
from xpaste.pool.layout import shard_name  # noqa: E402
from xpaste.pool.writer import PoolWriter  # noqa: E402

cv2.setNumThreads(1)
N_CATS = 100
FLUSH_EVERY = 500  # as xpaste.pool.importers


def photo_like(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """An RGBA crop with image statistics (smooth regions, edges, noise) and an irregular blob alpha."""
    rgb = np.zeros((h, w, 3), np.float32)
    for cells, amp in ((2, 90.0), (6, 45.0), (20, 20.0)):
        small = rng.normal(0, 1, (cells, cells, 3)).astype(np.float32)
        rgb += amp * cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    rgb += rng.normal(0, 4, (h, w, 3)).astype(np.float32) + rng.uniform(60, 190, 3).astype(np.float32)
    yy, xx = np.mgrid[:h, :w]
    r = np.sqrt(((yy + 0.5 - h / 2) / (h / 2)) ** 2 + ((xx + 0.5 - w / 2) / (w / 2)) ** 2)
    wobble = cv2.resize(rng.normal(0, 0.12, (4, 4)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    rgba = np.empty((h, w, 4), np.uint8)
    rgba[..., :3] = np.clip(rgb, 0, 255)
    rgba[..., 3] = (r < 1 + wobble) * 255
    rgba[h // 2, w // 2, 3] = 255
    return rgba


def cutouts(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for i in range(n):
        h, w = (int(v) for v in rng.integers(40, 301, 2))
        yield photo_like(rng, h, w), 1 + i % N_CATS


def write_pool(root: Path, n: int) -> float:
    start = time.perf_counter()
    cats = [{"id": c, "name": f"c{c}"} for c in range(1, N_CATS + 1)]
    with PoolWriter.create(root, cats, config={"benchmark": n}) as w:
        for rgba, cid in cutouts(n):
            w.add(rgba, cid, crop=False, source="gt")
            if w.pending_count >= FLUSH_EVERY:
                w.flush()
    return time.perf_counter() - start


def write_png_pool(root: Path, n: int) -> None:
    """The old layout (version 1): one PNG per cut-out, Parquet index, as xpaste 0.1 wrote it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from xpaste.pool.codec import encode_png

    rows = []
    for i, (rgba, cid) in enumerate(cutouts(n)):
        rel = f"instances/{cid}/{i:08d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(encode_png(rgba))
        rows.append({"instance_id": f"{i:020d}", "category_id": cid, "path": rel, "width": rgba.shape[1],
                     "height": rgba.shape[0]})
    (root / "index").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), root / "index" / "part-000000.parquet")
    cats = [{"id": c, "name": f"c{c}"} for c in range(1, N_CATS + 1)]
    (root / "pool.json").write_text(json.dumps({"format": "xpaste-pool", "version": 1, "categories": cats}))


def make_sample(seed: int = 0) -> Sample:
    """The issue's destination (640x640, 8 instances; paste_throughput.make_sample) with this pool's labels."""
    return paste_throughput.make_sample(seed, labels=(1, N_CATS + 1))


def run_paired(pools: dict[str, InstancePool], sample: Sample, images: int, seed: int) -> dict[str, float]:
    """images/s of CopyPaste per pool, the pools taking turns image by image (same draws for every pool, so
    the load of a shared machine falls on all of them alike). Same seed -> same cut-outs drawn."""
    transforms = {name: CopyPaste(pool, num_paste=10, sampling="uniform", blend="hard", seed=seed, scale_prior={})
                  for name, pool in pools.items()}
    spent = dict.fromkeys(pools, 0.0)
    names = list(pools)
    for i in range(images):
        for name in names if i % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            transforms[name](sample)
            spent[name] += time.perf_counter() - start
    return {name: images / spent[name] for name in names}


def open_time_1m(tmp: Path, rows: int = 1_000_000) -> float:
    """Seconds to open a pool whose index lists `rows` cut-outs (index only; the pixels are not needed)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp / "index-1m"
    shutil.rmtree(root, ignore_errors=True)
    with PoolWriter.create(root, [{"id": c, "name": f"c{c}"} for c in range(1, N_CATS + 1)]):
        pass
    (root / "index").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    table = pa.table({"instance_id": [f"{i:020x}" for i in range(rows)],
                      "category_id": rng.integers(1, N_CATS + 1, rows), "category": [""] * rows,
                      "path": [f"data/shard-{i // 10000:06d}.bin" for i in range(rows)],
                      "width": rng.integers(40, 301, rows), "height": rng.integers(40, 301, rows),
                      "shard": np.arange(rows) // 10000, "offset": np.zeros(rows, np.int64),
                      "nbytes": np.full(rows, 100_000, np.int64)})
    pq.write_table(table, root / "index" / "part-000000.parquet")
    for number in range((rows + 9999) // 10000):  # sparse data shards as long as the index says (open checks it)
        shard = root / shard_name(number)
        shard.parent.mkdir(parents=True, exist_ok=True)
        with open(shard, "wb") as f:
            f.truncate(100_000)
    (root / "index" / "manifest.json").write_text(json.dumps({"parts": ["part-000000.parquet"]}))
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        pool = InstancePool.open(root)
        pool.sample(rng, 10)
        best = min(best, time.perf_counter() - start)
    assert len(pool) == rows
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000", help="pool sizes, comma separated")
    parser.add_argument("--images", type=int, default=150, help="images per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median reported)")
    parser.add_argument("--png", action="store_true", help="also measure the old one-PNG-per-cut-out layout (10k)")
    parser.add_argument("--keep", type=Path, default=None, help="write pools here and keep them")
    parser.add_argument("--json", type=Path, default=None, help="write the rows here (for benchmarks/bench.py)")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, opencv {cv2.__version__}, one core")
    tmp = args.keep or Path(tempfile.mkdtemp(prefix="xpaste-pool-bench-"))
    import pyarrow.parquet  # noqa: F401 - imported once here, so "open s" is the open itself
    sample = make_sample()
    try:
        memory = None
        results = []
        for n in (int(s) for s in args.sizes.split(",")):
            root = tmp / f"pool{n}"
            if not (root / "pool.json").exists():
                seconds = write_pool(root, n)
                print(f"wrote {n} cut-outs in {seconds:.0f} s ({n / seconds:.0f}/s)", flush=True)
            size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
            files = sum(1 for f in root.rglob("*") if f.is_file())
            if memory is None:
                memory = InstancePool.from_arrays(*zip(*cutouts(min(n, 10000))))
            start = time.perf_counter()
            InstancePool.open(root)
            opened = time.perf_counter() - start
            disk = f"on disk v2 ({size / n / 1024:.0f} KiB/cut-out, {files} files)"
            openers = {"in memory": lambda: memory, disk: lambda root=root: InstancePool.open(root)}
            if args.png and n == 10000:
                png = tmp / "png10000"
                if not (png / "pool.json").exists():
                    write_png_pool(png, n)
                openers["on disk v1, one PNG per cut-out"] = lambda png=png: InstancePool.open(png)
            rates: dict[str, list[tuple[float, float]]] = {name: [] for name in openers}
            for r in range(args.rounds):
                pools = {name: get() for name, get in openers.items()}  # disk pools: freshly opened, cache empty
                cold = run_paired(pools, sample, args.images, seed=100 + r)
                warm = run_paired(pools, sample, args.images, seed=100 + r)
                for name in openers:
                    rates[name].append((cold[name], warm[name]))
            base = np.median([c for c, _ in rates["in memory"]]), np.median([w for _, w in rates["in memory"]])
            for name, values in rates.items():
                cold, warm = np.median([c for c, _ in values]), np.median([w for _, w in values])
                results.append((n, name, cold, warm, cold / base[0], warm / base[1], opened))
        print(f"\nCopyPaste, 640x640, 8 instances, 10 pastes, hard blend, uniform sampling; median of "
              f"{args.rounds} rounds of {args.images} images, the pools taking turns image by image")
        print(f"{'pool':>7}  {'storage':<52} {'cold img/s':>10} {'warm img/s':>10} {'cold x':>7} {'warm x':>7} {'open s':>7}")
        for n, name, cold, warm, rc, rw, opened in results:
            print(f"{n:>7}  {name:<52} {cold:10.1f} {warm:10.1f} {rc:7.2f} {rw:7.2f} {opened:7.3f}")
        open_1m = open_time_1m(tmp)
        print(f"\nopen a 1,000,000-row pool (index only, one Parquet part): {open_1m:.2f} s")
        if args.json is not None:
            rows = [{"section": "pool on disk", "name": f"{n // 1000}k cut-outs {name.split(' (')[0]}, {state}",
                     "value": round(rate, 1), "unit": "images/s", "ratio": round(ratio, 3),
                     "ratio_to": "the same cut-outs in memory"}
                    for n, name, cold, warm, rc, rw, _ in results if name != "in memory"
                    for state, rate, ratio in (("cold", cold, rc), ("warm", warm, rw))]
            rows.append({"section": "pool on disk", "name": "open a 1M-row pool", "value": round(open_1m, 3),
                         "unit": "s", "ratio": None, "ratio_to": None})
            args.json.write_text(json.dumps({"rows": rows}, indent=1))
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
