"""Mask / box AP of a predictions file against COCO or LVIS ground truth.

The numbers come from the official libraries (`lvis.LVISEval`, `pycocotools.COCOeval`), unchanged: this
module only validates the inputs first, so that a wrong file gives one clear `XPasteError` naming it
instead of an assertion deep inside a library, and contains the libraries' side effects (prints, the
root-logging set-up `import lvis` does, the `np.float` they still use on numpy 2).
"""
from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import warnings
from typing import Any

import numpy as np

from xpaste.data.coco import _check_annotations, _check_records, has_mask
from xpaste.errors import XPasteError
from xpaste.io import read_json
from xpaste.ops.masks import SIZE_MISMATCH, SegmentationError, segmentation_to_rle

IOU_TYPES = ("segm", "bbox")
KINDS = ("auto", "lvis", "coco")
COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
LVIS_METRICS = COCO_METRICS + ("APr", "APc", "APf")
# The benchmarks' own detection limits: LVIS allows 300 per image, COCO 100.
DEFAULT_MAX_DETS = {"lvis": 300, "coco": 100}

log = logging.getLogger(__name__)
_warned_crowd: set[tuple] = set()  # (file, mtime, size): one warning per ground-truth file, even with --compare


# ----------------------------------------------------------------------------- input checks
def _load_gt(path: str | os.PathLike) -> dict:
    gt = read_json(path)  # refuses NaN / Infinity (the package's one json reader)
    keys = ("images", "annotations", "categories")
    if not isinstance(gt, dict) or not all(isinstance(gt.get(k), list) for k in keys):
        raise XPasteError("not a COCO/LVIS annotation file (needs 'images', 'annotations' and 'categories' lists)",
                          path)
    return gt


def detect_kind(gt: dict) -> str:
    """'lvis' when every category carries a `frequency` group (r/c/f), else 'coco'."""
    cats = gt["categories"]
    return "lvis" if cats and all("frequency" in c for c in cats) else "coco"


def _check_lvis_gt(gt: dict, path) -> None:
    bad_cats = [c.get("id") for c in gt["categories"] if c.get("frequency") not in ("r", "c", "f")]
    if bad_cats:
        raise XPasteError(f"LVIS evaluation needs categories with frequency 'r', 'c' or 'f'; "
                          f"missing or invalid for ids {bad_cats[:10]}", path, "use --kind coco")
    for img in gt["images"]:
        for key in ("neg_category_ids", "not_exhaustive_category_ids", "height", "width"):
            if key not in img:
                raise XPasteError(f"LVIS evaluation needs '{key}' on every image (image {img.get('id')} lacks it)",
                                  path, "use --kind coco for a plain COCO file")


def _to_rle(seg: Any, img: dict, what: str, path) -> dict:
    """A compressed RLE ({'size': [h, w], 'counts': str}) of polygons or an RLE, as pycocotools' annToRLE builds it.

    Decoded by the package's one COCO decoder (`xpaste.ops.masks.segmentation_to_rle`, also used on dataset
    load): polygon parts with fewer than 3 points or an odd number of coordinates are left out, as
    detectron2's COCO loader does (the rule of `xpaste.ops.polygons`); RLE runs are checked to cover the image.
    Raises XPasteError (naming `what` and the file) for an unreadable segmentation or a size mismatch.
    """
    h, w = img.get("height"), img.get("width")
    sized = type(h) is int and type(w) is int and h > 0 and w > 0
    compressed = isinstance(seg, dict) and isinstance(seg.get("counts"), (str, bytes))
    if not sized and not compressed:
        raise XPasteError(f"{what}: image {img.get('id')} has no positive integer height/width, needed to "
                          "rasterise its polygon or uncompressed RLE", path)
    try:
        rle, _ = segmentation_to_rle(seg, h if sized else None, w if sized else None, what)
    except SegmentationError as e:
        if e.reason == SIZE_MISMATCH:
            raise XPasteError(f"{what}: {e.detail} (image {img.get('id')})", path) from None
        raise XPasteError(f"{what}: unreadable segmentation ({e.detail})", path) from None
    return rle


def _normalise_gt(gt: dict, path, iou_type: str) -> dict:
    """The ground truth as the libraries need it to mean what the file says.

    - ids checked (integers in the signed 64-bit range, unique, annotations refer to known images/categories);
    - annotation ids renumbered 1..N in file order: pycocotools' COCOeval and lvis' LVISEval store the matched
      gt id in a zero-initialised array and test `> 0`, so a gt id 0 is never "matched" and every detection of
      it counts twice (COCOeval.evaluateImg: `if gtm[tind, gind] > 0 and not iscrowd[gind]: continue`);
      the ids are not part of any metric, so the mapping (new id = position + 1) is not needed after;
    - `area` filled in where absent: the mask's pixel count, pycocotools' `mask.area` of annToRLE (LVIS' and
      COCO's own definition), or the box area w*h when there is no mask and iou_type is 'bbox';
    - `bbox` filled in where absent from the mask (`mask.toBbox`), `iscrowd` defaults to 0 (COCOeval reads it);
    - masks given as compressed RLE (`_to_rle`), so degenerate polygon parts are left out as on load.
    Raises XPasteError (one line naming the file) when an annotation has no mask for segm evaluation, or
    neither mask nor box for bbox evaluation.
    """
    from pycocotools import mask as mask_utils

    _check_records(gt["images"], "image", {"id": "int"}, path)
    _check_records(gt["categories"], "category", {"id": "int"}, path)
    _check_annotations(gt["annotations"], {i["id"] for i in gt["images"]}, {c["id"] for c in gt["categories"]},
                       path)
    images = {img["id"]: img for img in gt["images"]}
    anns = []
    for new_id, ann in enumerate(gt["annotations"], 1):
        what = f"ground-truth annotation id {ann['id']}"
        # COCOeval reads int(iscrowd); null, true and false are read as what they mean
        ann = {**ann, "id": new_id, "iscrowd": int(bool(ann.get("iscrowd") or 0))}
        masked = has_mask(ann)
        if not masked and (iou_type == "segm" or "bbox" not in ann):
            raise XPasteError(f"{what} has no segmentation{'' if iou_type == 'segm' else ' and no bbox'}", path,
                              "mask AP needs a mask on every ground-truth annotation; use --iou-type bbox"
                              if iou_type == "segm" else None)
        if masked:
            ann["segmentation"] = rle = _to_rle(ann["segmentation"], images[ann["image_id"]], what, path)
            if "area" not in ann or "bbox" not in ann:
                rle_b = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
                ann.setdefault("area", float(mask_utils.area(rle_b)))
                ann.setdefault("bbox", [float(v) for v in mask_utils.toBbox(rle_b)])
        box = ann["bbox"]
        if (iou_type == "bbox" or not masked) and not (
                isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)):
            raise XPasteError(f"{what} has a malformed bbox {box!r} (expected [x, y, w, h])", path)
        ann.setdefault("area", float(box[2] * box[3]))
        if not _is_number(ann["area"]):
            raise XPasteError(f"{what} has a non-numeric area {ann['area']!r}", path)
        anns.append(ann)
    return {**gt, "annotations": anns}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _load_predictions(path: str | os.PathLike, gt: dict, iou_type: str) -> list[dict]:
    """Read and validate a COCO results file: a json list of {image_id, category_id, score, bbox|segmentation}.

    Returns copies holding only the key the evaluation uses: for segm the `bbox` is dropped, as detectron2's
    COCO/LVIS evaluators do (`_evaluate_predictions_on_coco`: with a bbox in the results, both libraries take
    the box area as the detection's area, so APs/APm/APl would mix box and mask areas); polygon and
    uncompressed-RLE masks are converted to compressed RLE (the only form `loadRes` / `LVISResults` read).
    """
    preds = read_json(path)
    if not isinstance(preds, list):
        raise XPasteError(f"predictions must be a json list of result objects, got {type(preds).__name__}", path)
    images = {img["id"]: img for img in gt["images"]}
    cat_ids = {c["id"] for c in gt["categories"]}
    needed = "segmentation" if iou_type == "segm" else "bbox"
    unknown_images, unknown_cats = set(), set()
    out = []
    for i, p in enumerate(preds):
        if not isinstance(p, dict):
            raise XPasteError(f"prediction {i} is a {type(p).__name__}, not an object", path)
        for key in ("image_id", "category_id", "score", needed):
            if key not in p:
                raise XPasteError(f"prediction {i} has no '{key}'", path,
                                  "segm evaluation needs RLE 'segmentation'" if key == "segmentation" else None)
        for key in ("image_id", "category_id"):
            if not isinstance(p[key], int) or isinstance(p[key], bool):
                raise XPasteError(f"prediction {i} has a non-integer {key} {p[key]!r}", path)
        if not _is_number(p["score"]):
            raise XPasteError(f"prediction {i} has a non-numeric or non-finite score {p['score']!r}", path)
        if p["image_id"] not in images:
            unknown_images.add(p["image_id"])
            continue
        if p["category_id"] not in cat_ids:
            unknown_cats.add(p["category_id"])
            continue
        q = {k: v for k, v in p.items() if k not in ("bbox", "segmentation", "id", "area")}
        if iou_type == "bbox":
            box = p["bbox"]
            if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)):
                raise XPasteError(f"prediction {i} has a malformed bbox {box!r} (expected [x, y, w, h])", path)
            q["bbox"] = box
        else:
            seg = p["segmentation"]
            if not (isinstance(seg, list) or (isinstance(seg, dict) and "counts" in seg and "size" in seg)):
                raise XPasteError(f"prediction {i}: segmentation must be a compressed RLE {{'size', 'counts'}}", path,
                                  "encode masks with pycocotools.mask.encode")
            q["segmentation"] = _to_rle(seg, images[p["image_id"]], f"prediction {i}", path)
        out.append(q)
    if unknown_images:
        raise XPasteError("predictions refer to image ids not in the ground truth: "
                          f"{sorted(unknown_images)[:10]}", path,
                          "evaluate against the annotation file the predictions were made for")
    if unknown_cats:
        raise XPasteError("predictions refer to category ids not in the ground truth: "
                          f"{sorted(unknown_cats)[:10]}", path, "map model labels back to dataset category ids")
    return out


# ----------------------------------------------------------------------------- library runs
def _warn_lvis_crowd(gt: dict, path) -> None:
    """LVIS has no iscrowd: LVISEval scores a crowd region like any object to find (an unmatched one lowers AP,
    where COCOeval would ignore it). The number stays the library's; the user is told once per file."""
    crowd = sum(1 for ann in gt["annotations"] if ann["iscrowd"])
    if not crowd:
        return
    try:
        st = os.stat(path)
        key = (os.path.realpath(path), st.st_mtime_ns, st.st_size)
    except OSError:
        key = (str(path),)
    if key in _warned_crowd:
        return
    _warned_crowd.add(key)
    log.warning("%s: LVIS's rules score %d crowd region%s (iscrowd=1) as ordinary objects to find (the lvis "
                "library has no iscrowd), so missing them lowers AP; use --kind coco to have COCOeval ignore crowd "
                "regions, or drop them from the ground truth", path, crowd, "" if crowd == 1 else "s")


@contextlib.contextmanager
def _numpy_float_alias():
    """`np.float` only while the lvis code runs: lvis 0.5.3 still uses it, numpy 2 removed it."""
    had = "float" in np.__dict__
    old = np.__dict__.get("float")
    np.float = float
    try:
        yield
    finally:
        if had:
            np.float = old
        else:
            del np.float


def _import_lvis():
    """Import lvis without keeping the root-logger handler its `__init__` installs via basicConfig."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    import lvis

    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    return lvis


def _run_lvis(gt: dict, preds: list[dict], iou_type: str, max_dets: int) -> dict[str, float]:
    lvis = _import_lvis()

    class _LoadedLVIS(lvis.LVIS):
        # LVIS() insists on reading a path; the file is already parsed and validated here.
        def _load_json(self, data):
            return data

    quiet = logging.getLogger("lvis")
    old_level = quiet.level
    quiet.setLevel(logging.ERROR)  # it warns "Assuming user provided the results in correct format."
    try:
        with warnings.catch_warnings(), _numpy_float_alias(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore", DeprecationWarning)  # its Logger.warn calls
            lvis_gt = _LoadedLVIS(gt)
            if preds:
                lvis_dt = lvis.LVISResults(lvis_gt, preds, max_dets=max_dets)
            else:  # LVISResults reads results[0]: an empty result set is built directly (every AP is 0)
                lvis_dt = lvis.LVISResults.__new__(lvis.LVISResults)
                lvis_dt.logger = logging.getLogger("lvis")
                lvis_dt.dataset = {**gt, "annotations": []}
                lvis_dt._create_index()
            ev = lvis.LVISEval(lvis_gt, lvis_dt, iou_type=iou_type)
            ev.params.max_dets = max_dets
            ev.run()
    finally:
        quiet.setLevel(old_level)
    return {k: float(ev.results[k]) for k in LVIS_METRICS}


def _run_coco(gt: dict, preds: list[dict], iou_type: str, max_dets: int) -> dict[str, float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress on every step
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        if preds:
            coco_dt = coco_gt.loadRes(preds)
        else:  # loadRes reads anns[0]: an empty result set is built directly (every AP is 0)
            coco_dt = COCO()
            coco_dt.dataset = {"images": gt["images"], "categories": gt["categories"], "annotations": []}
            coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, iouType=iou_type)
        ev.params.maxDets = [1, 10, max_dets]  # the AP summaries use the last entry
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: float(ev.stats[i]) for i, k in enumerate(COCO_METRICS)}


def evaluate(gt_path: str | os.PathLike, pred_path: str | os.PathLike, iou_type: str = "segm",
             kind: str = "auto", max_dets: int | None = None) -> dict[str, Any]:
    """AP metrics of `pred_path` (a COCO results json list) against `gt_path`.

    kind: 'lvis' (LVISEval: federated, adds APr/APc/APf), 'coco' (COCOeval) or 'auto' (LVIS when the
    categories carry `frequency`). max_dets: detections kept per image; None uses the benchmark's own
    limit (300 for LVIS, 100 for COCO). Values are in [0, 1], or -1 where the library reports that no
    ground truth exists for a metric (e.g. no small objects); an empty predictions list scores 0.

    The files are first made to mean what they say to the libraries (see `_normalise_gt`,
    `_load_predictions`): ground-truth ids renumbered (a gt id 0 is never matched by either library),
    missing `area`/`bbox`/`iscrowd` computed as pycocotools defines them, NaN/Infinity refused, segm results
    without their bbox (detectron2's rule). Raises XPasteError, one line naming the file, for unreadable or
    inconsistent files (unknown image/category ids in the predictions, gt without masks for segm, ...).
    LVIS evaluation of ground truth with iscrowd=1 logs one warning per file: LVISEval scores crowd regions as
    ordinary objects (the number is left as the library computes it).
    """
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    gt = _load_gt(gt_path)
    if kind == "auto":
        kind = detect_kind(gt)
    if kind == "lvis":
        _check_lvis_gt(gt, gt_path)
    gt = _normalise_gt(gt, gt_path, iou_type)
    if kind == "lvis":
        _warn_lvis_crowd(gt, gt_path)
    preds = _load_predictions(pred_path, gt, iou_type)
    limit = DEFAULT_MAX_DETS[kind] if max_dets is None else int(max_dets)
    if limit < 1:
        raise ValueError(f"max_dets must be >= 1, got {max_dets}")
    runner = _run_lvis if kind == "lvis" else _run_coco
    metrics = runner(gt, preds, iou_type, limit)
    return {**metrics, "kind": kind, "iou_type": iou_type, "max_dets": limit}


# ----------------------------------------------------------------------------- display
def _cell(value: Any) -> str:
    if not isinstance(value, (int, float)) or value < 0:
        return "-"  # -1: the library had nothing to score for this metric
    return f"{100 * value:.1f}"


def format_table(results: dict[str, dict], delta: bool = False) -> str:
    """Rows = metrics, columns = runs (AP x 100, one decimal; '-' where a library reported -1).

    With `delta` and exactly two runs, a last column gives second minus first.
    """
    if not results:
        return ""
    names = list(results)
    metrics = [m for m in LVIS_METRICS if any(m in r for r in results.values())]
    columns = [[_cell(results[n].get(m)) for m in metrics] for n in names]
    headers = list(names)
    if delta and len(names) == 2:
        a, b = results[names[0]], results[names[1]]
        col = []
        for m in metrics:
            x, y = a.get(m), b.get(m)
            ok = isinstance(x, (int, float)) and isinstance(y, (int, float)) and x >= 0 and y >= 0
            col.append(f"{100 * (y - x):+.1f}" if ok else "-")
        columns.append(col)
        headers.append("delta")
    label_w = max(len("metric"), *(len(m) for m in metrics))
    widths = [max(len(h), *(len(c) for c in col)) for h, col in zip(headers, columns)]
    lines = ["  ".join([f"{'metric':<{label_w}}"] + [f"{h:>{w}}" for h, w in zip(headers, widths)])]
    for i, m in enumerate(metrics):
        lines.append("  ".join([f"{m:<{label_w}}"] + [f"{col[i]:>{w}}" for col, w in zip(columns, widths)]))
    return "\n".join(lines)
