"""Peak memory of `xpaste augment` with 1 and N worker processes on a large synthetic LVIS-like json.

The whole run's memory is the sum over the driver and its workers, sampled every 20 ms from /proc:
- PSS (proportional set size: a page shared by k processes counts 1/k in each) - the memory the run
  really holds;
- RSS (each process's resident pages, shared ones counted in every process) - an upper bound.
The dataset is loaded once by the driver; workers are forked after it packs the annotations into two
numpy arrays (augment_stage.PackedDataset) and drops the per-annotation dicts, so they share it.

    python benchmarks/augment_memory.py [--images 40000] [--annotations 500000] [--workers 4]
        [--src OTHER_CHECKOUT/src]   # measure another source tree (e.g. an older commit) the same way
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from scale import H, W, write_lvis_like  # noqa: E402


def tree_memory(pid: int) -> tuple[int, int]:
    """(sum of PSS, sum of RSS) in bytes over `pid` and its descendants (0, 0 once it has exited)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0
    pss = rss = 0
    for p in procs:
        try:
            with open(f"/proc/{p.pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1]) * 1024
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            pass
    return pss, rss


def measure(cmd: list[str], env: dict) -> tuple:
    """Run `cmd`; return (wall s, peak summed PSS MiB, peak summed RSS MiB, most processes seen, and the
    peak summed PSS and RSS while workers run (more than one process))."""
    import psutil

    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    peak_pss = peak_rss = work_pss = work_rss = 0
    most = 1
    while proc.poll() is None:
        pss, rss = tree_memory(proc.pid)
        peak_pss, peak_rss = max(peak_pss, pss), max(peak_rss, rss)
        try:
            n = 1 + len(psutil.Process(proc.pid).children(recursive=True))
        except psutil.NoSuchProcess:
            n = 1
        most = max(most, n)
        if n > 1:
            work_pss, work_rss = max(work_pss, pss), max(work_rss, rss)
        time.sleep(0.02)
    err = proc.stderr.read()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err[-2000:]}")
    mib = 2**20
    return (time.perf_counter() - start, peak_pss / mib, peak_rss / mib, most, work_pss / mib, work_rss / mib)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40_000)
    parser.add_argument("--annotations", type=int, default=500_000)
    parser.add_argument("--augment-images", type=int, default=96)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--src", type=Path, default=None, help="source tree to measure (PYTHONPATH)")
    parser.add_argument("--keep", type=Path, default=None, help="reuse/keep the synthetic data in this folder")
    args = parser.parse_args()
    tmp = args.keep or Path(tempfile.mkdtemp(prefix="xpaste-augmem-"))
    tmp.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if args.src:
        env["PYTHONPATH"] = str(args.src.resolve())
    xpaste = [sys.executable, "-m", "xpaste"]
    try:
        big = tmp / "lvis_like.json"
        if not big.exists():
            write_lvis_like(big, args.images, args.annotations)
        images = tmp / "images"
        if not images.exists():
            from PIL import Image

            images.mkdir()
            rng = np.random.default_rng(0)
            for i in range(1, args.augment_images + 1):
                Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(images / f"{i:012d}.jpg",
                                                                                      quality=85)
        if not (tmp / "pool" / "pool.json").exists():
            from xpaste.pool.store import InstancePool

            rng = np.random.default_rng(1)
            cats = [{"id": c, "name": f"category_{c}"} for c in range(1, 1204)]
            with InstancePool.create(tmp / "pool", cats) as pool:
                for k in range(200):
                    h, w = (int(v) for v in rng.integers(30, 160, 2))
                    rgba = np.zeros((h, w, 4), np.uint8)
                    rgba[..., :3] = rng.integers(0, 256, 3)
                    rgba[..., 3] = 255
                    rgba[0, 0, 3] = 254 - k % 200  # distinct pixels -> distinct ids
                    pool.add(rgba, 1 + (k * 7) % 1203)
        rows = []
        for workers in (1, args.workers):
            out = tmp / f"aug-{workers}"
            shutil.rmtree(out, ignore_errors=True)
            cmd = [*xpaste, "augment", "--dataset", str(big), "--images", str(images), "--pool", str(tmp / "pool"),
                   "--out", str(out), "--max-images", str(args.augment_images), "--num-paste", "10",
                   "--workers", str(workers), "--scale-prior", "none"]
            rows.append((workers, *measure(cmd, env)))
        size = big.stat().st_size / 2**20
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"\naugment memory: {args.images:,} images, {args.annotations:,} annotations ({size:.0f} MiB json), "
          f"{args.augment_images} images augmented; source {args.src or 'this checkout'}")
    print(f"{'workers':>7} {'processes':>9} {'seconds':>8} {'peak PSS sum MiB':>17} {'peak RSS sum MiB':>17} "
          f"{'PSS/RSS while workers run':>26}")
    for workers, wall, pss, rss, most, work_pss, work_rss in rows:
        during = f"{work_pss:.0f} / {work_rss:.0f}" if most > 1 else "-"
        print(f"{workers:>7} {most:>9} {wall:8.1f} {pss:17.0f} {rss:17.0f} {during:>26}")
    base = rows[0]
    last = rows[-1]
    print(f"{args.workers} workers / 1 worker: PSS x{last[2] / base[2]:.2f}, RSS x{last[3] / base[3]:.2f}")


if __name__ == "__main__":
    main()
