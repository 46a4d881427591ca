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

# (skimage file, category, crop as fractions x0, y0, x1, y1) for object-centric photos. GrabCut starts from a
# rectangle just inside the crop, so the crop frames the object (the rocket is a thin object in a wide scene).
OBJECT_PHOTOS = [
    ("chelsea.png", "cat", (0.0, 0.0, 1.0, 1.0)),
    ("coffee.png", "cup", (0.0, 0.0, 1.0, 1.0)),
    ("rocket.jpg", "rocket", (0.40, 0.25, 0.62, 0.97)),
    ("astronaut.png", "person", (0.0, 0.0, 1.0, 1.0)),
    ("motorcycle_left.png", "motorcycle", (0.0, 0.0, 1.0, 1.0)),
]
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
    """Coins are bright on a dark table: Otsu threshold, then one instance per sizeable component."""
    import cv2

    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    gray = cv2.GaussianBlur(gray, (5, 5), 0)
    _, binary = cv2.threshold(gray, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    binary = cv2.morphologyEx(binary, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    return [labels == k for k in range(1, n) if stats[k, cv2.CC_STAT_AREA] >= 300]


def build_demo_dataset(root: Path) -> tuple[Path, Path]:
    """Write root/images/*.png and root/annotations.json; returns (json, images dir)."""
    from xpaste.data.coco import annotation_from_mask
    from xpaste.io import write_image_atomic, write_json_atomic
    from xpaste.ops.masks import binarize, largest_component
    from xpaste.segment import build_segmenter

    data = _skimage_data_dir()
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    names = [name for _, name, _ in OBJECT_PHOTOS] + ["coin"]
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(names)]
    cat_id = {c["name"]: c["id"] for c in categories}
    images, annotations = [], []
    segmenter = build_segmenter("grabcut", iterations=5, margin=0.04)

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
        soft = segmenter.segment([rgb], [category])[0]
        add_image(rgb, f"{category}.png", [largest_component(binarize(soft))], category)
    coins = _load_rgb(data / "coins.png", 384)
    add_image(coins, "coins.png", _coin_masks(coins), "coin")
    for file in TEXTURES:
        add_image(_load_rgb(data / file, 320), f"texture_{Path(file).stem}.png", [], None)
    path = root / "annotations.json"
    write_json_atomic(path, {"info": {"description": "xpaste demo: scikit-image sample photos, GrabCut masks"},
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
    stage("xpaste stats", lambda: cli(["stats", str(paths["json"]), "--out", str(out / "stats.json")]))
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
        "pool", "import-coco", str(paths["json"]), "--images", str(paths["images"]), "--out", str(pool), "--append"]))
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
