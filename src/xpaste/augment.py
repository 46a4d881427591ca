"""Offline augmentation: write K Copy-Paste copies of every image of a COCO/LVIS dataset.

Each (image, copy) is a task with its own seed, derived from (seed, image index, copy), so the output does
not depend on the number of workers or on the order tasks finish in. A finished task leaves its image and a
small part file (both written atomically) under OUT; a rerun skips finished tasks. The final annotation
json is assembled from the part files in task order and written atomically at the end.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xpaste.errors import XPasteError
from xpaste.io import read_json, write_bytes_atomic, write_json_atomic
from xpaste.ops.masks import masks_to_rles

PARTS = ".parts"
CONFIG_FILE = "augment_config.json"
PASTE_KEYS = ("max_paste", "num_paste", "sampling", "uniform_scale", "max_scale", "min_object_px", "min_size_px",
              "aspect_jitter", "flip_prob", "max_rotation", "color_jitter", "blend", "blend_sigma",
              "box_tolerance", "min_visible_area")


@dataclass
class AugmentReport:
    images_written: int = 0
    images_resumed: int = 0
    annotations: int = 0
    pasted: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (file name, reason)
    skipped_annotations: list[tuple[str, str]] = field(default_factory=list)
    out: str = ""

    def summary(self) -> str:
        return (f"{self.images_written} images written ({self.images_resumed} already done), "
                f"{self.annotations} annotations ({self.pasted} pasted), {len(self.failed)} images failed")


# ----------------------------------------------------------------------------- worker side
_STATE: dict[str, Any] = {}


def _init_worker(dataset_path, images_dir, pool_path, out_dir, seed, copies, paste_kwargs, scale_prior, ext_policy):
    from xpaste.data.coco import load_coco
    from xpaste.paste.transform import CopyPaste
    from xpaste.pool.store import InstancePool

    pool = InstancePool.open(pool_path)
    _STATE.update(
        dataset=load_coco(dataset_path) if isinstance(dataset_path, (str, Path)) else dataset_path,
        images_dir=Path(images_dir), out=Path(out_dir), seed=int(seed), copies=int(copies),
        transform=CopyPaste(pool, scale_prior=scale_prior, **paste_kwargs), ext_policy=ext_policy,
    )


def output_image_id(image_index: int, copy: int, copies: int) -> int:
    return image_index * copies + copy + 1


def _encode(image: np.ndarray, ext: str) -> bytes:
    import cv2

    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if ext == ".jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 1]
    ok, buf = cv2.imencode(ext, bgr, params)
    if not ok:
        raise RuntimeError(f"could not encode {ext}")
    return buf.tobytes()


def _run_task(task: tuple[int, int]) -> dict:
    """Augment one (image index, copy); returns a small status dict (never raises for bad input)."""
    from xpaste.data.coco import load_sample

    image_index, copy = task
    s = _STATE
    dataset = s["dataset"]
    image = dataset.images[image_index]
    new_id = output_image_id(image_index, copy, s["copies"])
    part_path = s["out"] / PARTS / f"{new_id}.json"
    if part_path.exists():
        return {"status": "resumed", "id": new_id}
    try:
        sample = load_sample(dataset, image["id"], s["images_dir"])
    except XPasteError as e:
        return {"status": "failed", "file": str(image.get("file_name")), "why": e.message}
    rng = np.random.default_rng([s["seed"], image_index, copy])
    try:
        out = s["transform"](sample, rng)
    except XPasteError as e:  # e.g. a pool file deleted under a long run: skip this image, say why
        return {"status": "failed", "file": str(image.get("file_name")), "why": str(e)}
    t = out.targets
    ext = ".png" if s["ext_policy"] == "png" or str(image["file_name"]).lower().endswith(".png") else ".jpg"
    file_name = f"{new_id:012d}{ext}"
    write_bytes_atomic(s["out"] / "images" / file_name, _encode(out.image, ext), durable=False)
    rles = masks_to_rles(t.masks, t.boxes)
    anns = []
    for i in range(len(t)):
        x1, y1, x2, y2 = (int(v) for v in t.boxes[i])
        area = int(np.count_nonzero(t.masks[i, y1:y2, x1:x2]))  # the box is tight: count inside it only
        ann = {"category_id": int(t.labels[i]), "segmentation": rles[i], "area": area,
               "bbox": [x1, y1, x2 - x1, y2 - y1], "iscrowd": int(bool(t.extra["iscrowd"][i])),
               "pasted": bool(t.extra["pasted"][i])}
        if ann["pasted"]:
            ann["instance_id"] = str(t.extra["instance_id"][i])
        else:
            ann["source_annotation_id"] = int(t.extra["ann_id"][i])
        anns.append(ann)
    record = {k: v for k, v in image.items() if k not in ("id", "file_name", "coco_url", "flickr_url")}
    pasted_cats = sorted({a["category_id"] for a in anns if a["pasted"]})
    if "neg_category_ids" in record:  # a pasted category is no longer absent from the image
        record["neg_category_ids"] = [c for c in record["neg_category_ids"] if c not in set(pasted_cats)]
    record.update(id=new_id, file_name=file_name, height=out.height, width=out.width,
                  source_image_id=image["id"], source_file_name=image["file_name"], copy=copy)
    part = {"image": record, "annotations": anns,
            "skipped_annotations": [[str(a), str(w)] for a, w in sample.meta.get("skipped_annotations", [])]}
    write_json_atomic(part_path, part, durable=False)
    return {"status": "written", "id": new_id}


# ----------------------------------------------------------------------------- driver
def _check_config(out: Path, config: dict) -> None:
    path = out / CONFIG_FILE
    if path.exists():
        previous = read_json(path)
        if previous != json.loads(json.dumps(config)):
            raise XPasteError("this output folder was started with different settings", path,
                              "rerun with the same options to resume, or choose a new --out")
    else:
        write_json_atomic(path, config, indent=1)


def augment_dataset(dataset_path: str | os.PathLike, images_dir: str | os.PathLike, pool_path: str | os.PathLike,
                    out_dir: str | os.PathLike, copies: int = 1, seed: int = 0, workers: int = 1,
                    scale_prior: str = "dataset", image_format: str = "auto", progress: bool = True,
                    max_images: int | None = None, engine: str = "local", ray_address: str | None = None,
                    **paste_kwargs: Any) -> AugmentReport:
    """Write OUT/images/ and OUT/annotations.json; see the module docstring for determinism and resume."""
    from tqdm import tqdm

    from xpaste.data.coco import check_masks_present, dataset_to_json, load_coco
    from xpaste.data.stats import category_stats, load_stats, scale_prior_from_stats
    from xpaste.pool.store import InstancePool

    unknown_keys = set(paste_kwargs) - set(PASTE_KEYS)
    if unknown_keys:
        raise TypeError(f"unknown paste options: {sorted(unknown_keys)}")
    if copies < 1 or workers < 1:
        raise XPasteError("--copies and --workers must be at least 1")
    if engine not in ("local", "ray"):
        raise XPasteError(f"engine must be 'local' or 'ray', got {engine!r}")
    out = Path(out_dir)
    dataset = load_coco(dataset_path)
    check_masks_present(dataset)  # box-only annotations: refused up front, in one line
    pool = InstancePool.open(pool_path)
    known = {int(c["id"]): c["name"] for c in dataset.categories}
    missing = sorted(set(pool.counts()) - set(known))
    if missing:
        raise XPasteError(f"the pool has categories {missing[:10]} that the dataset does not define", pool_path,
                          "build the pool with the dataset's category ids")
    if scale_prior == "dataset":
        prior = scale_prior_from_stats(category_stats(dataset))
    elif scale_prior == "none":
        prior = {}
    else:
        prior = scale_prior_from_stats(load_stats(scale_prior))
    config = {"dataset": str(Path(dataset_path).resolve()), "pool": str(Path(pool_path).resolve()),
              "copies": copies, "seed": seed, "scale_prior": scale_prior, "image_format": image_format,
              "max_images": max_images,
              "paste": {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(paste_kwargs.items())}}
    out.mkdir(parents=True, exist_ok=True)
    _check_config(out, config)
    (out / PARTS).mkdir(exist_ok=True)
    for folder in (out / PARTS, out / "images"):  # temp files of a killed run are never used again
        for stale in folder.glob(".*.tmp") if folder.exists() else []:
            stale.unlink(missing_ok=True)

    n_images = len(dataset.images) if max_images is None else min(int(max_images), len(dataset.images))
    tasks = [(i, c) for i in range(n_images) for c in range(copies)]
    report = AugmentReport(out=str(out))
    init_args = (dataset, images_dir, pool_path, out, seed, copies, paste_kwargs, prior, image_format)
    bar = tqdm(total=len(tasks), desc="augment", unit="img", disable=not progress)
    if engine == "ray":
        from xpaste.augment_ray import run_tasks_on_ray

        # actors load the dataset from its path and need absolute paths (they start in another folder)
        ray_args = (str(Path(dataset_path).resolve()), str(Path(images_dir).resolve()),
                    str(Path(pool_path).resolve()), str(out.resolve()), *init_args[4:])
        parts = out / PARTS
        todo = [t for t in tasks if not (parts / f"{output_image_id(*t, copies)}.json").exists()]
        report.images_resumed = len(tasks) - len(todo)
        bar.update(report.images_resumed)
        results = run_tasks_on_ray(todo, ray_args, ray_address)
    elif workers == 1:
        _init_worker(*init_args)
        results = map(_run_task, tasks)
    else:
        import multiprocessing as mp

        ctx = mp.get_context("fork" if os.name == "posix" else "spawn")
        executor = ctx.Pool(workers, initializer=_init_worker, initargs=init_args)
        results = executor.imap_unordered(_run_task, tasks, chunksize=4)
    try:
        for result in results:
            bar.update(1)
            if result["status"] == "resumed":
                report.images_resumed += 1
            elif result["status"] == "failed":
                report.failed.append((result["file"], result["why"]))
                bar.write(f"xpaste: skipped {result['file']}: {result['why']}", file=sys.stderr)
    finally:
        bar.close()
        if workers > 1 and engine == "local":
            executor.terminate()
    _STATE.clear()

    # Assemble the json from the parts, in task order, so ids do not depend on the worker count.
    images, annotations = [], []
    for image_index, copy in tasks:
        new_id = output_image_id(image_index, copy, copies)
        part_path = out / PARTS / f"{new_id}.json"
        if not part_path.exists():  # failed (reported above)
            continue
        part = read_json(part_path)
        images.append(part["image"])
        for ann in part["annotations"]:
            annotations.append({"id": len(annotations) + 1, "image_id": new_id, **ann})
        report.skipped_annotations.extend((f"{part['image']['source_file_name']}#{a}", w)
                                          for a, w in part["skipped_annotations"])
    report.images_written = len(images)
    report.annotations = len(annotations)
    report.pasted = sum(1 for a in annotations if a["pasted"])
    doc = dataset_to_json(dataset)
    doc["images"], doc["annotations"] = images, annotations
    doc.setdefault("info", {})
    if isinstance(doc["info"], dict):
        doc["info"] = {**doc["info"], "xpaste": config}
    write_json_atomic(out / "annotations.json", doc)
    write_json_atomic(out / "augment_log.json", {
        "summary": report.summary(), "failed_images": report.failed,
        "skipped_annotations": report.skipped_annotations}, indent=1)
    return report
