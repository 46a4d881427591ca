"""`xpaste augment` as a stage of the pipeline runner: the augment task, its shards and its resume rules.

One task per (image index, copy), `TASKS_PER_SHARD` per shard; a task's seed is (seed, image index, copy),
so the output does not depend on the engine, the worker count or the order shards finish in. A shard
writes its images (atomically) under OUT/images/, then its row table (`runner`'s done marker) under
OUT/.xpaste/augment/; a shard counts as done only when its table exists and every image it lists exists
with the recorded size. `augment.augment_dataset` assembles OUT/annotations.json from the tables.

The dataset is packed once in the driver (`PackedDataset`: each image's record and annotations as json
bytes in one uint8 array plus offsets), so forked workers share it copy-on-write without touching its
pages, Ray actors receive it zero-copy, and the driver can drop the 1M+ annotation dicts of an LVIS json.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from xpaste.errors import XPasteError
from xpaste.pipeline.runner import Stage, digest
from xpaste.pipeline.shards import shard_path

TASKS_PER_SHARD = 16  # the unit of resume: a kill redoes at most this many images per worker
STATE_DIR = ".xpaste"  # OUT/.xpaste/augment/: stage.json and the shard tables (internal)


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


class PackedDataset:
    """Images 0..n-1 of a dataset with their annotations, as json records in one uint8 array.

    `record(i)` -> (image dict, [annotation dicts]) as in the source json. Memory: about the json's size,
    held in two numpy arrays (no Python object per annotation), so forks share it.
    """

    def __init__(self, dataset, n_images: int):
        blob = bytearray()  # grown in place (no list of chunks, no join): the peak stays near its final size
        offsets = np.zeros(n_images + 1, dtype=np.int64)
        for i, image in enumerate(dataset.images[:n_images]):
            blob += json.dumps([image, dataset.annotations_for(image["id"])], ensure_ascii=False).encode()
            offsets[i + 1] = len(blob)
        self.blob = np.frombuffer(blob, dtype=np.uint8)
        self.offsets = offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def record(self, i: int) -> tuple[dict, list[dict]]:
        image, anns = json.loads(self.blob[self.offsets[i] : self.offsets[i + 1]].tobytes())
        return image, anns


def output_image_id(image_index: int, copy: int, copies: int) -> int:
    return image_index * copies + copy + 1


def encode_image(image: np.ndarray, ext: str) -> bytes:
    """(H, W, 3) uint8 RGB -> JPEG (quality 95) or PNG (compression 1) bytes, with OpenCV."""
    import cv2

    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if ext == ".jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 1]
    ok, buf = cv2.imencode(ext, bgr, params)
    if not ok:
        raise RuntimeError(f"could not encode {ext}")
    return buf.tobytes()


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (streamed)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def images_digest(images_dir: Path, file_names) -> str:
    """The images folder as the run sees it: its resolved path and (name, size, mtime) of each named file."""
    rows: list[Any] = [str(Path(images_dir).resolve())]
    for name in file_names:
        try:
            st = os.stat(Path(images_dir) / name)
            rows.append([name, st.st_size, st.st_mtime_ns])
        except OSError:
            rows.append([name, None])
    return digest(rows)


def pool_digest(pool) -> str:
    """The pool's content: its header and index files (the cut-out files are named by the index)."""
    from xpaste.pool.store import HEADER, INDEX_DIR

    root = Path(pool.root)
    files = [root / HEADER, *sorted(p for p in (root / INDEX_DIR).glob("*") if not p.name.startswith("."))]
    return digest([[p.name, file_digest(p)] for p in files if p.is_file()])


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
            from xpaste.paste.config import PasteConfig
            from xpaste.paste.transform import CopyPaste
            from xpaste.pool.store import InstancePool

            pool = InstancePool.open(self.config["pool"])
            self._transform = CopyPaste(pool, PasteConfig.from_dict(self.config["paste"]), scale_prior=self.prior)

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
        from xpaste.data.coco import CocoDataset, load_sample
        from xpaste.io import write_bytes_atomic
        from xpaste.ops.masks import masks_to_rles

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
        data = encode_image(out.image, ext)
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


OCCLUDED = "occluded"  # the reason code of originals hidden by pasted objects (augment_log.json)


def occluded_originals(before, after) -> list[int]:
    """Source annotation ids present in `before` (the loaded sample's targets) and absent from the originals of
    `after` (the pasted sample's): those the occlusion rule dropped. Sorted."""
    ids = np.asarray(before.extra["ann_id"])
    if ids.size == 0:
        return []
    pasted = np.asarray(after.extra["pasted"], bool)
    kept = set(np.asarray(after.extra["ann_id"])[~pasted].tolist())
    return sorted(int(a) for a in ids.tolist() if int(a) not in kept)
