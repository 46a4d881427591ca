"""Fill a pool from existing sources: a COCO/LVIS dataset's own annotated instances ("real instances"),
and the official X-Paste pool json."""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xpaste.data.coco import NO_MASK, load_coco, load_sample
from xpaste.errors import XPasteError
from xpaste.imageio import read_gray, read_rgba
from xpaste.io import check_output, read_json, resolve_inside
from xpaste.jobs import JobReport
from xpaste.ops.masks import largest_component
from xpaste.pool.layout import DATA_DIR, HEADER, INDEX_DIR, MANIFEST
from xpaste.pool.store import InstancePool
from xpaste.pool.writer import POOL_ENTRIES, PoolWriter

log = logging.getLogger("xpaste.pool")
# Real instances smaller than this many mask pixels are skipped: COCO's "small" objects (< 32x32) upscale
# into blurry, jagged cut-outs when the scale prior asks for a large paste.
DEFAULT_MIN_AREA = 32 * 32
FLUSH_EVERY = 500


@dataclass
class ImportReport:
    """What an import did; `summary()` is the line the CLI prints, `job_report()` the same as a JobReport."""

    added: int = 0
    duplicates: int = 0
    too_small: int = 0
    crowd: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (what, why)
    failed: int = 0  # inputs (images, or pool json entries) that gave nothing: unreadable, wrong size, empty
    first_failure: tuple[str, str] | None = None
    job: str = "import"  # 'import-coco' or 'import-xpaste'
    out: str = ""
    seconds: float = 0.0

    def fail(self, what: str, why: str) -> None:
        self.skipped.append((what, why))
        self.failed += 1
        self.first_failure = self.first_failure or (what, why)

    def add(self, pool: PoolWriter, rgba: np.ndarray, category_id: int, **fields) -> None:
        """Add one cut-out, count it, and flush the index every FLUSH_EVERY rows."""
        if pool.add(rgba, category_id, **fields) is None:
            self.duplicates += 1
        else:
            self.added += 1
        if pool.pending_count >= FLUSH_EVERY:
            pool.flush()

    def summary(self) -> str:
        return (f"added {self.added}, duplicates {self.duplicates}, too small {self.too_small}, "
                f"crowd {self.crowd}, skipped {len(self.skipped)}")

    def job_report(self) -> JobReport:
        """The same outcome as the `xpaste.jobs.JobReport` every job returns (skipped inputs as failures)."""
        counts = {"added": self.added, "duplicates": self.duplicates, "too small": self.too_small, "crowd": self.crowd}
        return JobReport(self.job, self.out or None, counts, [{"item": w, "reason": y} for w, y in self.skipped],
                         self.seconds)


def _refuse_if_nothing_imported(report: ImportReport, total: int, what: str, out: str | os.PathLike,
                                source: str | os.PathLike, folder_existed: bool, pool_existed: bool, hint: str,
                                min_area: int | None = None) -> None:
    """Raise XPasteError naming why when nothing was imported (nothing added, no duplicate found): inputs
    failed, every annotation was skipped (e.g. a box-only json: no masks to cut along), under `min_area`,
    crowd, or the input lists nothing. A pool this call created is removed first, so no empty pool is left
    behind to be used by mistake; a pool appended to is left as it was."""
    if report.added or report.duplicates:
        return
    reasons, hints = [], []
    if report.failed:
        first, why = report.first_failure
        reasons.append(f"{report.failed} of {total} {what} failed, the first ({first}): {why}")
        hints.append(hint)
    skipped = [(w, y) for w, y in report.skipped if w.startswith("annotation ")]
    if skipped:
        first, why = skipped[0]
        reasons.append(f"{len(skipped)} annotations skipped, the first ({first}): {why}")
        if any(y.startswith(NO_MASK) for _, y in skipped):
            hints.append("a pool is cut along instance masks: the json needs polygon or RLE segmentations "
                         "(a box-only json cannot be imported)")
    if report.too_small:
        reasons.append(f"{report.too_small} instances under --min-area {min_area} mask pixels")
        hints.append(f"lower --min-area (now {min_area})")
    if report.crowd:
        reasons.append(f"{report.crowd} crowd annotations (never imported)")
    if not reasons:
        reasons.append(f"the input lists no instances ({total} {what})")
        hints.append("check that this is the file you meant")
    if not pool_existed:
        _remove_empty_pool(Path(out), folder_existed)
    raise XPasteError(f"nothing imported: {'; '.join(reasons)}", source, "; ".join(hints) or None)


def _remove_empty_pool(root: Path, folder_existed: bool) -> None:
    for name in (HEADER, f"{INDEX_DIR}/{MANIFEST}", ".xpaste.lock"):
        (root / name).unlink(missing_ok=True)
    for folder in (root / DATA_DIR, root / INDEX_DIR) + (() if folder_existed else (root,)):
        try:
            folder.rmdir()  # only when empty: nothing but what this call wrote is removed
        except OSError:
            pass


def cutout_from_mask(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """RGBA crop of `image` to the tight box of `mask`, alpha = mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    rgba = np.empty((y1 - y0, x1 - x0, 4), np.uint8)
    rgba[..., :3] = image[y0:y1, x0:x1]
    rgba[..., 3] = mask[y0:y1, x0:x1] * np.uint8(255)
    return rgba


def import_coco(dataset_path: str | os.PathLike, images_dir: str | os.PathLike, out: str | os.PathLike,
                min_area: int = DEFAULT_MIN_AREA, append: bool = False, progress: bool = True) -> ImportReport:
    """Cut every non-crowd annotation of a COCO/LVIS dataset out as an RGBA pool instance (source 'gt').

    Annotations under `min_area` mask pixels are counted as too small; unreadable images are skipped and listed
    in the report. Raises XPasteError for an unreadable dataset, a pool already at `out` (unless `append`),
    or when nothing was imported (every image failed, every annotation box-only, too small or crowd, no
    annotations): one line naming why; a pool this call created is removed first.
    """
    from tqdm import tqdm

    started = time.monotonic()
    check_output(out, writes=POOL_ENTRIES, own=(HEADER,))  # before the dataset is read
    dataset = load_coco(dataset_path)
    report = ImportReport(job="import-coco", out=str(out))
    folder_existed, pool_existed = Path(out).exists(), (Path(out) / HEADER).exists()
    # absolute dataset and images paths: build-pool's DiverGen filter finds each real instance's source image
    source = {"import": "coco", "dataset": os.path.abspath(dataset_path), "images": os.path.abspath(images_dir)}
    with InstancePool.create(out, dataset.categories, config={**source, "min_area": min_area},
                             exist_ok=append) as pool:
        for image in tqdm(dataset.images, desc="import-coco", unit="img", disable=not progress):
            try:
                sample = load_sample(dataset, image["id"], images_dir)
            except XPasteError as e:
                report.fail(str(image.get("file_name")), e.message)
                continue
            for ann_id, why in sample.meta.get("skipped_annotations", []):
                report.skipped.append((f"annotation {ann_id}", why))
            t = sample.targets
            image_area = float(sample.height * sample.width)
            for i in range(len(t)):
                if bool(t.extra["iscrowd"][i]):
                    report.crowd += 1
                    continue
                area = int(np.count_nonzero(t.masks[i]))
                if area < min_area:
                    report.too_small += 1
                    continue
                rgba = cutout_from_mask(sample.image, t.masks[i])
                report.add(pool, rgba, int(t.labels[i]), crop=False, source="gt", area_frac=area / image_area,
                           image_id=int(image["id"]), ann_id=int(t.extra["ann_id"][i]))
    _refuse_if_nothing_imported(report, len(dataset.images), "images", out, dataset_path, folder_existed,
                                pool_existed, "check that --images is this dataset's image folder and that the "
                                "json's width and height are those of the images as displayed (EXIF applied)",
                                min_area=min_area)
    report.seconds = time.monotonic() - started
    return report


def _read_rgba(path: Path, mask_path: Path | None) -> np.ndarray:
    """(H, W, 4) uint8 RGBA of a cut-out file, alpha from `mask_path` (luminance) when given; both read with the
    package's one reader (EXIF applied). Raises XPasteError (unreadable file, mask of another size)."""
    rgba = read_rgba(path)
    if mask_path is not None:
        alpha = read_gray(mask_path)
        if alpha.shape != rgba.shape[:2]:
            raise XPasteError(f"mask is {alpha.shape} but image is {rgba.shape[:2]}", mask_path)
        rgba[..., 3] = alpha
    return rgba


def import_xpaste(json_path: str | os.PathLike, out: str | os.PathLike, root: str | os.PathLike | None = None,
                  dataset_path: str | os.PathLike | None = None, id_offset: int = 1, append: bool = False,
                  progress: bool = True) -> ImportReport:
    """Import the official X-Paste pool json: {"<category index>": ["[*]path.png" or "image|mask", ...]}.

    Keys are 0-based category indices (category id = index + `id_offset`). A leading '*' marks an already
    cleaned RGBA cut-out; 'image|mask' pairs take alpha from the mask. Alpha keeps its soft values on the
    largest (by pixel count) 8-connected component of alpha > 128 and is 0 elsewhere. This differs from the
    reference's `clean_pool.py` (and build-pool's `cutout`), which keep the soft values on the filled largest
    external contour (ranked by contour area): here a hole's values are cleared, also in an already cleaned
    '*' cut-out. Paths are resolved inside `root`
    (default: the json's folder); anything outside it is refused. Unreadable entries are skipped and listed in
    the report. Raises XPasteError for a malformed json, an id not in `dataset_path`, a pool already at `out`
    (unless `append`), or when nothing was imported (every entry failed, or the json lists none).
    """
    from tqdm import tqdm

    started = time.monotonic()
    json_path = Path(json_path)
    check_output(out, writes=POOL_ENTRIES, own=(HEADER,))  # before the json is read
    data = read_json(json_path)
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise XPasteError("expected an object mapping category index to a list of paths", json_path)
    root = Path(root) if root is not None else json_path.parent
    names: dict[int, str] = {}
    if dataset_path is not None:
        names = {int(c["id"]): c["name"] for c in load_coco(dataset_path).categories}
    entries = []
    for key, paths in data.items():
        try:
            cid = int(key) + id_offset
        except ValueError:
            raise XPasteError(f"category key {key!r} is not an integer index", json_path) from None
        if names and cid not in names:
            raise XPasteError(f"category id {cid} (key {key!r}) is not in {dataset_path}", json_path,
                              "check --id-offset")
        entries.extend((cid, p) for p in paths)
    categories = [{"id": c, "name": names.get(c, f"category_{c}")} for c in sorted({c for c, _ in entries})]
    if dataset_path is None:
        log.warning("%s: categories are named category_N (no --dataset given): augment cannot check that the ids "
                    "are the dataset's; pass --dataset with the COCO/LVIS json the pool was made for", out)
    report = ImportReport(job="import-xpaste", out=str(out))
    folder_existed, pool_existed = Path(out).exists(), (Path(out) / HEADER).exists()
    with InstancePool.create(out, categories, config={"import": "xpaste", "json": str(json_path)},
                             exist_ok=append) as pool:
        for cid, entry in tqdm(entries, desc="import-xpaste", unit="inst", disable=not progress):
            text = str(entry).lstrip("*")
            image_rel, _, mask_rel = text.partition("|")
            try:
                image_path = resolve_inside(root, image_rel, "pool path")
                mask_path = resolve_inside(root, mask_rel, "mask path") if mask_rel else None
                rgba = _read_rgba(image_path, mask_path)
            except XPasteError as e:
                report.fail(text, str(e))
                continue
            mask = rgba[..., 3] > 128
            if not mask.any():
                report.fail(text, "empty alpha mask")
                continue
            mask = largest_component(mask)
            rgba[..., 3] = np.where(mask, rgba[..., 3], 0)
            report.add(pool, rgba, cid, source="xpaste", model="", prompt="", segmenter="", original_path=text)
    _refuse_if_nothing_imported(report, len(entries), "cut-outs", out, json_path, folder_existed, pool_existed,
                                "check --root: the json's paths are resolved inside it (default: the json's folder)")
    report.seconds = time.monotonic() - started
    return report


def pool_summary(pool: InstancePool) -> list[dict]:
    """Per-category counts and score summaries (for `xpaste pool info`)."""
    table = pool.records()
    cats = np.asarray(table.column("category_id").to_numpy(zero_copy_only=False), dtype=np.int64)
    scores = None
    if "clip_score" in table.column_names:
        scores = np.asarray(table.column("clip_score").to_numpy(zero_copy_only=False), dtype=np.float64)
    sources = table.column("source").to_pylist() if "source" in table.column_names else [None] * len(cats)
    rows = []
    for cid, name in sorted(pool.categories.items()):
        sel = cats == cid
        row = {"id": cid, "name": name, "instances": int(sel.sum())}
        if scores is not None and sel.any():
            s = scores[sel]
            s = s[np.isfinite(s)]
            if len(s):
                row.update(clip_mean=float(s.mean()), clip_min=float(s.min()), clip_max=float(s.max()))
        srcs = sorted({str(sources[i]) for i in np.flatnonzero(sel) if sources[i]})
        row["sources"] = ",".join(srcs)
        rows.append(row)
    return rows
