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

from xpaste.errors import XPasteError
from xpaste.io import read_json

IOU_TYPES = ("segm", "bbox")
KINDS = ("auto", "lvis", "coco")
COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
LVIS_METRICS = COCO_METRICS + ("APr", "APc", "APf")
# The benchmarks' own detection limits: LVIS allows 300 per image, COCO 100.
DEFAULT_MAX_DETS = {"lvis": 300, "coco": 100}


# ----------------------------------------------------------------------------- input checks
def _load_gt(path: str | os.PathLike) -> dict:
    gt = read_json(path)
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


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _load_predictions(path: str | os.PathLike, gt: dict, iou_type: str) -> list[dict]:
    """Read and validate a COCO results file: a json list of {image_id, category_id, score, bbox|segmentation}."""
    preds = read_json(path)
    if not isinstance(preds, list):
        raise XPasteError(f"predictions must be a json list of result objects, got {type(preds).__name__}", path)
    if not preds:
        raise XPasteError("no predictions in file", path, "the libraries cannot score an empty result list")
    images = {img["id"]: img for img in gt["images"]}
    cat_ids = {c["id"] for c in gt["categories"]}
    needed = "segmentation" if iou_type == "segm" else "bbox"
    # The libraries decide how to read *all* results from the keys of the first one: insist on one layout.
    layout = ("bbox" in preds[0], "segmentation" in preds[0]) if isinstance(preds[0], dict) else None
    unknown_images, unknown_cats = set(), set()
    for i, p in enumerate(preds):
        if not isinstance(p, dict):
            raise XPasteError(f"prediction {i} is a {type(p).__name__}, not an object", path)
        for key in ("image_id", "category_id", "score", needed):
            if key not in p:
                raise XPasteError(f"prediction {i} has no '{key}'", path,
                                  "segm evaluation needs RLE 'segmentation'" if key == "segmentation" else None)
        if ("bbox" in p, "segmentation" in p) != layout:
            raise XPasteError(f"prediction {i} does not have the same bbox/segmentation keys as prediction 0", path)
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
        if "bbox" in p:
            box = p["bbox"]
            if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)):
                raise XPasteError(f"prediction {i} has a malformed bbox {box!r} (expected [x, y, w, h])", path)
        if "segmentation" in p:
            seg = p["segmentation"]
            if not (isinstance(seg, dict) and "counts" in seg and "size" in seg):
                raise XPasteError(f"prediction {i}: segmentation must be a compressed RLE {{'size', 'counts'}}", path,
                                  "encode masks with pycocotools.mask.encode")
            img = images[p["image_id"]]
            if "height" in img and list(seg["size"]) != [img["height"], img["width"]]:
                raise XPasteError(f"prediction {i}: RLE size {seg['size']} differs from image {p['image_id']} "
                                  f"({img['height']}x{img['width']})", path)
    if unknown_images:
        raise XPasteError("predictions refer to image ids not in the ground truth: "
                          f"{sorted(unknown_images)[:10]}", path,
                          "evaluate against the annotation file the predictions were made for")
    if unknown_cats:
        raise XPasteError("predictions refer to category ids not in the ground truth: "
                          f"{sorted(unknown_cats)[:10]}", path, "map model labels back to dataset category ids")
    return preds


# ----------------------------------------------------------------------------- library runs
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
            lvis_dt = lvis.LVISResults(lvis_gt, preds, max_dets=max_dets)
            ev = lvis.LVISEval(lvis_gt, lvis_dt, iou_type=iou_type)
            ev.params.max_dets = max_dets
            ev.run()
    finally:
        quiet.setLevel(old_level)
    return {k: float(ev.results[k]) for k in LVIS_METRICS}


def _run_coco(gt: dict, preds: list[dict], iou_type: str, max_dets: int) -> dict[str, float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = dict(gt)
    # COCOeval reads `iscrowd` on every gt annotation; LVIS-style files omit it (none are crowds).
    gt["annotations"] = [a if "iscrowd" in a else {**a, "iscrowd": 0} for a in gt["annotations"]]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress on every step
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(preds)
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
    ground truth exists for a metric (e.g. no small objects). Raises XPasteError for unreadable or
    inconsistent files.
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
