"""Long-tail effect benchmark: does an xpaste pool raise a real detector's rare-category mask AP?

    python benchmarks/effect.py [--seeds 3] [--iters N] [--quick] [--json FILE] [--out DIR]

What it does, end to end, on CPU (2 cores, one torch thread per process):

1. **A long-tailed instance-segmentation task** (seeded, rebuilt identically every run; `task/` under `--out`).
   Eight categories, each a procedural *shape* filled with a *texture* cropped from a photo bundled with
   scikit-image (`skimage.data`): they differ by shape and texture. Every object is tinted with a random
   colour drawn from one distribution shared by all categories, so colour carries no category information.
   Scenes are 128x128 px: a blurred, low-contrast crop of a colour photo (astronaut / coffee / rocket) with
   up to 4 non-overlapping objects whose bounding square is 20-44 px. Frequency groups follow LVIS
   (rare = 1-10 training images, common = 11-100, frequent > 100), set by how many of the 300 training
   images hold the category (one instance per image and category):

   | id | category          | train images | group |
   |----|-------------------|--------------|-------|
   | 1  | brick_disc        | 220          | f     |
   | 2  | grass_square      | 180          | f     |
   | 3  | gravel_triangle   | 150          | f     |
   | 4  | moon_hexagon      | 120          | f     |
   | 5  | coins_cross       | 60           | c     |
   | 6  | text_lshape       | 25           | c     |
   | 7  | camera_star       | 3            | r     |
   | 8  | chelsea_crescent  | 3            | r     |

   The validation set (100 images, 2-4 objects each, categories drawn uniformly) is exhaustively annotated:
   every category absent from an image is in its `neg_category_ids`, so LVIS AP counts false positives
   everywhere. Both sets are LVIS-style COCO jsons with compressed-RLE masks (pycocotools-valid).

2. **The pool, through xpaste's own stages** (`pipeline/` under `--out`). *Simulated stage: generate.* A
   text-to-image model (Stable Diffusion, as X-Paste) would give object-centric images of each category on a
   simple background; no diffusion weights can be downloaded on this machine (offline), and a randomly
   initialised diffusion model would draw noise, so the same procedural renderer draws 24 such images per
   category instead (one object, centred, 90-130 px on a light plain background with a gradient and noise,
   160x160; seeds disjoint from the task's, so no training or validation object is reused). They are
   placed as a labelled collection (`collection/<category>/*.png`) and go through the real stages with
   `xpaste.stages.run.run_pipeline` (what `xpaste run pipeline/config.yaml` runs): `retrieve` with
   `labelled: true`, `segment` with the weightless GrabCut segmenter, no CLIP scoring (`score.clip: null`,
   no weights offline either) and `build-pool` with X-Paste's preset (area fraction in [0.05, 0.95],
   largest component, holes filled). GrabCut's cut-outs are imperfect: that is the honest number.
   Every category gets the same number of images, as X-Paste generates them.

3. **A real detector, trained twice per seed** with the same seed, schedule and data: torchvision Mask
   R-CNN with a ResNet-18 FPN backbone (`resnet_fpn_backbone('resnet18', weights=None,
   trainable_layers=5)`, random init), `min_size = max_size = 128`, anchors (16, 32, 64, 128, 256) for
   128 px scenes, 64 sampled anchors and 64 sampled RoIs per image, heads sized for the small backbone (a
   512-wide box MLP, four 128-channel mask convs). SGD (lr 0.02, momentum 0.9, weight decay 1e-4,
   100-iteration linear warm-up, lr x0.1 at 2/3 and 8/9 of the run, gradient norm clipped at 10), batch 4,
   700 iterations (`--iters`), horizontal flip. Arm `baseline` pastes nothing; arm `xpaste` puts
   `XPasteCopyPaste(pool, scale_prior=<train json>, max_paste=5, seed=seed)` after the flip (X-Paste's
   balanced sampling, hard blending, scale prior measured on the training json). max_paste = 5 keeps the
   paper's ratio of pasted to original objects: LVIS images hold about 12 objects and U[0, 20) pastes 9.5
   on average; these scenes hold about 2.5 and U[0, 5) pastes 2. The model initialisation, the image
   order and every flip come from the seed alone (each sample's flip from its own seed), so the arms
   differ only by the pasted objects. Repeat-factor sampling is left out: at LVIS' threshold t = 0.001
   every category here (rarest: 3/300 = 0.01 of the images) has a repeat factor of 1, so it would change
   nothing. Each (arm, seed) run is its own process; two run at a time
   (`ProcessPoolExecutor(2)`), each with `torch.set_num_threads(1)`.

4. **Evaluation**: predictions on the validation set (up to 50 detections per image, score >= 0.01,
   masks thresholded at 0.5, RLE), scored with `xpaste.evaluate.metrics.evaluate` and printed with
   `format_table(..., delta=True)`, which is exactly what `xpaste eval --gt val.json --pred base.json
   --compare xpaste.json --iou-type segm|bbox` runs (LVIS AP, APr, APc, APf).

5. **Output**: a table per seed and the mean +- standard deviation over seeds, the target check, and with
   `--json FILE` `{"arms": {"baseline"|"xpaste": {"segm"|"bbox": [{"seed", "AP", "APr", "APc", "APf"}]}}}`
   (AP x 100) plus the task and schedule.

Schedule and time: 700 iterations at batch 4 per run, 6 runs (2 arms x 3 seeds), 2 at a time. The issue's
feasibility note measured about 1 s per iteration on one free core (1,200 iterations at batch 4): 700
iterations keep 3 rounds of runs plus task, pool and evaluation (about 3 minutes) under 45 minutes. On this
project's machine while other sessions shared it, one run measured 1.6 CPU-seconds per iteration (each run
prints its seconds and CPU-seconds per iteration); at that speed the full run takes about an hour: pass a
smaller `--iters` when the machine is busy, and say so next to the figures.

Target, fixed before any result was seen: mask APr with the pool >= baseline + 5 points (mean of 3 seeds),
and APf not lower than the baseline's by more than the baseline's seed spread (standard deviation); total
run <= 45 minutes on 2 cores. `--quick` (a 24-image task, 10 iterations at batch 1, 1 seed) only checks that
the loop runs end to end; its frequency groups are the full task's labels, not measured, and its numbers mean
nothing.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

# ----------------------------------------------------------------------------- the task
SIZE = 128
# (name, shape, texture, training images, LVIS group)
CATEGORIES = [
    ("brick_disc", "disc", "brick", 220, "f"),
    ("grass_square", "square", "grass", 180, "f"),
    ("gravel_triangle", "triangle", "gravel", 150, "f"),
    ("moon_hexagon", "hexagon", "moon", 120, "f"),
    ("coins_cross", "cross", "coins", 60, "c"),
    ("text_lshape", "lshape", "text", 25, "c"),
    ("camera_star", "star", "camera", 3, "r"),
    ("chelsea_crescent", "crescent", "chelsea", 3, "r"),
]
N_TRAIN, N_VAL = 300, 100
MAX_OBJECTS = 4
OBJ_SIDE = (20, 44)
POOL_PER_CATEGORY, POOL_IMAGE = 24, 160
TASK_SEED = 2024
# at most 4 objects per scene (plus pastes in training): 50 detections per image keep every plausible one
DETECTIONS_PER_IMAGE, SCORE_THRESH = 50, 0.01
# quick mode: the same categories, a tiny task (counts are not the group definitions any more)
QUICK = {"n_train": 24, "n_val": 8, "counts": [14, 12, 10, 8, 5, 3, 2, 2], "pool_per_category": 2}

_TEXTURES: dict[str, np.ndarray] = {}
_BACKGROUNDS: list[np.ndarray] = []


def textures() -> dict[str, np.ndarray]:
    """Grayscale float32 textures in [0, 1] from the photos bundled with scikit-image (no download)."""
    if not _TEXTURES:
        from skimage import color, data

        for name in ("brick", "grass", "gravel", "moon", "coins", "text", "camera", "chelsea"):
            img = getattr(data, name)()
            img = color.rgb2gray(img) if img.ndim == 3 else img.astype(np.float32) / 255.0
            _TEXTURES[name] = np.asarray(img, np.float32)
    return _TEXTURES


def backgrounds() -> list[np.ndarray]:
    if not _BACKGROUNDS:
        from skimage import data

        _BACKGROUNDS.extend(np.asarray(getattr(data, n)()[..., :3], np.float32) for n in ("astronaut", "coffee",
                                                                                          "rocket"))
    return _BACKGROUNDS


def _polygon(shape: str) -> list[np.ndarray]:
    """Polygons in [-1, 1] coordinates (a list: the cross is two rectangles)."""
    if shape == "square":
        return [np.array([[-0.85, -0.85], [0.85, -0.85], [0.85, 0.85], [-0.85, 0.85]])]
    if shape == "triangle":
        return [np.array([[0.0, -0.95], [0.95, 0.8], [-0.95, 0.8]])]
    if shape == "hexagon":
        a = np.arange(6) * np.pi / 3
        return [0.95 * np.stack([np.cos(a), np.sin(a)], 1)]
    if shape == "star":
        a = np.arange(10) * np.pi / 5 - np.pi / 2
        r = np.where(np.arange(10) % 2 == 0, 0.97, 0.42)
        return [np.stack([r * np.cos(a), r * np.sin(a)], 1)]
    if shape == "cross":
        return [np.array([[-0.3, -0.95], [0.3, -0.95], [0.3, 0.95], [-0.3, 0.95]]),
                np.array([[-0.95, -0.3], [0.95, -0.3], [0.95, 0.3], [-0.95, 0.3]])]
    if shape == "lshape":
        return [np.array([[-0.9, -0.9], [-0.3, -0.9], [-0.3, 0.3], [0.9, 0.3], [0.9, 0.9], [-0.9, 0.9]])]
    raise ValueError(shape)


def shape_mask(shape: str, side: int, rng: np.random.Generator) -> np.ndarray:
    """A (side, side) bool mask of the shape, randomly rotated and stretched (aspect 0.8-1.25)."""
    import cv2

    mask = np.zeros((side, side), np.uint8)
    angle = rng.uniform(0, 2 * np.pi)
    stretch = np.exp(rng.uniform(np.log(0.8), np.log(1.25)))
    half = (side - 1) / 2
    if shape in ("disc", "crescent"):
        axes = (max(1, round(0.95 * half * min(1.0, stretch))), max(1, round(0.95 * half * min(1.0, 1 / stretch))))
        cv2.ellipse(mask, (round(half), round(half)), axes, np.degrees(angle), 0, 360, 1, -1)
        if shape == "crescent":  # a disc minus an offset disc: concave, no hole
            off = 0.45 * half
            centre = (round(half + off * np.cos(angle)), round(half + off * np.sin(angle)))
            cv2.ellipse(mask, centre, (round(0.8 * axes[0]), round(0.8 * axes[1])), np.degrees(angle), 0, 360, 0, -1)
        return mask.astype(bool)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    scale = np.array([stretch, 1 / stretch]) if stretch <= 1 else np.array([1.0, 1 / stretch])
    for poly in _polygon(shape):
        pts = (poly * scale) @ rot.T
        pts = pts / max(1.0, np.abs(pts).max())  # stay inside the square
        cv2.fillPoly(mask, [np.round(half + half * pts).astype(np.int32)], 1)
    return mask.astype(bool)


def render_object(shape: str, texture: str, side: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """An object patch: (side, side, 3) float RGB in [0, 255] and its (side, side) bool mask."""
    import cv2

    tex = textures()[texture]
    src = int(min(min(tex.shape), max(8, round(side * rng.uniform(1.2, 3.0)))))
    y, x = rng.integers(0, tex.shape[0] - src + 1), rng.integers(0, tex.shape[1] - src + 1)
    crop = cv2.resize(tex[y:y + src, x:x + src], (side, side), interpolation=cv2.INTER_AREA)
    lo, hi = np.percentile(crop, (2, 98))
    crop = np.clip((crop - lo) / max(hi - lo, 1e-3), 0, 1)
    hue, sat, val = rng.uniform(0, 1), rng.uniform(0.25, 0.75), rng.uniform(0.7, 1.0)
    tint = np.array(_hsv_to_rgb(hue, sat, val), np.float32) * 255
    rgb = (0.2 + 0.8 * crop)[..., None] * tint
    return rgb, shape_mask(shape, side, rng)


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple[float, float, float]:
    import colorsys

    return colorsys.hsv_to_rgb(h, s, v)


def scene_background(rng: np.random.Generator) -> np.ndarray:
    import cv2

    photo = backgrounds()[rng.integers(len(backgrounds()))]
    src = int(rng.integers(96, min(photo.shape[:2]) + 1))
    y, x = rng.integers(0, photo.shape[0] - src + 1), rng.integers(0, photo.shape[1] - src + 1)
    bg = cv2.resize(photo[y:y + src, x:x + src], (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    bg = cv2.GaussianBlur(bg, (0, 0), 2.0)
    mean = bg.mean((0, 1), keepdims=True)
    return mean + 0.6 * (bg - mean)


def make_scene(cat_ids: list[int], rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """A 128x128 scene holding one non-overlapping object per category id given (placed in order)."""
    image = scene_background(rng)
    occupied = np.zeros((SIZE, SIZE), bool)
    objects = []
    for cid in cat_ids:
        _, shape, tex, _, _ = CATEGORIES[cid - 1]
        side = int(rng.integers(OBJ_SIDE[0], OBJ_SIDE[1] + 1))
        for attempt in range(200):
            if attempt and attempt % 50 == 0:
                side = max(OBJ_SIDE[0] // 2, side - 6)  # a crowded scene: make the object smaller
            rgb, m = render_object(shape, tex, side, rng)
            y, x = (int(v) for v in rng.integers(0, SIZE - side + 1, 2))
            full = np.zeros((SIZE, SIZE), bool)
            full[y:y + side, x:x + side] = m
            grown = full.copy()  # keep a 1 px gap so masks never touch
            grown[1:] |= full[:-1]
            grown[:-1] |= full[1:]
            grown[:, 1:] |= full[:, :-1]
            grown[:, :-1] |= full[:, 1:]
            if not (grown & occupied).any():
                break
        else:
            raise RuntimeError("could not place an object")
        region = image[y:y + side, x:x + side]
        region[m] = rgb[m]
        occupied |= full
        objects.append((cid, full))
    noise = rng.normal(0, 3, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8), objects


def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _write_png(path: Path, rgb: np.ndarray) -> None:
    import PIL.Image

    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(rgb).save(path)


def _assign_train(n_images: int, counts: list[int], rng: np.random.Generator) -> list[list[int]]:
    """Which categories each training image holds: category c in exactly counts[c] images, at most
    MAX_OBJECTS per image; rarest categories are placed first (they must land)."""
    per_image: list[list[int]] = [[] for _ in range(n_images)]
    for idx in sorted(range(len(counts)), key=lambda i: counts[i]):
        free = [i for i in range(n_images) if len(per_image[i]) < MAX_OBJECTS]
        for i in rng.choice(free, size=counts[idx], replace=False):
            per_image[int(i)].append(idx + 1)
    for cats in per_image:
        rng.shuffle(cats)
    return per_image


def _write_split(out: Path, split: str, per_image: list[list[int]], rng: np.random.Generator,
                 groups: list[str]) -> Path:
    images, anns = [], []
    all_ids = list(range(1, len(CATEGORIES) + 1))
    image_count = {c: 0 for c in all_ids}
    instance_count = {c: 0 for c in all_ids}
    for k, cats in enumerate(per_image):
        image, objects = make_scene(cats, rng)
        name = f"{split}/{k:05d}.png"
        _write_png(out / "images" / name, image)
        present = sorted({cid for cid, _ in objects})
        images.append({"id": k + 1, "file_name": name, "height": SIZE, "width": SIZE,
                       "neg_category_ids": [c for c in all_ids if c not in present],
                       "not_exhaustive_category_ids": []})
        for cid, mask in objects:
            ys, xs = np.nonzero(mask)
            x0, y0 = int(xs.min()), int(ys.min())
            anns.append({"id": len(anns) + 1, "image_id": k + 1, "category_id": cid, "segmentation": _rle(mask),
                         "area": int(mask.sum()), "bbox": [x0, y0, int(xs.max()) + 1 - x0, int(ys.max()) + 1 - y0],
                         "iscrowd": 0})
            instance_count[cid] += 1
        for cid in present:
            image_count[cid] += 1
    cats = [{"id": i + 1, "name": name, "synonyms": [name], "def": f"a {shape} with a {tex} texture",
             "frequency": groups[i], "image_count": image_count[i + 1], "instance_count": instance_count[i + 1]}
            for i, (name, shape, tex, _, _) in enumerate(CATEGORIES)]
    path = out / f"{split}.json"
    path.write_text(json.dumps({"info": {"description": f"xpaste long-tail effect benchmark, {split}"},
                                "images": images, "annotations": anns, "categories": cats}))
    return path


def build_task(out: Path, quick: bool) -> dict:
    """train.json / val.json / images under out (rebuilt identically from TASK_SEED)."""
    rng = np.random.default_rng(TASK_SEED)
    groups = [c[4] for c in CATEGORIES]
    counts = QUICK["counts"] if quick else [c[3] for c in CATEGORIES]
    n_train, n_val = (QUICK["n_train"], QUICK["n_val"]) if quick else (N_TRAIN, N_VAL)
    train = _write_split(out, "train", _assign_train(n_train, counts, rng), rng, groups)
    # validation: 2-4 distinct categories per image, uniform over categories
    val_cats = [list(rng.choice(len(CATEGORIES), size=int(rng.integers(2, MAX_OBJECTS + 1)), replace=False) + 1)
                for _ in range(n_val)]
    val_cats = [[int(c) for c in cats] for cats in val_cats]
    val = _write_split(out, "val", val_cats, rng, groups)
    if not quick:  # the frequency groups are what LVIS' definition gives on the training set
        for c in json.loads(train.read_text())["categories"]:
            n = c["image_count"]
            measured = "r" if n <= 10 else ("c" if n <= 100 else "f")
            assert measured == c["frequency"], (c["name"], n, c["frequency"])
    return {"train": train, "val": val, "images": out / "images"}


# ----------------------------------------------------------------------------- the pool
def build_collection(folder: Path, per_category: int) -> None:
    """Object-centric images as a text-to-image model would give them (the simulated generate stage)."""
    rng = np.random.default_rng(TASK_SEED + 1)
    for name, shape, tex, _, _ in CATEGORIES:
        for k in range(per_category):
            level = rng.uniform(200, 250)
            tint = rng.uniform(-12, 12, 3)
            ramp = np.linspace(-8, 8, POOL_IMAGE)[:, None, None] * rng.choice([-1, 1])
            image = np.broadcast_to(level + tint, (POOL_IMAGE, POOL_IMAGE, 3)) + ramp
            side = int(rng.integers(90, 131))
            rgb, m = render_object(shape, tex, side, rng)
            y0 = (POOL_IMAGE - side) // 2 + int(rng.integers(-10, 11))
            x0 = (POOL_IMAGE - side) // 2 + int(rng.integers(-10, 11))
            y0, x0 = min(max(y0, 4), POOL_IMAGE - side - 4), min(max(x0, 4), POOL_IMAGE - side - 4)
            image = np.array(image, np.float32)
            image[y0:y0 + side, x0:x0 + side][m] = rgb[m]
            image = np.clip(image + rng.normal(0, 3, image.shape), 0, 255).astype(np.uint8)
            _write_png(folder / name / f"{k:03d}.png", image)


def build_pool(out: Path, train_json: Path, per_category: int, progress: bool = False) -> Path:
    """collection -> xpaste retrieve (labelled) -> segment (GrabCut) -> build-pool, via run_pipeline."""
    import yaml

    from xpaste.stages.config import PipelineConfig
    from xpaste.stages.run import run_pipeline

    collection = out / "collection"
    build_collection(collection, per_category)
    raw = {"run_dir": str(out / "pipeline"), "workers": 1, "device": "cpu",
           "categories": {"source": str(train_json)},
           "generate": {"enabled": False},
           "retrieve": {"enabled": True, "folder": str(collection), "labelled": True},
           "segment": {"segmenters": ["grabcut"]},
           "score": {"clip": None},
           "build_pool": {"preset": "xpaste", "out": str(out / "pool")}}
    (out / "pipeline.yaml").write_text(yaml.safe_dump(raw))  # `xpaste run <this file>` does the same
    report = run_pipeline(PipelineConfig.from_dict(raw), progress=progress)
    return Path(report.parts[-1].out)


# ----------------------------------------------------------------------------- training
def _train_samples(train_json: Path, images: Path) -> list[tuple]:
    """(uint8 CHW tensor, XYXY boxes, uint8 masks, labels) per training image, read with xpaste's reader."""
    import torch

    from xpaste.data.coco import load_coco, load_sample

    coco = load_coco(train_json)
    out = []
    for info in coco.images:
        s = load_sample(coco, int(info["id"]), images)
        t = s.targets
        out.append((int(info["id"]), torch.from_numpy(s.image).permute(2, 0, 1).contiguous(),
                    torch.from_numpy(t.boxes), torch.from_numpy(t.masks.astype(np.uint8)),
                    torch.from_numpy(t.labels.astype(np.int64))))
    return out


def build_model(num_classes: int):
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5)
    anchors = AnchorGenerator(((16,), (32,), (64,), (128,), (256,)), ((0.5, 1.0, 2.0),) * 5)
    # heads sized for a ResNet-18 on 128 px scenes: half-width box MLP, 128-channel mask convs
    box_head = TwoMLPHead(backbone.out_channels * 7 * 7, 512)
    return MaskRCNN(backbone, num_classes=None, min_size=SIZE, max_size=SIZE, rpn_anchor_generator=anchors,
                    rpn_batch_size_per_image=64, rpn_pre_nms_top_n_train=600, rpn_post_nms_top_n_train=300,
                    rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=150, box_batch_size_per_image=64,
                    box_head=box_head, box_predictor=FastRCNNPredictor(512, num_classes),
                    mask_head=MaskRCNNHeads(backbone.out_channels, (128, 128, 128, 128), 1),
                    mask_predictor=MaskRCNNPredictor(128, 128, num_classes),
                    box_detections_per_img=DETECTIONS_PER_IMAGE, box_score_thresh=SCORE_THRESH)



def lr_at(it: int, iters: int, base: float, warmup: int) -> float:
    warmup = min(warmup, max(iters // 10, 1))
    factor = 0.1 ** sum(it >= round(iters * s) for s in (2 / 3, 8 / 9))
    return base * factor * (min(1.0, (it + 1) / warmup) if it < warmup else 1.0)


def train_and_predict(job: dict) -> dict:
    """One (arm, seed) run in its own process: train, predict on val, write results json. Returns timings."""
    import torch

    torch.set_num_threads(1)
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    from xpaste.data.coco import load_coco
    from xpaste.imageio import read_rgb as read_image_rgb
    from xpaste.ops.masks import rle_encode

    seed, iters, batch = job["seed"], job["iters"], job["batch"]
    steps = [v2.RandomHorizontalFlip()]
    if job["pool"] is not None:
        from xpaste.integrations.torchvision import XPasteCopyPaste, sanitize_labels_getter
        from xpaste.pool.store import InstancePool

        pool = InstancePool.open(job["pool"])
        steps += [XPasteCopyPaste(pool, scale_prior=job["train"], max_paste=job["max_paste"], seed=seed),
                  v2.SanitizeBoundingBoxes(min_size=1, labels_getter=sanitize_labels_getter)]
    transform = v2.Compose(steps + [v2.ToDtype(torch.float32, scale=True)])
    samples = _train_samples(Path(job["train"]), Path(job["images"]))

    torch.manual_seed(seed)  # the model initialisation: identical in both arms
    model = build_model(len(CATEGORIES) + 1)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=job["lr"], momentum=0.9, weight_decay=1e-4)
    # the data stream (order and each sample's own augmentation seed) depends on the seed alone
    g = torch.Generator().manual_seed(seed)

    def stream():
        while True:
            order = torch.randperm(len(samples), generator=g).tolist()
            seeds = torch.randint(0, 2**62, (len(order),), generator=g).tolist()
            yield from zip(order, seeds)

    it_stream = stream()
    model.train()
    start, cpu_start = time.time(), time.process_time()
    pasted_total, log = 0, []
    for it in range(iters):
        images, targets = [], []
        for _ in range(batch):
            idx, sample_seed = next(it_stream)
            image_id, img, boxes, masks, labels = samples[idx]
            target = {"image_id": image_id,
                      "boxes": tv_tensors.BoundingBoxes(boxes.clone(), format="XYXY", canvas_size=(SIZE, SIZE)),
                      "masks": tv_tensors.Mask(masks.clone()), "labels": labels.clone()}
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(sample_seed)
                image, target = transform(tv_tensors.Image(img.clone()), target)
            pasted_total += int(target.pop("pasted").sum()) if "pasted" in target else 0
            images.append(image.as_subclass(torch.Tensor))
            targets.append({"boxes": target["boxes"].as_subclass(torch.Tensor),
                            "masks": target["masks"].as_subclass(torch.Tensor),
                            "labels": target["labels"]})
        for group in optimizer.param_groups:
            group["lr"] = lr_at(it, iters, job["lr"], job["warmup"])
        losses = model(images, targets)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise RuntimeError(f"{job['arm']} seed {seed} iteration {it}: loss {float(loss)}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        optimizer.step()
        log.append(round(loss.item(), 4))
        if job.get("verbose") and (it % 50 == 0 or it == iters - 1):
            print(f"  [{job['arm']} seed {seed}] iter {it:5d} loss {loss.item():.3f} "
                  f"{time.time() - start:.0f}s", flush=True)
    train_s, train_cpu_s = time.time() - start, time.process_time() - cpu_start

    # prediction on the validation set
    t0 = time.time()
    model.eval()
    coco = load_coco(job["val"])
    results = []
    with torch.no_grad():
        for info in coco.images:
            rgb = read_image_rgb(Path(job["images"]) / info["file_name"])
            out = model([torch.from_numpy(rgb).permute(2, 0, 1).float().div(255)])[0]
            masks = (out["masks"][:, 0] >= 0.5).numpy()
            for box, label, score, mask in zip(out["boxes"].tolist(), out["labels"].tolist(),
                                               out["scores"].tolist(), masks):
                if not mask.any():
                    continue
                x1, y1, x2, y2 = box
                results.append({"image_id": int(info["id"]), "category_id": int(label), "score": float(score),
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "segmentation": rle_encode(mask)})
    pred = Path(job["pred"])
    pred.parent.mkdir(parents=True, exist_ok=True)
    pred.write_text(json.dumps(results))
    (pred.parent / "train_log.json").write_text(json.dumps({"loss": log, "pasted": pasted_total}))
    return {"arm": job["arm"], "seed": seed, "train_s": train_s, "s_per_iter": train_s / max(iters, 1),
            "cpu_s_per_iter": train_cpu_s / max(iters, 1),
            "predict_s": time.time() - t0, "detections": len(results), "pasted": pasted_total,
            "final_loss": float(np.mean(log[-20:])) if log else float("nan")}


# ----------------------------------------------------------------------------- evaluation and report
METRICS = ("AP", "APr", "APc", "APf")
ARMS = ("baseline", "xpaste")


def _mean_sd(values: list[float]) -> tuple[float, float]:
    v = [x for x in values if x is not None and math.isfinite(x)]
    if not v:
        return float("nan"), float("nan")
    return float(np.mean(v)), (float(np.std(v, ddof=1)) if len(v) > 1 else 0.0)


def evaluate_runs(val: Path, preds: dict[tuple[str, int], Path], seeds: list[int]) -> dict:
    """What `xpaste eval --gt val --pred baseline --compare xpaste --iou-type T` computes and prints."""
    from xpaste.evaluate.metrics import evaluate, format_table

    arms = {arm: {"segm": [], "bbox": []} for arm in ARMS}
    for seed in seeds:
        for iou in ("segm", "bbox"):
            results = {arm: evaluate(val, preds[(arm, seed)], iou_type=iou) for arm in ARMS}
            print(f"\nseed {seed}, {iou} (xpaste eval --compare):\n" + format_table(results, delta=True))
            for arm in ARMS:
                arms[arm][iou].append({"seed": seed, **{m: round(100 * results[arm][m], 2) for m in METRICS}})
    return arms


def summary_table(arms: dict) -> str:
    lines = []
    for iou in ("segm", "bbox"):
        lines.append(f"\n{iou} AP (x100), mean +- sd over seeds {[r['seed'] for r in arms['baseline'][iou]]}")
        lines.append(f"{'metric':<6} " + "".join(f"{a:>18}" for a in ARMS) + f"{'delta':>10}")
        for m in METRICS:
            cells, means = [], []
            for arm in ARMS:
                mean, sd = _mean_sd([r[m] for r in arms[arm][iou]])
                means.append(mean)
                cells.append(f"{mean:6.1f} +- {sd:4.1f}")
            lines.append(f"{m:<6} " + "".join(f"{c:>18}" for c in cells) + f"{means[1] - means[0]:>+10.1f}")
        for arm in ARMS:
            lines.append(f"  {arm:<9} per seed: " + "; ".join(
                f"seed {r['seed']}: " + " ".join(f"{m} {r[m]:.1f}" for m in METRICS) for r in arms[arm][iou]))
    return "\n".join(lines)


def target_check(arms: dict) -> dict:
    base_r, _ = _mean_sd([r["APr"] for r in arms["baseline"]["segm"]])
    xp_r, _ = _mean_sd([r["APr"] for r in arms["xpaste"]["segm"]])
    base_f, base_f_sd = _mean_sd([r["APf"] for r in arms["baseline"]["segm"]])
    xp_f, _ = _mean_sd([r["APf"] for r in arms["xpaste"]["segm"]])
    return {"mask_APr_gain": round(xp_r - base_r, 2), "mask_APr_gain_ok": bool(xp_r - base_r >= 5.0),
            "mask_APf_change": round(xp_f - base_f, 2), "mask_APf_baseline_sd": round(base_f_sd, 2),
            "mask_APf_ok": bool(xp_f >= base_f - base_f_sd)}


# ----------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=3, help="training seeds 0..N-1 (default 3)")
    p.add_argument("--iters", type=int, default=None, help="training iterations per run (default 700; quick: 10)")
    p.add_argument("--batch-size", type=int, default=None, help="images per iteration (default 4; quick: 1)")
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--max-paste", type=int, default=5, help="pasted objects per image ~ U[0, max)")
    p.add_argument("--workers", type=int, default=2, help="training processes at a time (one torch thread each)")
    p.add_argument("--quick", action="store_true", help="tiny task, 10 iterations, 1 seed: checks the loop runs")
    p.add_argument("--out", type=Path, default=Path("runs/effect"),
                   help="work folder: <out>/full (or <out>/quick) holds the task, the pool run and the predictions")
    p.add_argument("--json", type=Path, default=None, help="write the figures here")
    p.add_argument("--verbose", action="store_true", help="print training losses")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds = 1 if "--seeds" not in (argv if argv is not None else sys.argv) else args.seeds
        args.iters = 10 if args.iters is None else args.iters
        args.batch_size = 1 if args.batch_size is None else args.batch_size
    args.iters = 700 if args.iters is None else args.iters
    args.batch_size = 4 if args.batch_size is None else args.batch_size
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    t_start = time.time()
    out = args.out / ("quick" if args.quick else "full")  # the two tasks never share a pipeline run
    out.mkdir(parents=True, exist_ok=True)
    task = build_task(out / "task", args.quick)
    t_task = time.time()
    pool = build_pool(out, task["train"], QUICK["pool_per_category"] if args.quick else POOL_PER_CATEGORY,
                      progress=args.verbose)
    from xpaste.pool.store import InstancePool

    pool_counts = InstancePool.open(pool).counts()
    t_pool = time.time()
    print(f"task: {out / 'task'} ({time.time() - t_start:.1f}s); pool: {pool} {dict(sorted(pool_counts.items()))} "
          f"({t_pool - t_task:.1f}s)", flush=True)

    seeds = list(range(args.seeds))
    jobs, preds = [], {}
    for seed in seeds:
        for arm in ARMS:
            pred = out / "runs" / f"{arm}-seed{seed}" / "results.json"
            preds[(arm, seed)] = pred
            jobs.append({"arm": arm, "seed": seed, "iters": args.iters, "batch": args.batch_size, "lr": args.lr,
                         "warmup": 100, "max_paste": args.max_paste, "pool": str(pool) if arm == "xpaste" else None,
                         "train": str(task["train"]), "val": str(task["val"]), "images": str(task["images"]),
                         "pred": str(pred), "verbose": args.verbose})
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import multiprocessing

    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as ex:
        runs = list(ex.map(train_and_predict, jobs))
    t_train = time.time()
    for r in runs:
        print(f"  {r['arm']:<8} seed {r['seed']}: {r['train_s']:.0f}s training ({r['s_per_iter']:.2f} s/iter), "
              f"{r['predict_s']:.0f}s predicting, {r['detections']} detections, {r['pasted']} pasted objects, "
              f"final loss {r['final_loss']:.3f}")
    arms = evaluate_runs(task["val"], preds, seeds)
    print(summary_table(arms))
    check = target_check(arms)
    total = time.time() - t_start
    print(f"\ntarget (mask APr >= baseline + 5; APf within the baseline's seed sd): "
          f"APr gain {check['mask_APr_gain']:+.1f} ({'met' if check['mask_APr_gain_ok'] else 'missed'}), "
          f"APf change {check['mask_APf_change']:+.1f} vs sd {check['mask_APf_baseline_sd']:.1f} "
          f"({'met' if check['mask_APf_ok'] else 'missed'}); total {total / 60:.1f} min "
          f"(task+pool {t_pool - t_start:.0f}s, training {t_train - t_pool:.0f}s, eval {time.time() - t_train:.0f}s)"
          + ("  [--quick: numbers are meaningless]" if args.quick else ""))
    counts = QUICK["counts"] if args.quick else [c[3] for c in CATEGORIES]
    report = {"arms": arms, "target": check, "quick": bool(args.quick),
              "schedule": {"iters": args.iters, "batch_size": args.batch_size, "lr": args.lr, "seeds": seeds,
                           "max_paste": args.max_paste, "workers": args.workers},
              "task": {"image_size": SIZE, "train_images": QUICK["n_train"] if args.quick else N_TRAIN,
                       "val_images": QUICK["n_val"] if args.quick else N_VAL,
                       "categories": [{"id": i + 1, "name": c[0], "frequency": c[4],
                                       "train_images": counts[i],
                                       "pool_instances": int(pool_counts.get(i + 1, 0))}
                                      for i, c in enumerate(CATEGORIES)]},
              "runs": runs, "seconds": round(total, 1)}
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
