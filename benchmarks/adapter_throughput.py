"""Framework adapters vs the core `CopyPaste` on the same sample, one core, interleaved. Prints a table.

Workload (issue 13, item 2): a 640x640 RGB destination with 8 instances (full-size masks), an in-memory pool
of 200 RGBA cut-outs 40-300 px in 50 categories, 10 pastes per image, hard blending. Each adapter wraps its
own `CopyPaste` seeded like the core one, so both draw the same plans in the same order.

Calls alternate one by one (adapter, core; which goes first alternates), same process, same sample, so
load on the machine hits both; call i of each draws the same plan. images/s is 1 / the adapter's added time
per image; ratio = core time / added time (the bar is 0.7); median = the median of the per-call ratios.
Comparisons:
- torchvision, mmdet, detectron2 `paste_into_dataset_dict`: the adapter call itself (the whole pipeline
  step, conversions in and out included) against `CopyPaste(sample)`.
- detectron2 mapper: its annotation step (`_transform_annotations`, where the paste happens) minus the plain
  `DatasetMapper`'s own step on the same dict (polygons rasterised into bitmasks, `annotations_to_instances`,
  `filter_empty_instances`): what pasting adds for a detectron2 user.
- ultralytics: the hook on a YOLO `labels` dict (1000-point polygons, as YOLODataset hands them over). Its
  labels are polygons, so every pasted or occluded instance must be traced back into one
  (`mask_to_polygon`) and resampled as ultralytics does (`resample_segments`); a second row leaves that
  time (measured inside the same calls) out.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/adapter_throughput.py [--calls 400] [--profile NAME]
    OMP_NUM_THREADS=1 .venv-mmdet/bin/python benchmarks/adapter_throughput.py --only mmdet
"""
from __future__ import annotations

import argparse
import copy
import cProfile
import io
import os
import pstats
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paste_throughput import make_pool, make_sample  # noqa: E402

from xpaste import CopyPaste  # noqa: E402

cv2.setNumThreads(1)
NUM_PASTE = 10


def _core(pool):
    return CopyPaste(pool, num_paste=NUM_PASTE, seed=0, scale_prior={}, blend="hard")


# ----------------------------------------------------------------------------- cases
# Each case returns [(name, prepare_adapter, prepare_noop or None, the adapter's CopyPaste, note)]: prepare_*()
# makes a fresh copy of the input outside the timed part and returns the call to time (see `interleaved`).
def torchvision_case(pool, sample):
    import torch
    from torchvision import tv_tensors

    from xpaste.integrations.torchvision import XPasteCopyPaste

    torch.set_num_threads(1)
    h, w = sample.height, sample.width
    image = tv_tensors.Image(torch.from_numpy(sample.image).permute(2, 0, 1).contiguous())
    target = {"boxes": tv_tensors.BoundingBoxes(torch.from_numpy(sample.targets.boxes), format="XYXY",
                                                canvas_size=(h, w)),
              "masks": tv_tensors.Mask(torch.from_numpy(sample.targets.masks.astype(np.uint8))),
              "labels": torch.from_numpy(sample.targets.labels), "image_id": 1,
              "iscrowd": torch.zeros(len(sample.targets), dtype=torch.int64),
              "area": torch.from_numpy(sample.targets.areas().astype(np.float32))}
    transform = XPasteCopyPaste(_core(pool))
    # The README pipeline: v2.ToImage of a PIL image (a CHW view of HWC memory), target_keys boxes/labels/masks.
    import PIL.Image
    from torchvision.transforms.v2 import functional as F

    viewed = tv_tensors.Image(F.pil_to_tensor(PIL.Image.fromarray(sample.image)))
    plain = {k: target[k] for k in ("boxes", "masks", "labels", "image_id")}
    transform2 = XPasteCopyPaste(_core(pool))
    return [("torchvision XPasteCopyPaste", lambda: (lambda: transform(image, target)), None,
             transform.copy_paste, "v2 (Image uint8 CHW, XYXY boxes, uint8 Mask, iscrowd, area)"),
            ("torchvision, ToImage(PIL) input", lambda: (lambda: transform2(viewed, plain)), None,
             transform2.copy_paste, "image a CHW view of HWC memory; boxes, masks, labels only")]


def detectron2_case(pool, sample):
    import torch
    from detectron2.config import get_cfg
    from detectron2.data import DatasetMapper
    from detectron2.data import transforms as T

    from xpaste.integrations.detectron2 import _mapper_class, paste_into_dataset_dict
    from xpaste.integrations.yolo_export import mask_to_polygon

    torch.set_num_threads(1)
    cfg = get_cfg()
    cfg.MODEL.MASK_ON = True
    cfg.INPUT.MASK_FORMAT = "bitmask"
    annos = []
    for box, mask, label in zip(sample.targets.boxes, sample.targets.masks, sample.targets.labels):
        annos.append({"bbox": [float(v) for v in box], "bbox_mode": 0, "category_id": int(label), "iscrowd": 0,
                      "segmentation": [mask_to_polygon(mask).reshape(-1).astype(float).tolist()]})
    chw = torch.from_numpy(np.ascontiguousarray(sample.image[..., ::-1].transpose(2, 0, 1)))
    xmapper = _mapper_class()(cfg, True, _core(pool))
    plain = DatasetMapper(cfg, is_train=True)
    shape = sample.image.shape[:2]
    empty = T.TransformList([])

    def step(mapper):
        def prepare():
            d = {"image": chw, "annotations": copy.deepcopy(annos)}
            return lambda: mapper._transform_annotations(d, empty, shape)
        return prepare

    direct = _core(pool)
    bgr = np.ascontiguousarray(sample.image[..., ::-1])
    masks_dict = {"annotations": [dict(a, segmentation=m) for a, m in zip(annos, sample.targets.masks)]}
    return [("detectron2 mapper (added over DatasetMapper)", step(xmapper), step(plain), xmapper.copy_paste,
             "_transform_annotations, polygons -> bitmask Instances"),
            ("detectron2 paste_into_dataset_dict", lambda: (lambda: paste_into_dataset_dict(
                masks_dict, bgr, direct, segmentation="mask")), None, direct, "2-D mask segmentations in and out")]


def _mmcv_lite_placeholder() -> None:
    """mmcv-lite ships no compiled ops, yet mmdet's mask structures import mmcv.ops at module level: a
    placeholder `mmcv._ext` whose ops raise if called (as tests/test_mmdet_adapter.py does)."""
    import importlib.util
    import types

    if importlib.util.find_spec("mmcv._ext") is not None:
        return

    class _NoOps(types.ModuleType):
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)

            def op(*args, **kwargs):
                raise RuntimeError(f"mmcv._ext.{name} called: compiled mmcv ops are not available")
            return op

    sys.modules.setdefault("mmcv._ext", _NoOps("mmcv._ext"))


def mmdet_case(pool, sample):
    _mmcv_lite_placeholder()
    import torch
    from mmdet.structures.bbox import HorizontalBoxes
    from mmdet.structures.mask import BitmapMasks

    from xpaste.integrations.mmdet import XPasteCopyPaste

    torch.set_num_threads(1)
    h, w = sample.height, sample.width
    results = {"img": np.ascontiguousarray(sample.image[..., ::-1]),
               "gt_bboxes": HorizontalBoxes(torch.from_numpy(sample.targets.boxes)),
               "gt_masks": BitmapMasks(sample.targets.masks.astype(np.uint8), h, w),
               "gt_bboxes_labels": sample.targets.labels.copy(),
               "gt_ignore_flags": np.zeros(len(sample.targets), bool)}
    transform = XPasteCopyPaste(pool, scale_prior={}, seed=0, num_paste=NUM_PASTE, blend="hard")
    return [("mmdet XPasteCopyPaste", lambda: (lambda r=dict(results): transform(r)), None, transform._paster(),
             "results with HorizontalBoxes, BitmapMasks (uint8)")]


def ultralytics_case(pool, sample):
    import torch
    from ultralytics.utils.instance import Instances
    from ultralytics.utils.ops import resample_segments

    from xpaste.integrations.ultralytics import SEGMENT_POINTS, XPasteYOLOTransform
    from xpaste.integrations.yolo_export import mask_to_polygon

    torch.set_num_threads(1)
    h, w = sample.height, sample.width
    segs = []
    for mask in sample.targets.masks:
        segs.append(mask_to_polygon(mask).astype(np.float32))
    segs = np.stack(resample_segments(segs, n=SEGMENT_POINTS))
    boxes = np.stack([np.r_[s.min(0), s.max(0)] for s in segs]).astype(np.float32)
    cls = sample.targets.labels.reshape(-1, 1).astype(np.float32)
    transform = XPasteYOLOTransform(_core(pool), class_map={c: c for c in range(50)})
    instances = Instances(boxes, segs, None, "xyxy", normalized=False)
    img = np.ascontiguousarray(sample.image[..., ::-1])

    def fresh():
        return {"img": img, "cls": cls.copy(), "instances": copy.deepcopy(instances)}

    # Time spent in the polygon format ultralytics' labels impose (tracing masks, resampling to 1000 points).
    import xpaste.integrations.ultralytics as module

    clock = [0.0]

    def timed(fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                clock[0] += time.perf_counter() - t0
        return wrapper

    module.mask_to_polygon = timed(module.mask_to_polygon)
    module.resample_segments = timed(module.resample_segments)

    def prepare():
        return lambda lb=fresh(): transform(lb)

    prepare.format_clock = clock
    return [("ultralytics XPasteYOLOTransform", prepare, None, transform.copy_paste,
             "labels with 1000-point polygons; rasterise in, trace out")]


CASES = {"torchvision": torchvision_case, "detectron2": detectron2_case, "mmdet": mmdet_case,
         "ultralytics": ultralytics_case}
MODULES = {"torchvision": "torchvision", "detectron2": "detectron2", "mmdet": "mmdet", "ultralytics": "ultralytics"}


# ----------------------------------------------------------------------------- timing
def interleaved(prepare_adapter, prepare_noop, adapter_cp, core, sample, calls: int) -> dict:
    """Per-call seconds {"adapter", "noop" (or None), "core", "format" (or None)} as arrays ("format": time the
    adapter spent in the functions its case's `prepare.format_clock` counts). Call i of the adapter and of the core
    draw the same plan (both CopyPaste reseeded with i, outside the timed part), calls alternate one by one
    (which goes first alternates too), so load on the machine hits all of them alike."""
    times = {"adapter": [], "noop": [], "core": [], "format": []}
    clock = getattr(prepare_adapter, "format_clock", None)
    for i in range(calls + 3):  # three warm-up calls first, not counted
        steps = [("adapter", prepare_adapter), ("core", None)] + ([("noop", prepare_noop)] if prepare_noop else [])
        for key, prep in (steps if i % 2 else steps[::-1]):
            if prep is None:
                core.reseed(i)
                fn = lambda: core(sample)  # noqa: E731
            else:
                adapter_cp.reseed(i)
                fn = prep()
            if clock is not None:
                clock[0] = 0.0
            t0 = time.perf_counter()
            fn()
            if i >= 3:
                times[key].append(time.perf_counter() - t0)
                if clock is not None and key == "adapter":
                    times["format"].append(clock[0])
    return {k: (np.array(v) if v else None) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=400, help="timed calls per adapter (and as many core calls)")
    parser.add_argument("--only", nargs="*", choices=sorted(CASES), help="frameworks to measure")
    parser.add_argument("--profile", choices=sorted(CASES), help="cProfile the first adapter of a framework")
    parser.add_argument("--sort", default="tottime", help="cProfile sort key (tottime, cumulative)")
    args = parser.parse_args()
    import importlib.util

    pool, sample = make_pool(), make_sample()
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, opencv {cv2.__version__}; one core; "
          f"640x640, 8 instances (full-size masks), {NUM_PASTE} pastes, hard blend, pool 200 in memory")
    if args.profile:
        name, prep, _, _, _ = CASES[args.profile](pool, sample)[0]
        fns = [prep() for _ in range(200)]
        prof = cProfile.Profile()
        prof.enable()
        for fn in fns:
            fn()
        prof.disable()
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats(args.sort).print_stats(30)
        print(f"\n{name}, 200 calls, sorted by {args.sort}:\n{out.getvalue()}")
        return
    print(f"\n{'adapter':<46} {'images/s':>9} {'core/s':>8} {'ratio':>6} {'median':>6}  comparison")
    print("(images/s: 1 / the adapter's added time per image; ratio: core time / added time, of the means; "
          "median: of the per-call ratios)")
    missing = []
    for framework in args.only or CASES:
        if importlib.util.find_spec(MODULES[framework]) is None:
            missing.append(framework)
            continue
        core = _core(pool)
        for name, prep, noop, adapter_cp, note in CASES[framework](pool, sample):
            t = interleaved(prep, noop, adapter_cp, core, sample, args.calls)
            added = t["adapter"] - t["noop"] if t["noop"] is not None else t["adapter"]
            # ratio: of mean times (images/s); median: of the per-call ratios (robust to a busy machine)
            ratio, median = t["core"].mean() / added.mean(), float(np.median(t["core"] / added))
            extra = (f"; framework alone {1 / t['noop'].mean():.0f}/s, with paste {1 / t['adapter'].mean():.0f}/s, "
                     f"added {1000 * added.mean():+.2f} ms" if t["noop"] is not None else "")
            rate = f"{1 / added.mean():9.1f}" if added.mean() > 0 else f"{'no cost':>9}"
            shown = [f"{r:6.2f}" if 0 < r < 100 else f"{'>100':>6}" for r in (ratio, median)]
            print(f"{name:<46} {rate} {1 / t['core'].mean():8.1f} {shown[0]} {shown[1]}  {note}{extra}")
            if t["format"] is not None:
                rest = added - t["format"]
                print(f"{'  ... without the polygon format':<46} {1 / rest.mean():9.1f} {1 / t['core'].mean():8.1f} "
                      f"{t['core'].mean() / rest.mean():6.2f} {float(np.median(t['core'] / rest)):6.2f}  "
                      f"mask_to_polygon + resample_segments: {1000 * t['format'].mean():.2f} ms of the "
                      f"{1000 * added.mean():.2f} ms per image")
    for framework in missing:
        hint = (".venv-mmdet/bin/python benchmarks/adapter_throughput.py --only mmdet  (make test-mmdet builds it)"
                if framework == "mmdet" else f"install {MODULES[framework]}")
        print(f"{framework + ' (not importable here)':<46} {'-':>9} {'-':>8} {'-':>6}  run: {hint}")


if __name__ == "__main__":
    main()
