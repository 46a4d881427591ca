"""Paste throughput on one core, and `augment` end to end with 1 and 2 workers. Prints tables.

Workload (issue 3): a 640x640 RGB destination with 8 instances (full-size bool masks), an in-memory pool of
200 RGBA cut-outs 40-300 px in 50 categories, 10 pastes per image, hard blending.

The peer-like workload (issue 22): the same pool, a 640x640 destination with 8 star-shaped instances, 10
pastes per image, no scale prior; `CopyPaste` against mmdetection 3.3's `CopyPaste`, calls interleaved one by
one in one process, repeated `--rounds` times (ratios, not absolute times, are what compares across machines).
mmdet lives in the side virtualenv (`make .venv-mmdet/.xpaste-installed`), which sees this project's packages:

    python benchmarks/paste_throughput.py [--seconds 3] [--profile] [--no-augment]
    OMP_NUM_THREADS=1 .venv-mmdet/bin/python benchmarks/paste_throughput.py --peers-only [--rounds 3]
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


def make_star_sample(seed: int = 0, size: int = 640, n: int = 8) -> Sample:
    """A size x size random image with n star-shaped instances (5-8 points, outer radius 30-125 px, centres
    anywhere: some cut by the border), labels ~ U[0, 50); boxes are the masks' tight boxes."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    masks = np.zeros((n, size, size), bool)
    for i in range(n):
        points, radius = int(rng.integers(5, 9)), float(rng.uniform(30, 125))
        cx, cy = (float(v) for v in rng.uniform(0, size, 2))
        angles = np.linspace(0, 2 * np.pi, 2 * points, endpoint=False) + rng.uniform(0, np.pi)
        radii = np.where(np.arange(2 * points) % 2 == 0, radius, radius * rng.uniform(0.35, 0.55))
        poly = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1)
        canvas = np.zeros((size, size), np.uint8)
        cv2.fillPoly(canvas, [np.rint(poly).astype(np.int32)], 1)
        masks[i] = canvas.view(bool)
    return Sample(image, Targets(tight_boxes(masks), masks, rng.integers(0, 50, n)))


def make_peer_sources(pool: InstancePool, count: int = 16, size: int = 640, num_paste: int = 10,
                      seed: int = 1) -> list[Sample]:
    """Source images for the peers, whose copy-paste takes its objects from a second training image: `count`
    canvases each holding `num_paste` cut-outs of the pool, sized by the same no-prior rule (U(0.05, 0.3) of the
    canvas side), placed at uniform centres, with full-size masks. Built once, outside the timed part: the
    peers' timed call is their paste alone, not the making of its source."""
    rng = np.random.default_rng(seed)
    sources = []
    for _ in range(count):
        image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        masks = []
        for row in rng.integers(0, len(pool), num_paste):
            rgba = pool.rgba(int(row))
            side = rng.uniform(0.05, 0.3) * size
            ratio = rgba.shape[1] / rgba.shape[0]
            w, h = max(3, int(round(side * np.sqrt(ratio)))), max(3, int(round(side / np.sqrt(ratio))))
            obj = cv2.resize(rgba, (w, h), interpolation=cv2.INTER_LINEAR)
            cx, cy = (int(v) for v in rng.integers(0, size, 2))
            x0, y0 = cx - w // 2, cy - h // 2
            full = np.zeros((size, size), bool)
            ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x0 + w, size), min(y0 + h, size)
            part = obj[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0]
            full[iy0:iy1, ix0:ix1] = part[..., 3] > 0
            image[full] = obj[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0][..., :3][full[iy0:iy1, ix0:ix1]]
            if full.any():
                masks.append(full)
        stack = np.stack(masks)
        sources.append(Sample(image, Targets(tight_boxes(stack), stack, rng.integers(0, 50, len(stack)))))
    return sources


def peer_contenders(pool: InstancePool, sample: Sample, num_paste: int = 10) -> list:
    """[(name, prepare)]: prepare(i) builds call i's input outside the timed part and returns the call to
    time. Every contender gets a freshly built input each call, as a data loader hands over a freshly decoded
    sample (mmdet's transform modifies its input, so it needs one; ours gets one too, so that neither runs on
    inputs left cold by the other's call). xpaste: a copy of the sample, `CopyPaste` reseeded with i (so
    every round draws the same plans). mmdet (when importable):
    `CopyPaste(selected=False)` (every object of the source pasted: `num_paste` of them, as ours) on results
    as mmdet's loading makes them (BGR image, HorizontalBoxes, uint8 BitmapMasks), source i % 16."""
    cp = CopyPaste(pool, num_paste=num_paste, seed=0, scale_prior={}, blend="hard")

    def xpaste(i):
        cp.reseed(i)
        fresh = sample.copy()
        return lambda: cp(fresh)

    out = [("xpaste CopyPaste", xpaste)]
    try:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from adapter_throughput import _mmcv_lite_placeholder

        _mmcv_lite_placeholder()
        import torch
        from mmdet.datasets.transforms import CopyPaste as MMDetCopyPaste
        from mmdet.structures.bbox import HorizontalBoxes
        from mmdet.structures.mask import BitmapMasks
    except ImportError:
        return out
    torch.set_num_threads(1)
    h, w = sample.height, sample.width

    def results_of(s: Sample) -> dict:
        return {"img": np.ascontiguousarray(s.image[..., ::-1]),
                "gt_bboxes": HorizontalBoxes(torch.from_numpy(s.targets.boxes.copy())),
                "gt_masks": BitmapMasks(s.targets.masks.astype(np.uint8), h, w),
                "gt_bboxes_labels": s.targets.labels.copy(), "gt_ignore_flags": np.zeros(len(s.targets), bool)}

    sources = [results_of(s) for s in make_peer_sources(pool, num_paste=num_paste)]
    mm = MMDetCopyPaste(selected=False)

    def mmdet(i):
        results = results_of(sample)
        results["mix_results"] = [dict(sources[i % len(sources)])]
        return lambda: mm.transform(results)

    out.append(("mmdetection 3.3 CopyPaste", mmdet))
    return out


def interleave(contenders: list, calls: int) -> dict[str, np.ndarray]:
    """Per-call seconds of each contender; calls alternate one by one (the order rotates), so load on the
    machine hits all alike. Three warm-up calls each first, not counted."""
    times: dict[str, list] = {name: [] for name, _ in contenders}
    for i in range(calls + 3):
        k = i % len(contenders)
        for name, prepare in contenders[k:] + contenders[:k]:
            fn = prepare(i)
            t0 = time.perf_counter()
            fn()
            if i >= 3:
                times[name].append(time.perf_counter() - t0)
    return {name: np.array(v) for name, v in times.items()}


def peer_table(calls: int, rounds: int) -> None:
    pool, sample = make_pool(), make_star_sample()
    contenders = peer_contenders(pool, sample)
    print(f"\nPeer-like workload, one core, calls interleaved one by one: 640x640, 8 star-shaped instances, pool 200 "
          f"(40-300 px), 10 pastes/image, no scale prior, hard blend; {calls} calls each per round")
    if len(contenders) == 1:
        print("(mmdet is not importable here: run with .venv-mmdet/bin/python for the peer row)")
    names = [name for name, _ in contenders]
    print(f"{'round':>5} " + " ".join(f"{name + ' img/s':>34}" for name in names)
          + (f" {'ratio':>7}" if len(names) > 1 else ""))
    for r in range(rounds):
        times = interleave(contenders, calls)
        rates = [1.0 / times[name].mean() for name in names]
        line = f"{r + 1:>5} " + " ".join(f"{v:34.1f}" for v in rates)
        print(line + (f" {rates[0] / rates[1]:6.2f}x" if len(rates) > 1 else ""))
    if len(names) > 1:
        print(f"ratio: {names[0]} images/s over {names[1]}'s in the same round (the target is >= 6x). The peer's "
              "timed call is its paste alone (its source image with 10 objects is built beforehand); ours draws the "
              "plan, resizes the cut-outs and pastes.")


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
    parser.add_argument("--calls", type=int, default=300, help="calls per contender per round, peer workload")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the peer workload (to see the spread)")
    parser.add_argument("--peers-only", action="store_true", help="only the peer-like workload")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, opencv {cv2.__version__}")
    peer_table(args.calls, args.rounds)
    if args.peers_only:
        return
    paste_table(args.seconds, args.profile)
    if not args.no_augment:
        augment_table(args.images)


if __name__ == "__main__":
    main()
