"""The masks-from-boxes stage (`xpaste masks-from-boxes`): a COCO/LVIS dataset whose annotations have boxes but
no masks becomes one with instance masks, each made by a box-prompted segmenter (sam, sam2, sam3), so that
`xpaste pool import-coco` and `xpaste augment` can use it.

Rules, per annotation (every one is accounted for in the summary, none is dropped):

* it has a mask (polygon or RLE): written as it is ("already had a mask");
* it has a box and no mask: the box, clipped to the image, prompts the segmenter (`segment_boxes`, the optional
  `xpaste.segment.base.BoxSegmenter` protocol); the mask is clipped to the pixels the box touches (columns
  floor(x1)..ceil(x2)-1, rows likewise), stored as compressed RLE with `area` its pixel count and `mask_source`
  the segmenter's name (e.g. "sam2:folder"); `bbox`, `iscrowd` and every other field stay as they were. Crowd
  boxes are segmented like the others (the box prompt covers the region; `iscrowd` kept) and counted apart;
  boxes partly outside the image are clipped to it and counted;
* no mask can be made: the annotation keeps its box, gets `mask_source: "empty"` (`data.coco.MASK_SOURCE_EMPTY`)
  and `mask_empty: <reason>`, is counted by reason and listed, never dropped and never given an invented mask.
  Reasons (`EMPTY_REASONS`): the segmenter found no pixel inside the box, a zero-area box, a box entirely
  outside the image, no box (bbox absent or not 4 finite numbers), or its image could not be read.

`augment` and `pool import-coco` leave out an annotation marked empty, counted under the skip reason
`no_mask_found` (`xpaste.data.coco.SKIP_REASONS`); `augment` still refuses annotations with a box and no mask
that this command has not looked at. Rerunning this command on its own output retries the ones marked empty.

Sharded and resumable like every stage (`xpaste.pipeline.runner`): the work items are the images that have a box
to segment, `IMAGES_PER_SHARD` per shard; a shard's rows (one per box: its RLE or why it is empty) are its done
marker. The work folder is `.OUT.xpaste/` beside `--out` (hidden; keep it to resume, delete it once done). A
killed run resumes when rerun and ends with the bytes of an uninterrupted one; a rerun whose dataset json,
images or segmenter changed is refused in one line (or starts over with `--fresh`). The output json is written
atomically at the end, annotations in the input's order, its other keys as they were. Engines: this process,
forked workers (`--workers`) or Ray (`--engine ray`); the output does not depend on which.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from xpaste.data.coco import MASK_SOURCE_EMPTY, has_mask, load_coco
from xpaste.errors import XPasteError
from xpaste.fingerprint import file_digest, images_digest
from xpaste.imageio import read_rgb
from xpaste.io import (
    check_output,
    exclusive_lock,
    refuse_overlap,
    resolve_inside,
    write_json_atomic,
)
from xpaste.jobs import JobReport
from xpaste.ops.masks import rle_encode
from xpaste.pipeline.runner import INT64_MAX, RunSettings, Stage, as_dict, run_stage
from xpaste.pipeline.shards import read_stage
from xpaste.segment import parse_spec, segmenter_class
from xpaste.typed import ConfigError, Section, check_value, key_field

NAME = "masks-from-boxes"
#: The config keys `xpaste masks-from-boxes` offers as flags (besides --dataset, --images, --out, --fresh).
CLI_KEYS = ["masks_from_boxes.segmenter", "masks_from_boxes.box_batch", "workers", "engine", "ray_address", "device"]
HELP = ("Give every box-only annotation of a COCO/LVIS dataset the mask a box-prompted SAM finds in its box, so that "
        "augment and pool import-coco can use it.\n\n"
        "Masks are clipped to their box and marked with mask_source; an annotation whose mask comes out empty keeps "
        "its box and is marked mask_source \"empty\" (augment then leaves it out, counted), never dropped. A killed "
        "run resumes when rerun with the same command (work folder .OUT.xpaste beside --out); a rerun whose inputs "
        "changed is refused (or starts over with --fresh).")
IMAGES_PER_SHARD = 16  # the unit of resume: a kill redoes at most this many images per worker
#: Why no mask was made for a box-only annotation: its `mask_empty` value -> words for the report.
EMPTY_REASONS = {
    "no_pixel_in_box": "the segmenter found no pixel inside the box",
    "zero_area_box": "the box has zero width or height",
    "outside_image": "the box lies entirely outside the image",
    "no_box": "no box (bbox absent or not 4 finite numbers)",
    "image_unreadable": "its image could not be read",
}
#: The rule of the masks, part of the fingerprint: outputs made under another rule are not resumed silently.
RULE = "box clipped to the image prompts the segmenter; mask clipped to the pixels the box touches; RLE"


@dataclass(frozen=True)
class MasksFromBoxesConfig(Section):
    """`xpaste masks-from-boxes`' options (config section `masks_from_boxes:`). Not a stage of `xpaste run`: its
    input is a dataset, not the run's candidates, and its output is a dataset for augment or pool import-coco."""

    _key_prefix = "masks_from_boxes."

    dataset: Optional[str] = key_field(None, "COCO/LVIS annotation json with box-only annotations", cli=False)
    images: Optional[str] = key_field(None, "folder the json's file_name entries are relative to", cli=False)
    out: Optional[str] = key_field(None, "output json (the dataset with masks)", cli=False)
    segmenter: str = key_field("sam2", "box-prompted segmenter: sam[:model] | sam2[:model] | sam3[:model] (model: "
                               "hub id or folder; see README)", flag="--segmenter", each=parse_spec)
    box_batch: int = key_field(64, "boxes per mask-decoder pass (sam, sam2; sam3 takes one box a pass)", lo=1,
                               hi=INT64_MAX)


# ----------------------------------------------------------------------------- the box rule
def prompt_box(bbox: Any, height: int, width: int) -> tuple[Optional[list[float]], Optional[str], bool]:
    """(box, reason, clipped) for a COCO `bbox` [x, y, w, h] on a height x width image: the XYXY box clipped to the
    image, or None and the reason of `EMPTY_REASONS` (no_box, zero_area_box, outside_image); `clipped` says
    whether a box partly outside the image was clipped to it."""
    if (not isinstance(bbox, (list, tuple)) or len(bbox) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)):
        return None, "no_box", False
    x, y, w, h = (float(v) for v in bbox)
    if w <= 0 or h <= 0:
        return None, "zero_area_box", False
    x1, y1, x2, y2 = max(x, 0.0), max(y, 0.0), min(x + w, float(width)), min(y + h, float(height))
    if x2 <= x1 or y2 <= y1:
        return None, "outside_image", False
    return [x1, y1, x2, y2], None, (x1, y1, x2, y2) != (x, y, x + w, y + h)


def box_pixels(box: list[float]) -> tuple[int, int, int, int]:
    """(c0, r0, c1, r1): the pixel columns c0..c1-1 and rows r0..r1-1 an XYXY box (inside the image) touches."""
    x1, y1, x2, y2 = box
    return math.floor(x1), math.floor(y1), math.ceil(x2), math.ceil(y2)


def clip_to_box(mask: np.ndarray, box: list[float]) -> np.ndarray:
    """`mask` (H, W bool) with every pixel outside the pixels `box` touches cleared (a copy)."""
    c0, r0, c1, r1 = box_pixels(box)
    out = np.zeros(mask.shape, bool)
    out[r0:r1, c0:c1] = mask[r0:r1, c0:c1]
    return out


# ----------------------------------------------------------------------------- the stage
class MasksFromBoxesStage(Stage):
    """One work item per image with boxes to segment: {'image_id', 'file_name', 'height', 'width', 'ann_ids',
    'boxes' (clipped XYXY), 'names' (category names)}; one row per box. `config`: segmenter, box_batch,
    images_dir, device, shard_size, fingerprint (from `masks_from_boxes`)."""

    name = NAME
    _model_attrs = ("_segmenter",)
    change_labels = {"dataset": "the dataset json (--dataset)", "images": "the images folder (--images)",
                     "segmenter": "the segmenter (--segmenter)", "rule": "the mask rule"}

    def __init__(self, work_dir: Path, out: Path, config: dict, items: list[dict]):
        super().__init__(Path(work_dir).resolve(), config)  # workers write here whatever their folder
        self.out = Path(out)
        self.items = items
        self._segmenter = None

    @property
    def output_root(self) -> Path:
        return self.out

    def schema(self):
        import pyarrow as pa

        return pa.schema([("ann_id", pa.int64()), ("status", pa.string()), ("source", pa.string()),
                          ("counts", pa.string()), ("area", pa.int64()), ("why", pa.string())])

    def fingerprint(self) -> dict:
        return self.config["fingerprint"]

    def plan(self) -> list[dict]:
        return self.items

    def setup(self) -> None:
        if self._segmenter is None:
            from xpaste.segment import (
                build_segmenter,  # the backend's heavy imports come with it
            )

            self._segmenter = build_segmenter(self.config["segmenter"], device=self.config.get("device"),
                                              box_batch=int(self.config["box_batch"]))

    def process(self, items: list[dict]) -> tuple[list[dict], list[dict]]:
        self.setup()
        rows, skipped = [], []
        for item in items:
            try:
                path = resolve_inside(self.config["images_dir"], item["file_name"], "file_name")
                image = read_rgb(path)
                if image.shape[:2] != (item["height"], item["width"]):
                    raise XPasteError(f"image is {image.shape[1]}x{image.shape[0]} (WxH, as displayed) but the "
                                      f"dataset says {item['width']}x{item['height']}", path)
            except XPasteError as e:  # its boxes keep no mask, reported; the run goes on
                skipped.append({"item": item["file_name"], "reason": str(e)})
                rows += [{"ann_id": a, "status": "empty", "source": "", "counts": "", "area": 0,
                          "why": "image_unreadable"} for a in item["ann_ids"]]
                continue
            masks = self._segmenter.segment_boxes([image], [np.asarray(item["boxes"], np.float64)],
                                                  [list(item["names"])])[0]
            source = str(getattr(self._segmenter, "name", self.config["segmenter"]))
            for ann_id, box, mask in zip(item["ann_ids"], item["boxes"], masks):
                clipped = clip_to_box(np.asarray(mask, bool), box)
                area = int(np.count_nonzero(clipped))
                if area:
                    rows.append({"ann_id": ann_id, "status": "made", "source": source,
                                 "counts": rle_encode(clipped)["counts"], "area": area, "why": ""})
                else:
                    rows.append({"ann_id": ann_id, "status": "empty", "source": source, "counts": "", "area": 0,
                                 "why": "no_pixel_in_box"})
        return rows, skipped


# ----------------------------------------------------------------------------- report
@dataclass
class MasksReport:
    """The outcome of `masks_from_boxes`: every annotation is in exactly one of had_mask, made, empty."""

    out: str = ""
    annotations: int = 0
    had_mask: int = 0
    made: int = 0
    made_crowd: int = 0  # of made: crowd boxes
    clipped: int = 0  # boxes that reached outside the image (clipped to it; made or empty)
    empty_by_reason: dict[str, int] = field(default_factory=dict)  # EMPTY_REASONS code -> count
    empty_annotations: list[tuple[int, str]] = field(default_factory=list)  # (annotation id, reason code)
    images: int = 0  # images with boxes to segment
    images_resumed: int = 0
    failed_images: list[tuple[str, str]] = field(default_factory=list)  # (file name, why)
    seconds: float = 0.0

    @property
    def empty(self) -> int:
        return sum(self.empty_by_reason.values())

    def summary(self) -> str:
        reasons = ", ".join(f"{k} {v}" for k, v in self.empty_by_reason.items() if v)
        return (f"{self.annotations} annotations: {self.made} masks made ({self.made_crowd} of crowd boxes), "
                f"{self.empty} empty{f' ({reasons})' if reasons else ''}, {self.had_mask} already had a mask; "
                f"{self.clipped} boxes partly outside their image clipped to it; {self.images} images segmented "
                f"({self.images_resumed} resumed, {len(self.failed_images)} unreadable)")

    def job_report(self) -> JobReport:
        counts = {"annotations": self.annotations, "masks made": self.made, "empty": self.empty,
                  "already had a mask": self.had_mask, "images": self.images, "images resumed": self.images_resumed}
        failures = [{"item": f"annotation {a}", "reason": EMPTY_REASONS[r]} for a, r in self.empty_annotations]
        return JobReport(NAME, self.out, counts, failures, self.seconds)


# ----------------------------------------------------------------------------- driver
def work_dir_of(out: str | os.PathLike) -> Path:
    """The hidden work folder beside the output json: OUT's folder / .OUT.xpaste (shards, stage.json, lock)."""
    out = Path(out)
    return out.parent / f".{out.name}.xpaste"


def masks_from_boxes(dataset_path: str | os.PathLike, images_dir: str | os.PathLike, out: str | os.PathLike,
                     segmenter: str = MasksFromBoxesConfig.segmenter, box_batch: int = MasksFromBoxesConfig.box_batch,
                     workers: int = RunSettings.workers, engine: str = RunSettings.engine,
                     ray_address: str | None = RunSettings.ray_address, device: str | None = RunSettings.device,
                     fresh: bool = False, progress: bool = True, shard_size: int = IMAGES_PER_SHARD,
                     ray: dict | None = None) -> MasksReport:
    """Write OUT: the dataset with a mask for every box-only annotation (rules in the module docstring).

    Raises XPasteError (one line, before anything is written) for a bad option, a segmenter without box prompts,
    a missing or overlapping path, an unreadable dataset, an OUT this command did not write (unless `fresh`),
    inputs changed since OUT's work folder was started, or another process writing it; OSError and
    KeyboardInterrupt pass through with nothing half-written: rerun to resume."""
    started = time.perf_counter()
    segmenter = check_value(MasksFromBoxesConfig, "segmenter", segmenter, "--segmenter")
    parse_spec(segmenter)
    box_batch = check_value(MasksFromBoxesConfig, "box_batch", box_batch, "--box-batch")
    workers = check_value(RunSettings, "workers", workers, "--workers")
    engine = check_value(RunSettings, "engine", engine, "--engine")
    device = check_value(RunSettings, "device", device, "--device")
    ray_address = check_value(RunSettings, "ray_address", ray_address, "--ray-address")
    dataset_path, images_dir, out = Path(dataset_path), Path(images_dir), Path(out)
    work = work_dir_of(out)
    check_output(out, kind="file", what="--out")
    check_output(work, what=f"the work folder of --out ({work.name})")
    if not dataset_path.is_file():
        raise XPasteError("dataset json not found", dataset_path)
    if not images_dir.is_dir():
        raise XPasteError("images folder not found", images_dir, "--images is the folder file_name is relative to")
    refuse_overlap(out, {"the dataset json (--dataset)": dataset_path, "the images folder (--images)": images_dir},
                   out_is_file=True)
    if not callable(getattr(segmenter_class(segmenter), "segment_boxes", None)):
        raise XPasteError(f"segmenter {segmenter!r} cannot be prompted with boxes",
                          hint="use sam[:model], sam2[:model] or sam3[:model]")
    dataset = load_coco(dataset_path)
    names = {c["id"]: str(c["name"]) for c in dataset.categories}
    report = MasksReport(out=str(out), annotations=len(dataset.annotations))
    decided: dict[int, tuple[str, str]] = {}  # ann id -> ("kept" | "empty", reason)
    items = []
    for image in dataset.images:
        h, w = int(image["height"]), int(image["width"])
        ann_ids, boxes, prompts = [], [], []
        for ann in dataset.annotations_for(image["id"]):
            if has_mask(ann):
                decided[ann["id"]] = ("kept", "")
                continue
            box, reason, clipped = prompt_box(ann.get("bbox"), h, w)
            report.clipped += clipped
            if box is None:
                decided[ann["id"]] = ("empty", reason)
                continue
            ann_ids.append(ann["id"])
            boxes.append(box)
            prompts.append(names[ann["category_id"]].replace("_", " "))
        if ann_ids:
            items.append({"image_id": image["id"], "file_name": str(image["file_name"]), "height": h, "width": w,
                          "ann_ids": ann_ids, "boxes": boxes, "names": prompts})
    fingerprint = {"dataset": file_digest(dataset_path),
                   "images": images_digest(images_dir, (item["file_name"] for item in items)),
                   "segmenter": segmenter, "options": {"shard_size": int(shard_size)}, "rule": RULE}
    stage_config = {"segmenter": segmenter, "box_batch": int(box_batch), "images_dir": str(images_dir.resolve()),
                    "device": device, "shard_size": int(shard_size), "fingerprint": fingerprint, "ray": ray}
    stage = MasksFromBoxesStage(work, out, stage_config, items)
    with exclusive_lock(work, "output's work folder"):
        if not fresh and os.path.lexists(out) and not (stage.stage_dir / "stage.json").exists():
            raise XPasteError("--out already exists and was not written by masks-from-boxes", out,
                              "choose a new --out, or pass --fresh to replace it")
        result = run_stage(stage, engine=engine, progress=progress, fresh=fresh, ray_address=ray_address,
                           workers=int(workers))
        report.images, report.images_resumed = len(items), result.items_resumed
        report.failed_images = [(s["item"], s["reason"]) for s in result.skipped]
        rows = {r["ann_id"]: r for r in read_stage(stage.stage_dir, stage.schema()).to_pylist()}
        crowd = {a["id"] for a in dataset.annotations if a.get("iscrowd")}
        annotations = []
        for ann in dataset.annotations:
            status, reason = decided.get(ann["id"], ("", ""))
            if status == "kept":
                report.had_mask += 1
                annotations.append(ann)
                continue
            row = rows.get(ann["id"])
            if row is not None and row["status"] == "made":
                report.made += 1
                report.made_crowd += ann["id"] in crowd
                h, w = (int(dataset.image_by_id[ann["image_id"]][k]) for k in ("height", "width"))
                new = {k: v for k, v in ann.items() if k not in ("mask_empty", "mask_source", "segmentation", "area")}
                new.update(segmentation={"size": [h, w], "counts": row["counts"]}, area=int(row["area"]),
                           mask_source=row["source"])
                annotations.append(_in_order(ann, new))
                continue
            if row is not None:
                reason = row["why"]
            elif not reason:  # not in a finished shard: cannot happen once run_stage returned
                raise XPasteError(f"annotation {ann['id']} has no result in the work folder", work,
                                  "rerun with --fresh")
            report.empty_by_reason[reason] = report.empty_by_reason.get(reason, 0) + 1
            report.empty_annotations.append((ann["id"], reason))
            new = {k: v for k, v in ann.items() if k not in ("mask_empty", "mask_source")}
            new.update(mask_source=MASK_SOURCE_EMPTY, mask_empty=reason)
            annotations.append(new)
        report.empty_by_reason = {k: report.empty_by_reason[k] for k in EMPTY_REASONS if k in report.empty_by_reason}
        doc = {**dataset.header, "images": dataset.images, "annotations": annotations,
               "categories": dataset.categories}
        write_json_atomic(out, doc)
    report.seconds = time.perf_counter() - started
    return report


def _in_order(old: dict, new: dict) -> dict:
    """`new` with the keys `old` had in `old`'s order, the added ones after them (a diff of the files stays small)."""
    return {**{k: new[k] for k in old if k in new}, **{k: v for k, v in new.items() if k not in old}}


def run_job(config: Any, fresh: bool = False, progress: bool = True) -> JobReport:
    """Run `masks_from_boxes` with the `masks_from_boxes:` section (dataset, images, out, segmenter, box_batch)
    and the run-wide engine, workers, device, shard_size and ray keys of `config`."""
    cfg = as_dict(config)
    m = cfg["masks_from_boxes"]
    if not (m.get("dataset") and m.get("images") and m.get("out")):
        raise ConfigError("masks-from-boxes needs masks_from_boxes.dataset, masks_from_boxes.images and "
                          "masks_from_boxes.out")
    report = masks_from_boxes(m["dataset"], m["images"], m["out"], segmenter=m["segmenter"],
                              box_batch=m["box_batch"], workers=cfg["workers"], engine=cfg["engine"],
                              ray_address=cfg["ray_address"], device=cfg.get("device"), fresh=fresh,
                              progress=progress, shard_size=cfg.get("shard_size", IMAGES_PER_SHARD),
                              ray=cfg.get("ray"))
    return report.job_report()
