"""The augment stage (`xpaste augment`, and the last stage of `xpaste run` when enabled): write K Copy-Paste
copies of every image of a COCO/LVIS dataset, pasted with a pool, as images plus a COCO/LVIS json (RLE masks).

One module: its config section (`AugmentConfig`, the options of `xpaste run`'s `augment:`), the checks of every
option and path (`check_options`, `check_paths`), its `AugmentStage` on the pipeline's runner (the same shards,
done markers, fingerprint and engines as the other stages: this process, forked workers, Ray), its driver
`augment_dataset` and its job (`run_job`).

One task per (image index, copy), `TASKS_PER_SHARD` per shard; a task's seed is (seed, image index, copy), so
the output does not depend on the engine, the worker count or the order shards finish in. A shard writes its
images (atomically) under OUT/images/, then its row table (the runner's done marker) under OUT/.xpaste/augment/;
a shard counts as done only when its table exists and every image it lists exists with the recorded size. A
rerun resumes a killed or interrupted run and ends with the bytes of an uninterrupted one; a rerun whose inputs
changed (dataset json content, images folder, pool content, scale prior, any option) is refused in one line
naming what changed, or starts over with `fresh=True`. One writer per output folder (a lock). The final json
is assembled from the shard tables in task order and written atomically at the end (`_assemble`).

The dataset is packed once in the driver (`xpaste.data.packed.PackedDataset`), so forked workers share it
copy-on-write, Ray actors receive it zero-copy, and the driver can drop the 1M+ annotation dicts of an LVIS json.

Output folder: images/ (<new id:012d>.jpg|.png), annotations.json, augment_log.json, and the internal
.xpaste/augment/ (stage.json and shard tables).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from xpaste.core.targets import occluded_originals
from xpaste.data.coco import CocoDataset, check_masks_present, count_skipped_by_reason, load_coco, load_sample
from xpaste.data.packed import PackedDataset, release_memory
from xpaste.data.stats import category_stats, resolve_scale_prior, scale_prior_from_stats
from xpaste.errors import XPasteError
from xpaste.fingerprint import digest, file_digest, images_digest, pool_digest
from xpaste.io import (atomic_path, check_output, encode_image, exclusive_lock, refuse_overlap, write_bytes_atomic,
                       write_json_atomic)
from xpaste.jobs import AugmentReport, JobReport
from xpaste.ops.masks import masks_to_rles
from xpaste.paste.config import PasteConfig
from xpaste.pipeline.rundir import RunDir
from xpaste.pipeline.runner import INT64_MAX, RunSettings, ShardPlan, Stage, as_dict, run_stage
from xpaste.pipeline.shards import read_skipped, shard_path
from xpaste.plan import plan_weights
from xpaste.pool.categories import match_categories
from xpaste.pool.store import InstancePool
from xpaste.typed import ConfigError, Section, check_value, key_field

log = logging.getLogger("xpaste.augment")
NAME = "augment"
HELP = ("Paste pool instances into every image, K times, and write images plus a COCO/LVIS json (RLE masks).\n\n"
        "Every option is checked before anything is written. A killed or interrupted run resumes when rerun with "
        "the same command; a rerun whose inputs or options changed is refused (or starts over with --fresh).")
IMAGE_FORMATS = ("auto", "png")
TASKS_PER_SHARD = 16  # the unit of resume: a kill redoes at most this many images per worker
STATE_DIR = ".xpaste"  # OUT/.xpaste/augment/: stage.json and the shard tables (internal)
OCCLUDED = "occluded"  # the reason code of originals hidden by pasted objects (augment_log.json)
#: What augment writes (or replaces with --fresh) under --out; an input file there would be overwritten.
OUT_ENTRIES = ("annotations.json", "augment_log.json", "images", ".xpaste", ".parts")


# ----------------------------------------------------------------------------- config and checks
@dataclass(frozen=True)
class AugmentConfig(Section):
    """`xpaste run` ends with augment when enabled: the dataset pasted with the pool build-pool wrote. The one
    declaration of augment's options: `xpaste augment`'s flags, `augment_dataset`'s defaults and the checks
    of `check_options` come from these fields (with `RunSettings`' workers, engine, ray_address); the paste
    options are `PasteConfig`'s (one home)."""

    _key_prefix = "augment."

    enabled: bool = key_field(False, "run augment after build-pool in `xpaste run`", cli=False)
    dataset: Optional[str] = key_field(None, "COCO/LVIS annotation json to augment", cli=False)
    images: Optional[str] = key_field(None, "folder the json's file_name entries are relative to", cli=False)
    out: Optional[str] = key_field(None, "output folder (default RUN/augmented)", cli=False)
    copies: int = key_field(1, "augmented copies per image", lo=1, hi=INT64_MAX)
    # numpy's SeedSequence takes non-negative integers only
    seed: int = key_field(0, "seed of the paste plans; copy c of image i uses (seed, i, c)", lo=0, hi=INT64_MAX)
    scale_prior: str = key_field("dataset", "'dataset' (measured on the dataset's original annotations), 'none', "
                                 "an `xpaste stats` json or another COCO/LVIS json")
    image_format: str = key_field("auto", "auto: png stays png, else jpg", choices=IMAGE_FORMATS)
    max_images: Optional[int] = key_field(None, "only the first N images (a subset run)", lo=1, hi=INT64_MAX)
    plan: Optional[str] = key_field(None, "an `xpaste plan` json: its paste_weight per category, for sampling "
                                    "'weighted'")
    paste: Any = field(default=None, metadata={"convert": PasteConfig.from_config_value})

    def _check(self) -> None:
        prefix = getattr(self, "_prefix", "")
        if self.enabled and not (self.dataset and self.images):
            raise ConfigError(f"config key {prefix}enabled: augment needs {prefix}dataset and {prefix}images")



#: The options `check_options` validates: name -> the config dataclass that declares it.
_OPTION_HOMES = {"copies": AugmentConfig, "seed": AugmentConfig, "max_images": AugmentConfig,
                 "image_format": AugmentConfig, "scale_prior": AugmentConfig, "workers": RunSettings,
                 "engine": RunSettings}


def check_options(copies, seed, workers, engine, image_format, max_images, scale_prior, paste, paste_kwargs,
                  plan=None):
    """Validate every option against the bounds and choices on its field (`AugmentConfig`, `RunSettings`,
    `PasteConfig`: declared once) and return (the options coerced, {name: value}; the PasteConfig). Raises
    XPasteError (ConfigError, PasteConfigError) in one line naming the option. Writes nothing.
    Sampling 'weighted' and `plan` (an existing file) go together: either one alone is refused."""
    given = {"copies": copies, "seed": seed, "workers": workers, "engine": engine, "image_format": image_format,
             "max_images": max_images, "scale_prior": scale_prior}
    values = {name: check_value(_OPTION_HOMES[name], name, value, "--" + name.replace("_", "-"))
              for name, value in given.items()}
    if values["scale_prior"] not in ("dataset", "none") and not Path(values["scale_prior"]).is_file():
        raise XPasteError("--scale-prior is neither 'dataset', 'none' nor an existing file", scale_prior,
                          "pass an `xpaste stats` json or a COCO/LVIS json")
    base = paste if paste is not None else PasteConfig()
    if not isinstance(base, PasteConfig):
        raise XPasteError(f"paste must be a PasteConfig, got {type(base).__name__}")
    config = base.replace(**paste_kwargs) if paste_kwargs else base
    if config.sampling == "weighted" and plan is None:
        raise XPasteError("--sampling weighted needs per-category weights: pass --plan (an `xpaste plan` json)",
                          hint="or use balanced (X-Paste), uniform or present")
    if plan is not None:
        if config.sampling != "weighted":
            raise XPasteError(f"--plan gives per-category paste weights, used by --sampling weighted only "
                              f"(sampling is {config.sampling!r})", plan, "add --sampling weighted")
        if not Path(plan).is_file():
            raise XPasteError("--plan: file not found", plan, "write one with: xpaste plan ... --out plan.json")
    return values, config


def check_paths(dataset_path: Path, images_dir: Path, pool_path: Path, out: Path) -> None:
    """Inputs exist, and --out would overwrite none of them (`xpaste.io.refuse_overlap`): it is not, is not
    inside and does not contain the images folder or the pool, and nothing it writes is the dataset json;
    then `check_out` (XPasteError otherwise)."""
    if not dataset_path.is_file():
        raise XPasteError("dataset json not found", dataset_path)
    if not images_dir.is_dir():
        raise XPasteError("images folder not found", images_dir, "--images is the folder file_name is relative to")
    if not pool_path.is_dir():
        raise XPasteError("pool folder not found", pool_path)
    refuse_overlap(out, {"the dataset json (--dataset)": dataset_path, "the images folder (--images)": images_dir,
                         "the pool (--pool)": pool_path}, writes=OUT_ENTRIES)
    check_out(out)


def check_out(out: Path, what: str = "--out") -> None:
    """--out can hold this stage's outputs: not a file, not under one, no foreign files in it (`check_output`;
    an --out this stage started, `STATE_DIR`, is its own). XPasteError otherwise; writes nothing."""
    check_output(out, writes=OUT_ENTRIES, what=what, own=(STATE_DIR,))


def _check_not_foreign(out: Path, state: Path) -> None:
    """Refuse an --out that holds outputs this stage did not start (another tool, an older xpaste)."""
    if (state / "stage.json").exists():
        return
    found = [n for n in ("images", "annotations.json", ".parts")  # an empty folder (a failed first write) is no output
             if (out / n).exists() and not ((out / n).is_dir() and not any((out / n).iterdir()))]
    if found:
        raise XPasteError(f"the output folder already holds {', '.join(found)} from another run", out,
                          "choose a new --out, or pass --fresh to replace them")


# ----------------------------------------------------------------------------- the stage
class AugmentTasks:
    """The lazy task list: item t is {'image_index': t // copies, 'copy': t % copies} (never materialised)."""
    def __init__(self, n_images: int, copies: int):
        self.n_images, self.copies = int(n_images), int(copies)

    def __len__(self) -> int:
        return self.n_images * self.copies

    def __getitem__(self, index: slice) -> list[dict]:
        start, stop, step = index.indices(len(self))
        return [{"image_index": t // self.copies, "copy": t % self.copies} for t in range(start, stop, step)]

    def digest(self) -> str:
        return digest([self.n_images, self.copies])


def output_image_id(image_index: int, copy: int, copies: int) -> int:
    """The id of (image index, copy) in the output json: 1-based, in task order."""
    return image_index * copies + copy + 1


class AugmentStage(Stage):
    """The augment stage. `config`: copies, seed, image_format, shard_size, paste (PasteConfig.to_dict()),
    images_dir, pool (paths) and fingerprint (inputs' digests and every option, from `augment.py`)."""

    name = "augment"
    _model_attrs = ("_transform",)
    reads_rows_at_end = False
    change_labels = {"dataset": "the dataset json", "images": "the images folder (--images)",
                     "pool": "the pool (--pool)", "scale_prior": "the scale prior (--scale-prior)"}

    def __init__(self, out: Path, config: dict, packed: PackedDataset, categories: list[dict], prior: dict):
        out = Path(out).resolve()  # Ray actors and forked workers write here whatever their folder
        super().__init__(out / STATE_DIR, config)
        self.out = out
        self.packed, self.categories, self.prior = packed, categories, prior
        self._transform = None

    @property
    def output_root(self) -> Path:
        return self.out

    def schema(self):
        import pyarrow as pa

        return pa.schema([("task", pa.int64()), ("status", pa.string()), ("file_name", pa.string()),
                          ("bytes", pa.int64()), ("record", pa.string()), ("why", pa.string())])

    def fingerprint(self) -> dict:
        return self.config["fingerprint"]

    def plan(self) -> AugmentTasks:
        return AugmentTasks(len(self.packed), self.config["copies"])

    def prepare(self) -> None:  # no torch here: augment is numpy/OpenCV only
        self.setup()

    def setup(self) -> None:
        if self._transform is None:
            from xpaste.paste.transform import CopyPaste  # the paste kernels load OpenCV: imported to run

            pool = InstancePool.open(self.config["pool"])
            weights = {int(c): float(w) for c, w in self.config.get("category_weights") or []} or None
            self._transform = CopyPaste(pool, PasteConfig.from_dict(self.config["paste"]), scale_prior=self.prior,
                                        category_weights=weights)

    # ------------------------------------------------------------------ resume
    def is_done(self, k: int) -> bool:
        path = shard_path(self.stage_dir, k)
        if not path.exists():
            return False
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path, columns=["status", "file_name", "bytes"]).to_pylist()
        except Exception:  # noqa: BLE001 - a damaged table: the shard is redone
            return False
        for row in rows:
            if row["status"] == "written":
                try:
                    if os.stat(self.out / "images" / row["file_name"]).st_size != row["bytes"]:
                        return False
                except OSError:
                    return False
        return True

    def temp_folders(self) -> list[Path]:
        return [self.out / "images"]

    def started(self) -> bool:
        """A shard table, or an image a killed run wrote under OUT/images/ before its first table: the record
        then binds (a changed input would leave those images mixed in)."""
        if super().started():
            return True
        images = self.out / "images"
        return images.is_dir() and any(not p.name.startswith(".") for p in images.iterdir())

    def remove_outputs(self) -> None:
        for folder in (self.stage_dir, self.out / "images"):
            if folder.exists():
                shutil.rmtree(folder)
        for name in ("annotations.json", "augment_log.json"):
            (self.out / name).unlink(missing_ok=True)

    # ------------------------------------------------------------------ work
    def process(self, items: list[dict]) -> tuple[list[dict], list[dict]]:
        rows, skipped = [], []
        for item in items:
            row, skip = self._task(int(item["image_index"]), int(item["copy"]))
            rows.append(row)
            skipped.extend(skip)
        return rows, skipped

    def _task(self, image_index: int, copy: int) -> tuple[dict, list[dict]]:
        """Augment one (image, copy): write its image, return its row and its skipped annotations."""

        cfg = self.config
        image, anns = self.packed.record(image_index)
        copies = int(cfg["copies"])
        task = image_index * copies + copy
        new_id = output_image_id(image_index, copy, copies)
        row = {"task": task, "status": "failed", "file_name": str(image.get("file_name")), "bytes": 0,
               "record": "", "why": ""}
        one = CocoDataset(None, {}, [image], self.categories, anns)
        try:
            sample = load_sample(one, image["id"], cfg["images_dir"])
        except XPasteError as e:  # an unreadable or missing image: say why, go on
            row["why"] = e.message
            return row, []
        try:
            out = self._transform(sample, np.random.default_rng([int(cfg["seed"]), image_index, copy]))
        except XPasteError as e:  # e.g. a pool file deleted under a long run: skip this image, say why
            row["why"] = str(e)
            return row, []
        t = out.targets
        ext = ".png" if cfg["image_format"] == "png" or str(image["file_name"]).lower().endswith(".png") else ".jpg"
        file_name = f"{new_id:012d}{ext}"
        data = encode_image(out.image, ext)  # JPEG quality 95 or PNG compression 1
        write_bytes_atomic(self.out / "images" / file_name, data, durable=False)
        rles = masks_to_rles(t.masks, t.boxes)
        out_anns = []
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
            out_anns.append(ann)
        record = {k: v for k, v in image.items() if k not in ("id", "file_name", "coco_url", "flickr_url")}
        pasted_cats = {a["category_id"] for a in out_anns if a["pasted"]}
        if "neg_category_ids" in record:  # a pasted category is no longer absent from the image
            record["neg_category_ids"] = [c for c in record["neg_category_ids"] if c not in pasted_cats]
        record.update(id=new_id, file_name=file_name, height=out.height, width=out.width,
                      source_image_id=image["id"], source_file_name=image["file_name"], copy=copy)
        row.update(status="written", file_name=file_name, bytes=len(data),
                   record=json.dumps({"image": record, "annotations": out_anns}, ensure_ascii=False))
        skipped = [{"item": f"{image['file_name']}#{a}", "reason": str(w)}
                   for a, w in sample.meta.get("skipped_annotations", [])]
        skipped += [{"item": f"{file_name} pool row {r}", "reason": str(w), "kind": "paste"}  # unreadable cut-outs
                    for r, w in out.meta.get("skipped_pastes", [])]
        hidden = occluded_originals(sample.targets, t)
        if hidden:  # originals the paste's occlusion rule dropped: counted per source annotation per copy
            skipped.append({"item": f"{file_name} (from {image['file_name']})", "reason": OCCLUDED,
                            "kind": OCCLUDED, "ann_ids": hidden})
        return row, skipped


# ----------------------------------------------------------------------------- driver
def augment_dataset(dataset_path: str | os.PathLike, images_dir: str | os.PathLike, pool_path: str | os.PathLike,
                    out_dir: str | os.PathLike, copies: int = AugmentConfig.copies, seed: int = AugmentConfig.seed,
                    workers: int = RunSettings.workers, scale_prior: str | os.PathLike = AugmentConfig.scale_prior,
                    image_format: str = AugmentConfig.image_format, progress: bool = True,
                    max_images: int | None = AugmentConfig.max_images, engine: str = RunSettings.engine,
                    ray_address: str | None = RunSettings.ray_address, fresh: bool = False, paste=None,
                    plan: str | os.PathLike | None = AugmentConfig.plan, **paste_kwargs: Any) -> AugmentReport:
    """Write OUT/images/ and OUT/annotations.json (see the module docstring for determinism and resume).

    `paste` is a `xpaste.paste.config.PasteConfig` (default: its defaults); keyword paste options override
    it. `scale_prior`: 'dataset' (measured on the dataset's own annotations), 'none', or a stats / dataset
    json. `workers` > 1 forks that many processes (engine 'local'); `engine='ray'` runs on Ray actors.
    `plan`: an `xpaste plan` json whose paste_weight per category are the weights of sampling 'weighted'
    (needed by it, refused without it; its categories must be the dataset's, every pooled one in it).
    Raises XPasteError (one line) for a bad option, a missing or overlapping path, a dataset or pool
    refused at load, inputs changed since OUT was started, or another process writing OUT; OSError (disk
    full, permissions) and KeyboardInterrupt pass through with nothing half-written: rerun to resume.
    """
    started = time.perf_counter()
    values, config = check_options(copies, seed, workers, engine, image_format, max_images, scale_prior, paste,
                                   paste_kwargs, plan)
    copies, seed, workers, max_images, scale_prior = (values[k] for k in ("copies", "seed", "workers", "max_images",
                                                                          "scale_prior"))
    dataset_path, images_dir, pool_path, out = (Path(p) for p in (dataset_path, images_dir, pool_path, out_dir))
    check_paths(dataset_path, images_dir, pool_path, out)
    dataset = load_coco(dataset_path)
    check_masks_present(dataset)  # box-only annotations: refused up front, in one line
    pool = InstancePool.open(pool_path)
    match_categories(pool, dataset.categories)  # pooled ids must exist in the dataset with the same names
    weights = None if plan is None else plan_weights(plan, categories=dataset.categories, pool=pool)
    if str(scale_prior) == "dataset":
        prior = scale_prior_from_stats(category_stats(dataset))
    elif str(scale_prior) == "none":
        prior = {}
    else:
        prior = resolve_scale_prior(scale_prior, dataset.categories)  # ids and names must be the dataset's
    n_images = len(dataset.images) if max_images is None else min(int(max_images), len(dataset.images))
    if int(copies) * n_images > INT64_MAX:  # the task count is an int64 (shard plan, progress, Arrow)
        raise XPasteError(f"--copies {copies} x {n_images} images is more than {INT64_MAX} images to write",
                          hint="use a smaller --copies (or --max-images)")
    options = {"copies": int(copies), "seed": int(seed), "scale_prior": str(scale_prior),
               "image_format": image_format, "max_images": max_images, "shard_size": TASKS_PER_SHARD,
               "paste": config.to_dict()}
    if weights is not None:  # only then: the fingerprint of a run without a plan is what it was before plans
        options["category_weights"] = sorted([c, w] for c, w in weights.items())
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
    release_memory()
    stage = AugmentStage(out, stage_config, packed, categories, prior)

    with exclusive_lock(out, "output folder"):
        if not fresh:
            _check_not_foreign(out, out / STATE_DIR / stage.name)
        elif (out / ".parts").exists():
            shutil.rmtree(out / ".parts")
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
    asked = config.num_paste if config.num_paste is not None else config.max_paste - 1  # pastes an image may get
    if report.images_written and not report.pasted and asked > 0:  # a run that pastes nothing is never quiet
        print(f"xpaste: WARNING: 0 instances pasted into the {report.images_written} images written: every paste "
              f"was dropped (cut-outs that did not fit: under --min-size-px, not smaller than the image, or fewer "
              f"than --min-visible-area pixels left visible; {len(report.skipped_pastes)} unreadable); check the "
              f"pool's cut-outs and the paste options", file=sys.stderr)
    log.debug("%s: %s", out, report.summary())
    if report.images_written == 0 and report.failed:  # nothing usable: a failure, not an empty dataset
        (out / "annotations.json").unlink(missing_ok=True)  # augment_log.json keeps every failure
        file_name, why = report.failed[0]
        raise XPasteError(f"no image could be written: all {len(report.failed)} failed, the first ({file_name}): "
                          f"{why}", out, "see augment_log.json for every failure; fix the inputs and rerun "
                          "with --fresh")
    return report


def _shard_rows(stage, k: int) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(shard_path(stage.stage_dir, k), columns=["status", "file_name", "record", "why"]).to_pylist()


def _assemble(stage, header: dict, categories: list[dict], info: dict, report: AugmentReport) -> None:
    """Stream OUT/annotations.json from the shard tables, in task order (ids do not depend on the engine),
    then write OUT/augment_log.json. Both atomically; the json is never held whole in memory."""

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


def run_job(config: Any, progress: bool = True) -> JobReport:
    """Augment `augment.dataset` with the pool build-pool wrote (`augment_dataset`), into `augment.out`
    (default RUN/augmented); options left out take augment_dataset's defaults."""
    start = time.perf_counter()
    cfg = as_dict(config)
    a, run = cfg["augment"], RunDir(cfg["run_dir"])
    out = run.augmented_dir(cfg)
    options = {k: a[k] for k in ("copies", "seed", "scale_prior", "image_format", "max_images", "plan")
               if a.get(k) is not None}
    report = augment_dataset(a["dataset"], a["images"], run.pool_dir(cfg), out, workers=cfg["workers"],
                             engine=cfg["engine"], ray_address=cfg["ray_address"], progress=progress,
                             paste=PasteConfig.from_dict(a["paste"]), **options)
    counts = {"images written": report.images_written, "images resumed": report.images_resumed,
              "annotations": report.annotations, "pasted": report.pasted}
    failures = [{"item": name, "reason": why} for name, why in report.failed]
    return JobReport(NAME, str(out), counts, failures, time.perf_counter() - start)
