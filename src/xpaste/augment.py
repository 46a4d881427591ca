"""Offline augmentation: write K Copy-Paste copies of every image of a COCO/LVIS dataset.

`augment_dataset` checks every option and path before anything is written, then runs the augment stage
(`xpaste.pipeline.augment_stage`) on the pipeline's runner: the same shards, done markers, fingerprint and
engines (this process, forked workers, Ray) as the other stages. Each (image, copy) has its own seed, so
the output does not depend on the engine, the number of workers or the order tasks finish in; a rerun
resumes a killed or interrupted run and ends with the bytes of an uninterrupted one. A rerun whose inputs
changed (dataset json content, images folder, pool content, scale prior, any option) is refused in one line
naming what changed, or starts over with `fresh=True`. One writer per output folder (a lock). The final
json is assembled from the shards in task order and written atomically at the end.

Output folder: images/ (<new id:012d>.jpg|.png), annotations.json, augment_log.json, and the internal
.xpaste/augment/ (stage.json and shard tables).
"""
from __future__ import annotations

import json
import logging
import numbers
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xpaste.errors import XPasteError

log = logging.getLogger("xpaste.augment")
ENGINES = ("local", "ray")
IMAGE_FORMATS = ("auto", "png")


@dataclass
class AugmentReport:
    images_written: int = 0
    images_resumed: int = 0
    annotations: int = 0
    pasted: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (file name, reason)
    skipped_annotations: list[tuple[str, str]] = field(default_factory=list)  # ("file#ann id", why), unique
    skipped_by_reason: dict[str, int] = field(default_factory=dict)  # reason code -> source annotations
    skipped_pastes: list[tuple[str, str]] = field(default_factory=list)  # ("file pool row N", why): unreadable
    occluded: int = 0  # originals hidden by pasted objects (the occlusion rule), per source annotation per copy
    out: str = ""
    seconds: float = 0.0

    def job_report(self):
        """The same outcome as the `xpaste.jobs.JobReport` every job returns."""
        from xpaste.jobs import JobReport

        counts = {"images written": self.images_written, "already done": self.images_resumed,
                  "annotations": self.annotations, "pasted": self.pasted,
                  **{f"not written ({k})": v for k, v in self.skipped_by_reason.items()},
                  "originals occluded (per copy)": self.occluded, "pastes skipped": len(self.skipped_pastes)}
        return JobReport("augment", self.out, counts, [{"item": f, "reason": w} for f, w in self.failed],
                         self.seconds)

    def summary(self) -> str:
        text = (f"{self.images_written} images written ({self.images_resumed} already done), "
                f"{self.annotations} annotations ({self.pasted} pasted), {len(self.failed)} images failed")
        if self.skipped_by_reason:
            reasons = ", ".join(f"{k}: {v}" for k, v in self.skipped_by_reason.items())
            text += f"; source annotations not written: {sum(self.skipped_by_reason.values())} ({reasons})"
        if self.occluded:
            text += (f"; {self.occluded} original annotations occluded by pasted objects (not written; counted per "
                     "source annotation per copy)")
        if self.skipped_pastes:
            text += f"; {len(self.skipped_pastes)} pastes skipped (pool cut-outs that could not be read)"
        return text


# ----------------------------------------------------------------------------- checks before writing
INT64_MAX = 2**63 - 1  # numpy, Arrow and the shard tables hold counts, ids and seeds as int64


def _int_option(name: str, value: Any, low: int | None = None, none_ok: bool = False,
                high: int = INT64_MAX) -> int | None:
    if value is None and none_ok:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise XPasteError(f"--{name} must be an integer, got {value!r}")
    if low is not None and value < low:
        raise XPasteError(f"--{name} must be at least {low}, got {value}")
    if value > high:
        raise XPasteError(f"--{name} must be at most {high}, got {value}")
    return int(value)


def check_options(copies, seed, workers, engine, image_format, max_images, scale_prior, paste, paste_kwargs):
    """Validate every option (types, ranges, choices) and return the PasteConfig; raises XPasteError in one
    line naming the option. Writes nothing. Paste options are checked by `PasteConfig` (its own rules)."""
    from xpaste.paste.config import PasteConfig

    _int_option("copies", copies, 1)
    _int_option("seed", seed, 0)  # numpy's SeedSequence takes non-negative integers only
    _int_option("workers", workers, 1)
    _int_option("max-images", max_images, 1, none_ok=True)
    if engine not in ENGINES:
        raise XPasteError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if image_format not in IMAGE_FORMATS:
        raise XPasteError(f"--image-format must be one of {', '.join(IMAGE_FORMATS)}, got {image_format!r}")
    if not isinstance(scale_prior, (str, os.PathLike)):
        raise XPasteError(f"--scale-prior must be 'dataset', 'none' or a file, got {scale_prior!r}")
    if str(scale_prior) not in ("dataset", "none") and not Path(scale_prior).is_file():
        raise XPasteError("--scale-prior is neither 'dataset', 'none' nor an existing file", scale_prior,
                          "pass an `xpaste stats` json or a COCO/LVIS json")
    base = paste if paste is not None else PasteConfig()
    if not isinstance(base, PasteConfig):
        raise XPasteError(f"paste must be a PasteConfig, got {type(base).__name__}")
    config = base.replace(**paste_kwargs) if paste_kwargs else base
    for name, value in config.to_dict().items():  # paste counts and sizes feed numpy's int64 as well
        if isinstance(value, numbers.Integral) and not isinstance(value, bool) and abs(value) > INT64_MAX:
            raise XPasteError(f"--{name.replace('_', '-')} must be at most {INT64_MAX}, got {value}")
    if config.sampling == "weighted":
        raise XPasteError("sampling 'weighted' needs per-category weights, which augment does not take",
                          hint="use balanced (X-Paste), uniform or present")
    return config


#: What augment writes (or replaces with --fresh) under --out; an input file there would be overwritten.
OUT_ENTRIES = ("annotations.json", "augment_log.json", "images", ".xpaste", ".parts")


def check_paths(dataset_path: Path, images_dir: Path, pool_path: Path, out: Path) -> None:
    """Inputs exist, and --out would overwrite none of them (`xpaste.io.refuse_overlap`): it is not, is not
    inside and does not contain the images folder or the pool, and nothing it writes is the dataset json
    (XPasteError otherwise)."""
    from xpaste.io import refuse_overlap

    if not dataset_path.is_file():
        raise XPasteError("dataset json not found", dataset_path)
    if not images_dir.is_dir():
        raise XPasteError("images folder not found", images_dir, "--images is the folder file_name is relative to")
    if not pool_path.is_dir():
        raise XPasteError("pool folder not found", pool_path)
    refuse_overlap(out, {"the dataset json (--dataset)": dataset_path, "the images folder (--images)": images_dir,
                         "the pool (--pool)": pool_path}, writes=OUT_ENTRIES)


def _check_not_foreign(out: Path, state: Path) -> None:
    """Refuse an --out that holds outputs this stage did not start (another tool, an older xpaste)."""
    if (state / "stage.json").exists():
        return
    found = [n for n in ("images", "annotations.json", ".parts")  # an empty folder (a failed first write) is no output
             if (out / n).exists() and not ((out / n).is_dir() and not any((out / n).iterdir()))]
    if found:
        raise XPasteError(f"the output folder already holds {', '.join(found)} from another run", out,
                          "choose a new --out, or pass --fresh to replace them")


# ----------------------------------------------------------------------------- driver
def augment_dataset(dataset_path: str | os.PathLike, images_dir: str | os.PathLike, pool_path: str | os.PathLike,
                    out_dir: str | os.PathLike, copies: int = 1, seed: int = 0, workers: int = 1,
                    scale_prior: str | os.PathLike = "dataset", image_format: str = "auto", progress: bool = True,
                    max_images: int | None = None, engine: str = "local", ray_address: str | None = None,
                    fresh: bool = False, paste=None, **paste_kwargs: Any) -> AugmentReport:
    """Write OUT/images/ and OUT/annotations.json (see the module docstring for determinism and resume).

    `paste` is a `xpaste.paste.config.PasteConfig` (default: its defaults); keyword paste options override
    it. `scale_prior`: 'dataset' (measured on the dataset's own annotations), 'none', or a stats / dataset
    json. `workers` > 1 forks that many processes (engine 'local'); `engine='ray'` runs on Ray actors.
    Raises XPasteError (one line) for a bad option, a missing or overlapping path, a dataset or pool
    refused at load, inputs changed since OUT was started, or another process writing OUT; OSError (disk
    full, permissions) and KeyboardInterrupt pass through with nothing half-written: rerun to resume.
    """
    from xpaste.data.coco import check_masks_present, load_coco
    from xpaste.data.stats import category_stats, resolve_scale_prior, scale_prior_from_stats
    from xpaste.io import exclusive_lock
    from xpaste.pipeline.augment_stage import (STATE_DIR, TASKS_PER_SHARD, AugmentStage, PackedDataset,
                                               file_digest, images_digest, pool_digest)
    from xpaste.pool.store import InstancePool

    started = time.perf_counter()
    config = check_options(copies, seed, workers, engine, image_format, max_images, scale_prior, paste,
                           paste_kwargs)
    dataset_path, images_dir, pool_path, out = (Path(p) for p in (dataset_path, images_dir, pool_path, out_dir))
    check_paths(dataset_path, images_dir, pool_path, out)
    dataset = load_coco(dataset_path)
    check_masks_present(dataset)  # box-only annotations: refused up front, in one line
    pool = InstancePool.open(pool_path)
    from xpaste.pool.categories import match_categories

    match_categories(pool, dataset.categories)  # pooled ids must exist in the dataset with the same names
    if str(scale_prior) == "dataset":
        prior = scale_prior_from_stats(category_stats(dataset))
    elif str(scale_prior) == "none":
        prior = {}
    else:
        prior = resolve_scale_prior(scale_prior)
    n_images = len(dataset.images) if max_images is None else min(int(max_images), len(dataset.images))
    if int(copies) * n_images > INT64_MAX:  # the task count is an int64 (shard plan, progress, Arrow)
        raise XPasteError(f"--copies {copies} x {n_images} images is more than {INT64_MAX} images to write",
                          hint="use a smaller --copies (or --max-images)")
    options = {"copies": int(copies), "seed": int(seed), "scale_prior": str(scale_prior),
               "image_format": image_format, "max_images": max_images, "shard_size": TASKS_PER_SHARD,
               "paste": config.to_dict()}
    fingerprint = {
        "dataset": file_digest(dataset_path),
        "images": images_digest(images_dir, (img["file_name"] for img in dataset.images[:n_images])),
        "pool": pool_digest(pool),
        "scale_prior": None if str(scale_prior) in ("dataset", "none") else file_digest(scale_prior),
        "options": options,
    }
    stage_config = {**options, "images_dir": str(images_dir.resolve()), "pool": str(pool_path.resolve()),
                    "device": "cpu", "fingerprint": fingerprint}  # device: no GPU for Ray actors
    # The workers share one packed copy of the inputs; the per-annotation dicts are dropped from here on.
    packed = PackedDataset(dataset, n_images)
    header, categories = dict(dataset.header), dataset.categories
    del dataset, pool
    _release_memory()
    stage = AugmentStage(out, stage_config, packed, categories, prior)

    with exclusive_lock(out, "output folder"):
        if not fresh:
            _check_not_foreign(out, out / STATE_DIR / stage.name)
        elif (out / ".parts").exists():
            import shutil

            shutil.rmtree(out / ".parts")
        from xpaste.pipeline.runner import run_stage

        result = run_stage(stage, engine=engine, progress=progress, fresh=fresh, ray_address=ray_address,
                           workers=int(workers))
        report = AugmentReport(out=str(out), images_resumed=result.items_resumed)
        info = {"xpaste": {"dataset": str(dataset_path.resolve()), "pool": str(pool_path.resolve()), **options}}
        _assemble(stage, header, categories, info, report)
        report.seconds = time.perf_counter() - started
    for file_name, why in report.failed:
        print(f"xpaste: skipped {file_name}: {why}", file=sys.stderr)
    for why in sorted({why for _, why in report.skipped_pastes})[:5]:  # one line per unreadable cut-out file
        print(f"xpaste: skipped pastes: {why}", file=sys.stderr)
    log.debug("%s: %s", out, report.summary())
    if report.images_written == 0 and report.failed:  # nothing usable: a failure, not an empty dataset
        (out / "annotations.json").unlink(missing_ok=True)  # augment_log.json keeps every failure
        file_name, why = report.failed[0]
        raise XPasteError(f"no image could be written: all {len(report.failed)} failed, the first ({file_name}): "
                          f"{why}", out, "see augment_log.json for every failure; fix the inputs and rerun "
                          "with --fresh")
    return report


def _release_memory() -> None:
    """Return freed heap pages to the OS (glibc), so forked workers do not map the dropped json objects."""
    import gc

    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _shard_rows(stage, k: int) -> list[dict]:
    import pyarrow.parquet as pq

    from xpaste.pipeline.shards import shard_path

    return pq.read_table(shard_path(stage.stage_dir, k), columns=["status", "file_name", "record", "why"]).to_pylist()


def _assemble(stage, header: dict, categories: list[dict], info: dict, report: AugmentReport) -> None:
    """Stream OUT/annotations.json from the shard tables, in task order (ids do not depend on the engine),
    then write OUT/augment_log.json. Both atomically; the json is never held whole in memory."""
    from xpaste.data.coco import count_skipped_by_reason
    from xpaste.io import atomic_path, write_json_atomic
    from xpaste.pipeline.augment_stage import OCCLUDED
    from xpaste.pipeline.runner import ShardPlan
    from xpaste.pipeline.shards import read_skipped

    def dump(obj) -> str:
        return json.dumps(obj, ensure_ascii=False, allow_nan=False)

    n_shards = len(ShardPlan(stage.plan(), stage.config["shard_size"]))
    head = {**header}
    if isinstance(head.setdefault("info", {}), dict):
        head["info"] = {**head["info"], **info}
    with atomic_path(stage.out / "annotations.json") as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write("{" + "".join(f"{dump(k)}: {dump(v)}, " for k, v in head.items()) + '"images": [')
        first = True
        for k in range(n_shards):
            for row in _shard_rows(stage, k):
                if row["status"] != "written":
                    report.failed.append((row["file_name"], row["why"]))
                    continue
                f.write(("" if first else ", ") + dump(json.loads(row["record"])["image"]))
                first = False
                report.images_written += 1
        f.write('], "annotations": [')
        ann_id = 0
        for k in range(n_shards):
            for row in _shard_rows(stage, k):
                if row["status"] != "written":
                    continue
                record = json.loads(row["record"])
                for ann in record["annotations"]:
                    ann_id += 1
                    report.pasted += bool(ann["pasted"])
                    f.write(("" if ann_id == 1 else ", ")
                            + dump({"id": ann_id, "image_id": record["image"]["id"], **ann}))
        report.annotations = ann_id
        f.write(f'], "categories": {dump(categories)}}}')
        f.flush()
        os.fsync(f.fileno())
    skipped = read_skipped(stage.stage_dir)
    report.skipped_pastes = [(s["item"], s["reason"]) for s in skipped if s.get("kind") == "paste"]
    report.occluded = sum(len(s["ann_ids"]) for s in skipped if s.get("kind") == OCCLUDED)
    unique = {s["item"]: s["reason"] for s in skipped  # each copy skips the same
              if s.get("kind") not in ("paste", OCCLUDED)}
    report.skipped_annotations = sorted(unique.items())
    report.skipped_by_reason = {k: v for k, v in count_skipped_by_reason(unique.items()).items() if v}
    write_json_atomic(stage.out / "augment_log.json", {
        "summary": report.summary(), "failed_images": report.failed,
        "skipped_annotations": report.skipped_annotations,
        "skipped_annotations_by_reason": report.skipped_by_reason,
        "occluded_annotations": {"count": report.occluded, "counted": "per source annotation per copy",
                                 "reason": OCCLUDED},
        "skipped_pastes": report.skipped_pastes}, indent=1)
