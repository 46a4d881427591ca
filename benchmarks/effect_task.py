"""The long-tail effect benchmark's task and its simulated generate stage (see `effect.py` for the whole run).

`build_task` writes the seeded task (train / val / plan splits, LVIS-style jsons with compressed-RLE masks, PNG
scenes); `build_collection` draws the object-centric images a text-to-image model would give (one object,
centred, on a light plain background). Everything is a function of `TASK_SEED` (and, for a planned round's
collection, of the round's key), so the task and the pools are rebuilt identically on every run.
"""
from __future__ import annotations

import json
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
# the planning split: scored by the baseline to write the plan, never by the reported figures (val)
N_PLAN = 60
MAX_OBJECTS = 4
OBJ_SIDE = (20, 44)
POOL_PER_CATEGORY, POOL_IMAGE = 24, 160
TASK_SEED = 2024
# at most 4 objects per scene (plus pastes in training): 50 detections per image keep every plausible one
DETECTIONS_PER_IMAGE, SCORE_THRESH = 50, 0.01
# quick mode: the same categories, a tiny task (counts are not the group definitions any more)
QUICK = {"n_train": 24, "n_val": 8, "n_plan": 8, "counts": [14, 12, 10, 8, 5, 3, 2, 2], "pool_per_category": 2}

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


def _exhaustive_cats(n_images: int, rng: np.random.Generator) -> list[list[int]]:
    """2-4 distinct categories per image, drawn uniformly (the validation and planning splits)."""
    return [[int(c) + 1 for c in rng.choice(len(CATEGORIES), size=int(rng.integers(2, MAX_OBJECTS + 1)),
                                            replace=False)] for _ in range(n_images)]


def build_task(out: Path, quick: bool) -> dict:
    """train.json / val.json / plan.json / images under out (rebuilt identically from TASK_SEED; the planning
    split is drawn after the others, so adding it left train and val as they were)."""
    rng = np.random.default_rng(TASK_SEED)
    groups = [c[4] for c in CATEGORIES]
    counts = QUICK["counts"] if quick else [c[3] for c in CATEGORIES]
    n_train, n_val, n_plan = (QUICK["n_train"], QUICK["n_val"], QUICK["n_plan"]) if quick else (N_TRAIN, N_VAL,
                                                                                               N_PLAN)
    train = _write_split(out, "train", _assign_train(n_train, counts, rng), rng, groups)
    val = _write_split(out, "val", _exhaustive_cats(n_val, rng), rng, groups)
    plan = _write_split(out, "plan", _exhaustive_cats(n_plan, rng), rng, groups)
    if not quick:  # the frequency groups are what LVIS' definition gives on the training set
        for c in json.loads(train.read_text())["categories"]:
            n = c["image_count"]
            measured = "r" if n <= 10 else ("c" if n <= 100 else "f")
            assert measured == c["frequency"], (c["name"], n, c["frequency"])
    return {"train": train, "val": val, "plan": plan, "images": out / "images"}


# ----------------------------------------------------------------------------- the pool
def _collection_image(shape: str, tex: str, rng: np.random.Generator) -> np.ndarray:
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
    return np.clip(image + rng.normal(0, 3, image.shape), 0, 255).astype(np.uint8)


def build_collection(folder: Path, counts: int | dict[str, int], round_key: int | None = None) -> int:
    """Object-centric images as a text-to-image model would give them (the simulated generate stage), under
    `folder/<category name>/NNN.png`; returns how many.

    counts: images per category (an int: the same for all, X-Paste's uniform generation; a dict: by category
    name, as `xpaste plan`'s `generate` column asks, missing names 0). round_key None draws the uniform round
    from one stream seeded by TASK_SEED + 1 (the pool of the README's first table); a planned round draws each
    category from its own stream seeded by (TASK_SEED + 2, round_key, category index), disjoint from the task's
    and the uniform round's seeds."""
    total = 0
    rng = np.random.default_rng(TASK_SEED + 1)
    for index, (name, shape, tex, _, _) in enumerate(CATEGORIES):
        n = counts if isinstance(counts, int) else int(counts.get(name, 0))
        if round_key is not None:
            rng = np.random.default_rng([TASK_SEED + 2, int(round_key), index])
        for k in range(n):
            _write_png(folder / name / f"{k:03d}.png", _collection_image(shape, tex, rng))
        total += n
    return total
