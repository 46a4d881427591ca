"""`make demo`: the main job offline on built-in data, in a couple of minutes on 2 cores.

1. A destination dataset from real photos that ship with scikit-image (a cat, a cup, a rocket, an astronaut,
   a motorcycle, coins; masks by GrabCut) plus texture photos (brick, grass, gravel).
2. The X-Paste pipeline on a local collection built from the same photos (one folder per category):
   segmentation with every segmenter whose weights are here (GrabCut always; rembg's u2net and CLIPSeg
   when their files are cached), CLIP scoring when `--clip` names weights (else the report says the pool
   was built without CLIP), build-pool; the dataset's own annotated instances are added as a second source.
3. `augment`: Copy-Paste copies of every destination image (images + COCO json with RLE masks).
4. `report`: one HTML page with contact sheets, histograms, segmenter win rates, coverage and a gallery.

With real checkpoints on a GPU machine the same command runs the real X-Paste pipeline:
    python -m xpaste.demo --model stable-diffusion-v1-5/stable-diffusion-v1-5 --clip ViT-L-14 --pretrained openai \
        --segmenter rembg:u2net --segmenter clipseg --per-category 16
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

# (skimage file, category, crop as fractions x0, y0, x1, y1) for object-centric photos (the rocket is a thin
# object in a wide scene, so its photo is cropped around it).
OBJECT_PHOTOS = [
    ("chelsea.png", "cat", (0.0, 0.0, 1.0, 1.0)),
    ("coffee.png", "cup", (0.0, 0.0, 1.0, 1.0)),
    ("rocket.jpg", "rocket", (0.40, 0.25, 0.62, 0.97)),
    ("astronaut.png", "person", (0.0, 0.0, 1.0, 1.0)),
    ("motorcycle_left.png", "motorcycle", (0.0, 0.0, 1.0, 1.0)),
]
# GrabCut's start per photo, as an annotator would give it in an interactive tool: the region that may hold the
# object (a box x0, y0, x1, y1 or a polygon; everything outside is background) and strokes (polylines) of sure
# foreground and sure background. Coordinates are pixels of the photo scaled to a longer side of SEED_SIDE. A plain
# rectangle is not enough for these photos: it cut the head off the astronaut (the suit's colour won), took the
# shelves above the motorcycle and kept only the middle of the cat's face.
SEED_SIDE = 320
SEEDS: dict[str, dict] = {
    "cat": {"region": (0, 0, 320, 213), "width": 14,
            "fg": [[(40, 120), (200, 60), (250, 150), (150, 200), (40, 180)], [(120, 20), (180, 20)]],
            "bg": [[(308, 5), (308, 205)], [(285, 10), (318, 10)]]},
    "cup": {"region": (35, 5, 315, 210), "width": 10,
            "fg": [[(130, 60), (200, 60)], [(100, 160), (240, 170)], [(60, 120), (90, 170)], [(250, 120), (270, 150)]],
            "bg": [[(5, 100), (20, 180)], [(300, 5), (318, 100)], [(5, 5), (60, 5)]]},
    "rocket": {"region": (8, 6, 139, 320), "width": 6, "fg": [[(66, 26), (66, 281)]],
               "bg": [[(100, 280), (135, 310)], [(20, 300), (40, 300)]]},
    "person": {"region": (8, 6, 320, 320), "width": 12,
               "fg": [[(140, 40), (140, 110)], [(110, 60), (170, 60)], [(100, 220), (180, 300), (60, 300)],
                      [(40, 260), (40, 310)]],
               "bg": [[(15, 20), (15, 220)], [(255, 30), (255, 160)], [(300, 60), (300, 180)], [(240, 260), (290, 300)],
                      [(60, 20), (80, 100)], [(270, 232), (305, 245)], [(200, 310), (300, 318)]]},
    "motorcycle": {"region": [(40, 95), (40, 75), (100, 62), (150, 66), (205, 62), (215, 40), (250, 40), (252, 105),
                              (295, 130), (302, 195), (245, 198), (215, 172), (155, 172), (140, 182), (60, 178),
                              (42, 150)], "width": 8,
                   "fg": [[(80, 80), (130, 75), (190, 85)], [(150, 140), (200, 140)], [(90, 130), (70, 150)],
                          [(270, 150), (275, 175)], [(235, 65), (225, 120)], [(283, 150), (285, 180)]],
                   "bg": [[(160, 20), (300, 25)], [(260, 70), (300, 70)], [(0, 200), (319, 205)], [(10, 60), (20, 120)],
                          [(60, 40), (140, 40)], [(125, 188), (215, 188)], [(20, 195), (90, 190)],
                          [(245, 85), (262, 100)], [(300, 150), (300, 190)], [(40, 175), (45, 195)]]},
}
TEXTURES = ["brick.png", "grass.png", "gravel.png"]


def _skimage_data_dir() -> Path:
    try:
        import skimage
    except ImportError as e:
        raise SystemExit("the demo needs scikit-image (its sample photos): pip install scikit-image") from e
    return Path(skimage.__file__).parent / "data"


def _load_rgb(path: Path, max_side: int) -> np.ndarray:
    from xpaste.imageio import read_rgb

    return _load_rgb_array(read_rgb(path), max_side)


def _load_rgb_array(rgb: np.ndarray, max_side: int) -> np.ndarray:
    """Downscale so the longer side is at most max_side."""
    import cv2

    rgb = np.ascontiguousarray(rgb)
    scale = max_side / max(rgb.shape[:2])
    if scale < 1:
        rgb = cv2.resize(rgb, (round(rgb.shape[1] * scale), round(rgb.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    return rgb


def _coin_masks(rgb: np.ndarray) -> list[np.ndarray]:
    """One mask per coin. The table's lighting falls off across the photo, so a global threshold merges the top
    row of coins with a bright strip along the top edge: threshold the white top-hat (brightness above the local
    background) instead, drop anything touching the border, take each part's convex hull (coins are round, and
    a worn face leaves dark gaps) and merge hulls that overlap (one coin split in two)."""
    import cv2

    gray = cv2.GaussianBlur(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), (5, 5), 0)
    flat = cv2.morphologyEx(gray, cv2.MORPH_TOPHAT, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (61, 61)))
    otsu, _ = cv2.threshold(flat, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    binary = (flat > 0.5 * otsu).astype(np.uint8)
    binary = cv2.morphologyEx(binary, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5)))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    h, w = binary.shape
    hulls = []
    for k in range(1, n):
        x, y, bw, bh, area = stats[k]
        if area < 150 or x == 0 or y == 0 or x + bw >= w or y + bh >= h:
            continue
        contours, _ = cv2.findContours((labels == k).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        hull = np.zeros((h, w), np.uint8)
        cv2.fillPoly(hull, [cv2.convexHull(np.concatenate(contours))], 1)
        hulls.append(hull.astype(bool))
    coins: list[np.ndarray] = []
    for m in sorted(hulls, key=lambda m: -int(m.sum())):
        for i, other in enumerate(coins):
            if (m & other).any():
                coins[i] = other | m
                break
        else:
            coins.append(m)
    return [m for m in coins if m.sum() >= 300]


def _grabcut_seeded(rgb: np.ndarray, seeds: dict, iterations: int = 8) -> np.ndarray:
    """GrabCut started from `seeds` (see SEEDS): the object's largest region, holes filled, as a bool mask."""
    import cv2

    from xpaste.ops.masks import largest_filled_component

    h, w = rgb.shape[:2]
    s = max(h, w) / SEED_SIDE

    def pts(points) -> np.ndarray:
        return np.int32(np.round(np.asarray(points, np.float64) * s))

    labels = np.full((h, w), cv2.GC_BGD, np.uint8)
    region = seeds["region"]
    if len(region) == 4 and not isinstance(region[0], (tuple, list)):
        x0, y0, x1, y1 = pts(region)
        labels[y0:y1, x0:x1] = cv2.GC_PR_FGD
    else:
        cv2.fillPoly(labels, [pts(region)], cv2.GC_PR_FGD)
    width = max(1, round(seeds["width"] * s))
    for value, strokes in ((cv2.GC_BGD, seeds["bg"]), (cv2.GC_FGD, seeds["fg"])):
        for line in strokes:
            cv2.polylines(labels, [pts(line)], False, value, width)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)  # the same masks on every run
    cv2.grabCut(np.ascontiguousarray(rgb), labels, None, bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK)
    fg = ((labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)).astype(np.uint8) * 255
    return np.asarray(largest_filled_component(fg)) > 0


def build_demo_dataset(root: Path) -> tuple[Path, Path]:
    """Write root/images/*.png and root/annotations.json; returns (json, images dir)."""
    from xpaste.data.coco import annotation_from_mask
    from xpaste.io import write_image_atomic, write_json_atomic

    data = _skimage_data_dir()
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    names = [name for _, name, _ in OBJECT_PHOTOS] + ["coin"]
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(names)]
    cat_id = {c["name"]: c["id"] for c in categories}
    images, annotations = [], []

    def add_image(rgb: np.ndarray, file_name: str, masks: list[np.ndarray], category: str | None) -> None:
        image_id = len(images) + 1
        write_image_atomic(images_dir / file_name, rgb)
        images.append({"id": image_id, "file_name": file_name, "height": rgb.shape[0], "width": rgb.shape[1]})
        for m in masks:
            if m.any():
                annotations.append(annotation_from_mask(m, cat_id[category], len(annotations) + 1, image_id))

    for file, category, (fx0, fy0, fx1, fy1) in OBJECT_PHOTOS:
        rgb = _load_rgb(data / file, 640)
        h, w = rgb.shape[:2]
        rgb = _load_rgb_array(rgb[round(fy0 * h) : round(fy1 * h), round(fx0 * w) : round(fx1 * w)], 320)
        add_image(rgb, f"{category}.png", [_grabcut_seeded(rgb, SEEDS[category])], category)
    coins = _load_rgb(data / "coins.png", 384)
    add_image(coins, "coins.png", _coin_masks(coins), "coin")
    for file in TEXTURES:
        add_image(_load_rgb(data / file, 320), f"texture_{Path(file).stem}.png", [], None)
    path = root / "annotations.json"
    write_json_atomic(path, {"info": {"description": "xpaste demo: scikit-image sample photos, GrabCut masks from drawn seeds"},
                             "images": images, "annotations": annotations, "categories": categories}, indent=1)
    return path, images_dir


def write_preview(augmented: Path, out_png: Path, max_images: int = 12, tile: int = 256) -> None:
    """A contact sheet: pasted instances outlined in green, original ones in red."""
    import cv2

    from xpaste.imageio import read_rgb
    from xpaste.io import write_image_atomic
    from xpaste.ops.masks import rle_decode

    doc = json.loads((augmented / "annotations.json").read_text())
    by_image: dict[int, list[dict]] = {}
    for a in doc["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    tiles = []
    for img in doc["images"][:max_images]:
        rgb = read_rgb(augmented / "images" / img["file_name"])
        for a in by_image.get(img["id"], []):
            mask = rle_decode(a["segmentation"]).astype(np.uint8)
            contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(rgb, contours, -1, (0, 255, 0) if a["pasted"] else (255, 0, 0), 2)
        scale = tile / max(rgb.shape[:2])
        small = cv2.resize(rgb, (round(rgb.shape[1] * scale), round(rgb.shape[0] * scale)), interpolation=cv2.INTER_AREA)
        canvas = np.full((tile, tile, 3), 255, np.uint8)
        canvas[: small.shape[0], : small.shape[1]] = small
        tiles.append(canvas)
    cols = 4
    rows = [np.concatenate(tiles[i : i + cols] + [np.full((tile, tile, 3), 255, np.uint8)] * (cols - len(tiles[i : i + cols])), axis=1)
            for i in range(0, len(tiles), cols)]
    write_image_atomic(out_png, np.concatenate(rows, axis=0))


def _available_segmenters() -> list[str]:
    """GrabCut always; rembg's u2net and CLIPSeg only when their weights are already on this machine."""
    specs = ["grabcut"]
    if os.getenv("U2NET_HOME"):
        homes = [Path(os.environ["U2NET_HOME"])]
    else:
        xdg = os.getenv("XDG_DATA_HOME")
        homes = [Path(os.getenv("REMBG_HOME", Path(xdg, "rembg") if xdg else Path.home() / ".rembg")) / "models" / "u2net"]
    if any((h / "u2net.onnx").is_file() for h in homes):
        specs.append("rembg:u2net")
    try:
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache("CIDAS/clipseg-rd64-refined", "config.json"), str):
            specs.append("clipseg")
    except Exception:  # noqa: BLE001 - no hub library or no cache: CLIPSeg is simply not offered
        pass
    return specs


def build_collection(dataset_json: Path, images_dir: Path, out: Path) -> Path:
    """A labelled collection (out/<category>/*.png) cut from the dataset photos: each object's own photo
    and, for the coins, one crop per coin with a margin, so GrabCut sees one object per image."""
    from xpaste.data.coco import load_coco, load_sample
    from xpaste.io import write_image_atomic

    dataset = load_coco(dataset_json)
    names = {c["id"]: c["name"] for c in dataset.categories}
    for image in dataset.images:
        sample = load_sample(dataset, image["id"], images_dir)
        t = sample.targets
        for i in range(len(t)):
            x1, y1, x2, y2 = (int(v) for v in t.boxes[i])
            margin = max(8, (x2 - x1) // 4) if len(t) > 1 else 0
            crop = sample.image[max(0, y1 - margin): y2 + margin, max(0, x1 - margin): x2 + margin] if margin \
                else sample.image
            write_image_atomic(out / names[int(t.labels[i])] / f"{image['id']}_{i}.png", np.ascontiguousarray(crop))
    return out


def check_models(models: list[str], clip: str | None, pretrained: str | None, segmenters: list[str]) -> None:
    """In seconds, before anything is built: every model named on the command line can load (a local path,
    or the hub answers, or it is in the local cache), else XPasteError in one line naming the model and the
    flag for a local folder (xpaste.hub). rembg's sessions are opened here (quick; they download nothing
    when offline)."""
    from xpaste.segment import build_segmenter, parse_spec

    if models:
        from xpaste.generate.diffusers_t2i import check_model

        for model in models:
            check_model(model)
    if clip:
        from xpaste.score.clip import check_model as check_clip

        check_clip(clip, pretrained)
    for spec in segmenters:
        name, arg = parse_spec(spec)
        if name == "clipseg":
            from xpaste.segment.clipseg import DEFAULT_MODEL, check_model as check_clipseg

            check_clipseg(arg or DEFAULT_MODEL)
        elif name == "rembg":
            build_segmenter(spec)


#: What the demo writes under its --out (`xpaste.io.check_output`: a folder holding anything else is refused).
DEMO_ENTRIES = ("dataset", "stats.json", "collection", "run", "pipeline.yaml", "augmented", "preview.png", "report")


def main(argv: list[str] | None = None) -> int:
    """`python -m xpaste.demo ...`: a model that cannot load (or any XPasteError) ends in one line, exit 2."""
    from xpaste.errors import XPasteError

    try:
        return _main(argv)
    except XPasteError as e:
        print(f"xpaste demo: error: {e}", file=sys.stderr, flush=True)
        return 2


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="xpaste offline demo on scikit-image sample photos")
    parser.add_argument("--out", type=Path, default=Path("demo_out"))
    parser.add_argument("--copies", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--model", action="append", default=[], help="text-to-image model(s): hub id or folder")
    parser.add_argument("--per-category", type=int, default=8, help="generated images per category (with --model)")
    parser.add_argument("--steps", type=int, default=25, help="diffusion steps (with --model)")
    parser.add_argument("--clip", default=None, help="open_clip model: name, hf-hub:..., or local-dir:...")
    parser.add_argument("--pretrained", default=None, help="open_clip pretrained tag for --clip (e.g. openai)")
    parser.add_argument("--segmenter", action="append", default=[], help="extra segmenter specs")
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)

    import yaml

    from xpaste.cli import main as cli
    from xpaste.io import check_output, write_bytes_atomic
    from xpaste.stages.config import PipelineConfig
    from xpaste.pipeline.rundir import RunDir
    from xpaste.stages.run import run_pipeline

    check_models(args.model, args.clip, args.pretrained, args.segmenter)  # before anything is built
    out: Path = args.out
    check_output(out, writes=DEMO_ENTRIES)
    times: dict[str, float] = {}

    def stage(name: str, fn) -> None:
        print(f"\n== {name}", flush=True)
        start = time.perf_counter()
        result = fn()
        if result not in (None, 0):
            raise SystemExit(f"demo stage {name!r} failed (exit {result})")
        times[name] = time.perf_counter() - start

    paths: dict[str, Path] = {}
    stage("build dataset from scikit-image photos (GrabCut masks)",
          lambda: paths.update(zip(("json", "images"), build_demo_dataset(out / "dataset"))))
    stage("xpaste stats", lambda: cli(["stats", "--dataset", str(paths["json"]), "--out", str(out / "stats.json")]))
    stage("collection of object photos", lambda: paths.update(
        collection=build_collection(paths["json"], paths["images"], out / "collection")))

    segmenters = list(dict.fromkeys(_available_segmenters() + args.segmenter))
    run_dir = out / "run"
    config = {
        "run_dir": str(run_dir), "shard_size": 8, "device": args.device,
        "categories": {"source": str(paths["json"])},
        "generate": {"enabled": bool(args.model), "models": args.model or ["none"], "per_category": args.per_category,
                     "steps": args.steps, "seed": args.seed},
        "retrieve": {"enabled": True, "folder": str(paths["collection"]), "labelled": True},
        "segment": {"segmenters": segmenters},
        "score": {"clip": args.clip, "pretrained": args.pretrained},
        "build_pool": {"area_min": 0.02, "area_max": 0.98},
    }
    pipeline_config = PipelineConfig.from_dict(config)  # checked before anything runs
    config_path = out / "pipeline.yaml"  # the same run from the command line: xpaste run demo_out/pipeline.yaml
    write_bytes_atomic(config_path, yaml.safe_dump(pipeline_config.to_dict(), sort_keys=False).encode())
    print(f"segmenters: {', '.join(segmenters)}; CLIP: {args.clip or 'none (pass --clip to score cut-outs)'}")

    def pipeline() -> None:
        for line in run_pipeline(pipeline_config).lines():
            print(line)

    stage("run_pipeline (retrieve/generate, segment, score, build-pool)", pipeline)
    pool = RunDir(run_dir).pool_dir(pipeline_config.to_dict())
    stage("xpaste pool import-coco (the dataset's own instances)", lambda: cli([
        "pool", "import-coco", "--dataset", str(paths["json"]), "--images", str(paths["images"]), "--out", str(pool), "--append"]))
    stage("xpaste pool info", lambda: cli(["pool", "info", str(pool)]))
    augmented = out / "augmented"
    stage("xpaste augment", lambda: cli([
        "augment", "--dataset", str(paths["json"]), "--images", str(paths["images"]), "--pool", str(pool),
        "--out", str(augmented), "--copies", str(args.copies), "--seed", str(args.seed),
        "--workers", str(args.workers), "--max-paste", "8", "--fresh"]))  # inputs are rebuilt on every run
    stage("preview sheet", lambda: write_preview(augmented, out / "preview.png"))
    report = out / "report"
    stage("xpaste report", lambda: cli(["report", str(pool), str(augmented), "--run", str(run_dir),
                                        "--dataset", str(paths["json"]), "--out", str(report)]))

    print("\n== stage times")
    for name, seconds in times.items():
        print(f"  {seconds:7.2f} s  {name}")
    print(f"  {sum(times.values()):7.2f} s  total")
    print(f"\naugmented dataset: {augmented / 'annotations.json'} (images in {augmented / 'images'})")
    print(f"preview (pasted = green, original = red): {out / 'preview.png'}")
    print(f"report: {report / 'index.html'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
