"""Paste throughput on one core, and `augment` end to end with 1 and 2 workers. Prints tables.

Workload (issue 3): a 640x640 RGB destination with 8 instances (full-size bool masks), an in-memory pool of
200 RGBA cut-outs 40-300 px in 50 categories, 10 pastes per image, hard blending.

    python benchmarks/paste_throughput.py [--seconds 3] [--profile] [--no-augment]
"""
from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from xpaste import CopyPaste, InstancePool, Sample, Targets  # noqa: E402
from xpaste.ops.masks import tight_boxes  # noqa: E402

cv2.setNumThreads(1)  # one core, as the reference numbers


def make_pool(seed: int = 0) -> InstancePool:
    rng = np.random.default_rng(seed)
    arrays, cats = [], []
    for i in range(200):
        h, w = (int(v) for v in rng.integers(40, 301, 2))
        rgba = np.zeros((h, w, 4), np.uint8)
        rgba[..., :3] = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        yy, xx = np.mgrid[:h, :w]
        rgba[..., 3] = (((yy - h / 2) / (h / 2)) ** 2 + ((xx - w / 2) / (w / 2)) ** 2 < 1) * 255
        arrays.append(rgba)
        cats.append(i % 50)
    return InstancePool.from_arrays(arrays, cats)


def make_sample(seed: int = 0, size: int = 640, n: int = 8, labels: tuple[int, int] = (0, 50)) -> Sample:
    """A size x size random image with n elliptical instances, labels ~ U[labels[0], labels[1])."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    masks = np.zeros((n, size, size), bool)
    for i in range(n):
        h, w = (int(v) for v in rng.integers(40, 250, 2))
        y, x = (int(v) for v in rng.integers(0, size - 250, 2))
        yy, xx = np.mgrid[:h, :w]
        masks[i, y : y + h, x : x + w] = ((yy - h / 2) / (h / 2)) ** 2 + ((xx - w / 2) / (w / 2)) ** 2 < 1
    return Sample(image, Targets(tight_boxes(masks), masks, rng.integers(*labels, n)))


def rate(fn, seconds: float) -> float:
    fn()  # warm-up
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        count += 1
    return count / (time.perf_counter() - start)


def paste_table(seconds: float, profile: bool) -> None:
    pool, sample = make_pool(), make_sample()
    lvis_like_prior = {c: (0.12, 0.08) for c in range(50)}  # LVIS-like: most objects are small
    configs = [
        ("hard, uniform scale 0.05-0.3 (issue workload)", dict(blend="hard")),
        ("hard, scale prior N(0.12, 0.08)", dict(blend="hard", scale_prior=lvis_like_prior)),
        ("hard + rotation 30 + colour jitter", dict(blend="hard", max_rotation=30, color_jitter=0.2)),
        ("alpha", dict(blend="alpha")),
        ("gaussian", dict(blend="gaussian")),
        ("poisson (local seamlessClone)", dict(blend="poisson")),
    ]
    print("\nPaste throughput, one core, 640x640, 8 instances, pool 200 in memory, 10 pastes/image")
    print(f"{'configuration':<48} {'images/s':>9} {'ms/image':>9}")
    for name, kwargs in configs:
        kwargs.setdefault("scale_prior", {})  # the workload: the no-prior rule, U(0.05, 0.3)
        cp = CopyPaste(pool, num_paste=10, seed=0, **kwargs)
        r = rate(lambda: cp(sample), seconds)
        print(f"{name:<48} {r:9.1f} {1000 / r:9.2f}")
    print("reference (issue 3, same workload, one core): official X-Paste ~2.8/s, mmdet CopyPaste ~64/s, "
          "torchvision SimpleCopyPaste ~43/s")
    if profile:
        cp = CopyPaste(pool, num_paste=10, seed=0, scale_prior={})
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(300):
            cp(sample)
        prof.disable()
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(12)
        print("\nWhere the time goes (hard blend, 300 images, sorted by own time):")
        print("\n".join(line for line in out.getvalue().splitlines() if line.strip())[:4000])


def augment_table(n_images: int) -> None:
    from PIL import Image

    from xpaste.augment import augment_dataset
    from xpaste.data.coco import annotation_from_mask

    tmp = Path(tempfile.mkdtemp(prefix="xpaste-bench-"))
    try:
        images_dir = tmp / "images"
        images_dir.mkdir()
        rng = np.random.default_rng(0)
        images, anns = [], []
        for i in range(n_images):
            s = make_sample(i, 640, 8)
            Image.fromarray(s.image).save(images_dir / f"{i}.jpg", quality=90)
            images.append({"id": i + 1, "file_name": f"{i}.jpg", "height": 640, "width": 640})
            for m, c in zip(s.targets.masks, s.targets.labels):
                anns.append(annotation_from_mask(m, int(c), len(anns) + 1, i + 1))
        cats = [{"id": c, "name": f"c{c}"} for c in range(50)]
        import json

        (tmp / "ann.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
        pool = make_pool()
        with InstancePool.create(tmp / "pool", cats) as disk_pool:
            for row in range(len(pool)):
                disk_pool.add(pool.rgba(row), int(pool.category_ids[row]))
        print(f"\naugment end to end ({n_images} JPEG images 640x640, 8 instances, 10 pastes, pool on disk): "
              "decode, paste, JPEG encode, RLE, part files")
        print(f"{'workers':>7} {'images/s':>9}")
        for workers in (1, 2):
            out = tmp / f"out{workers}"
            start = time.perf_counter()
            augment_dataset(tmp / "ann.json", images_dir, tmp / "pool", out, copies=1, seed=0, workers=workers,
                            progress=False, num_paste=10)
            print(f"{workers:>7} {n_images / (time.perf_counter() - start):9.1f}")
        _ = rng
        split_table(tmp, images_dir, n_images)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


SPLIT = [  # (part, function names whose cumulative time it is), in the order an augment task calls them
    ("decode (read image, rasterise annotations)", ("load_sample",)),
    ("paste (CopyPaste: plan, cut-outs from disk, blend, occlusion)", ("__call__",)),
    ("JPEG encode", ("encode_image",)),
    ("write image", ("write_bytes_atomic",)),
    ("RLE encode", ("masks_to_rles",)),
]


def split_table(tmp: Path, images_dir: Path, n_images: int) -> None:
    """Where one worker's time goes: cProfile cumulative time of each part of an augment task."""
    from xpaste.augment import augment_dataset

    prof = cProfile.Profile()
    start = time.perf_counter()
    prof.enable()
    augment_dataset(tmp / "ann.json", images_dir, tmp / "pool", tmp / "out_split", copies=1, seed=0, workers=1,
                    progress=False, num_paste=10)
    prof.disable()
    total = time.perf_counter() - start
    stats = pstats.Stats(prof).stats
    print(f"\nwhere one worker's time goes ({n_images} images, {1000 * total / n_images:.1f} ms/image in all, "
          "under cProfile)")
    print(f"{'part':<64} {'ms/image':>9} {'share':>6}")
    accounted = 0.0
    for part, names in SPLIT:
        cum = 0.0
        for (filename, _, func), (_, _, _, ct, _) in stats.items():
            if func in names and (func != "__call__" or filename.endswith("paste/transform.py")):
                cum += ct
        accounted += cum
        print(f"{part:<64} {1000 * cum / n_images:9.2f} {cum / total:6.0%}")
    rest = total - accounted
    print(f"{'rest (dataset load, fingerprints, shard tables, json assembly)':<64} "
          f"{1000 * rest / n_images:9.2f} {rest / total:6.0%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="time per configuration")
    parser.add_argument("--profile", action="store_true", help="print a cProfile summary")
    parser.add_argument("--no-augment", action="store_true", help="skip the end-to-end augment table")
    parser.add_argument("--images", type=int, default=120, help="images for the augment table")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, opencv {cv2.__version__}")
    paste_table(args.seconds, args.profile)
    if not args.no_augment:
        augment_table(args.images)


if __name__ == "__main__":
    main()
