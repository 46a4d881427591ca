"""Mask / box AP of a predictions file against COCO or LVIS ground truth.

The numbers come from the official libraries (`lvis.LVISEval`, `pycocotools.COCOeval`), unchanged: this
module only validates the inputs first, so that a wrong file gives one clear `XPasteError` naming it
instead of an assertion deep inside a library, and contains the libraries' side effects (prints, the
root-logging set-up `import lvis` does, the `np.float` they still use on numpy 2). The library run itself is
bounded by a watchdog (`_run_bounded`: a forked child, stopped after `timeout` seconds, by default
`watchdog_seconds` of the input size), so an input the checks let through cannot hang `xpaste eval`.
"""
from __future__ import annotations

import contextlib
import io
import logging
import math
import multiprocessing
import os
import signal
import sys
import traceback
import warnings
from typing import Any

import numpy as np

from xpaste.data.coco import _check_annotations, _check_records, has_mask
from xpaste.errors import XPasteError
from xpaste.io import read_json
from xpaste.ops.masks import (
    MAX_POLYGON_SIDE,
    SIZE_MISMATCH,
    SegmentationError,
    segmentation_to_rle,
)

IOU_TYPES = ("segm", "bbox")
KINDS = ("auto", "lvis", "coco")
COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
LVIS_METRICS = COCO_METRICS + ("APr", "APc", "APf")
# The benchmarks' own detection limits: LVIS allows 300 per image, COCO 100.
DEFAULT_MAX_DETS = {"lvis": 300, "coco": 100}
# The watchdog's default (see `watchdog_seconds`): about ten times what the libraries need on a loaded machine.
WATCHDOG_BASE_S = 120.0
WATCHDOG_PER_INSTANCE_S = 0.002
LIBRARIES = {"lvis": "lvis (LVISEval)", "coco": "pycocotools (COCOeval)"}

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
        for key in ("neg_category_ids", "not_exhaustive_category_ids"):  # LVISEval tests `cat_id in` them
            ids = img[key]
            if not (isinstance(ids, list) and all(type(v) is int for v in ids)):
                raise XPasteError(f"image {img.get('id')} has {key}={_short(ids)}, expected a list of category "
                                  "ids", path)


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

    _check_annotations(gt["annotations"], {i["id"] for i in gt["images"]}, {c["id"] for c in gt["categories"]},
                       path)
    images = {img["id"]: img for img in gt["images"]}
    anns = []
    for new_id, ann in enumerate(gt["annotations"], 1):
        what = f"ground-truth annotation id {ann['id']}"
        # COCOeval reads int(iscrowd); null, true and false are read as what they mean
        ann = {**ann, "id": new_id, "iscrowd": _flag(ann, "iscrowd", what, path)}
        if "ignore" in ann:  # LVISEval reads a gt's own `ignore` (COCOeval overwrites it with iscrowd)
            ann["ignore"] = _flag(ann, "ignore", what, path)
        img = images[ann["image_id"]]
        masked = has_mask(ann)
        if not masked and (iou_type == "segm" or "bbox" not in ann):
            raise XPasteError(f"{what} has no segmentation{'' if iou_type == 'segm' else ' and no bbox'}", path,
                              "mask AP needs a mask on every ground-truth annotation; use --iou-type bbox"
                              if iou_type == "segm" else None)
        if masked:
            ann["segmentation"] = rle = _to_rle(ann["segmentation"], img, what, path)
            if "area" not in ann or "bbox" not in ann:
                rle_b = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
                ann.setdefault("area", float(mask_utils.area(rle_b)))
                ann.setdefault("bbox", [float(v) for v in mask_utils.toBbox(rle_b)])
        box = ann["bbox"]
        if iou_type == "bbox" or not masked:  # a segm evaluation reads no gt box
            _check_box(box, img, what, path)
        if "area" not in ann:  # set from the mask above when there is one: here the box was checked
            ann["area"] = float(box[2] * box[3])
        if not _is_number(ann["area"]) or ann["area"] < 0:
            kind_ = "negative" if _is_number(ann["area"]) else "non-numeric"
            raise XPasteError(f"{what} has a {kind_} area {_short(ann['area'])}, expected a finite number >= 0",
                              path)
        anns.append(ann)
    return {**gt, "annotations": anns}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _coordinate_limit(img: dict) -> float:
    """How far from the origin a box coordinate may lie: the polygon rule of `xpaste.ops.masks`
    (8 * max(height, width) + 64), with the largest rasterised side where the image has no size."""
    h, w = img.get("height"), img.get("width")
    side = max(h, w) if type(h) is int and type(w) is int and h > 0 and w > 0 else MAX_POLYGON_SIDE
    return 8 * side + 64


def _check_box(box: Any, img: dict, what: str, path) -> list:
    """A box [x, y, w, h] of finite numbers, w and h >= 0, within the coordinate limit of its image; else one
    XPasteError line. (pycocotools and lvis take a negative width as a negative area, outside every area
    range, and a box of 1e308 as an infinite area: either would be scored silently as something else.)"""
    if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)):
        raise XPasteError(f"{what} has a malformed bbox {_short(box)} (expected [x, y, w, h] of finite numbers)",
                          path)
    if box[2] < 0 or box[3] < 0:
        raise XPasteError(f"{what} has a bbox {box!r} with a negative width or height", path)
    limit = _coordinate_limit(img)
    if any(abs(v) > limit for v in box):
        raise XPasteError(f"{what} has a bbox {box!r} beyond {limit} px from the origin (image {img.get('id')} is "
                          f"{img.get('width')}x{img.get('height')})", path)
    return box


def _flag(ann: dict, key: str, what: str, path) -> int:
    """iscrowd / ignore as the libraries read them (0 or 1): 0, 1, true, false or null (absent = 0)."""
    value = ann.get(key)
    if value is None or value in (0, 1) and type(value) in (int, bool, float):
        return int(bool(value))
    raise XPasteError(f"{what} has {key}={_short(value)}, expected 0 or 1", path)


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
                raise XPasteError(f"prediction {i} has a non-integer {key} {_short(p[key])}", path)
        if not _is_number(p["score"]):
            raise XPasteError(f"prediction {i} has a non-numeric or non-finite score {_short(p['score'])}", path)
        if p["image_id"] not in images:
            unknown_images.add(p["image_id"])
            continue
        if p["category_id"] not in cat_ids:
            unknown_cats.add(p["category_id"])
            continue
        q = {k: v for k, v in p.items() if k not in ("bbox", "segmentation", "id", "area")}
        if iou_type == "bbox":
            q["bbox"] = _check_box(p["bbox"], images[p["image_id"]], f"prediction {i}", path)
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
    # LVISEval's precision is (iou thresholds, recalls, categories, areas): no maxDets axis (one limit)
    per_category = per_category_ap(ev.eval["precision"][..., None], ev.params.cat_ids)
    return {**{k: float(ev.results[k]) for k in LVIS_METRICS}, "per_category": per_category}


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
    per_category = per_category_ap(ev.eval["precision"], ev.params.catIds)
    return {**{k: float(ev.stats[i]) for i, k in enumerate(COCO_METRICS)}, "per_category": per_category}


def per_category_ap(precision: np.ndarray, cat_ids) -> dict[int, float]:
    """{category id: AP} from a library's accumulated precision array (iou thresholds, recalls, categories,
    areas, maxDets), as both libraries' own AP summary reads it restricted to one category: the mean of
    precision[:, :, k, area 'all', last maxDets] over the entries > -1; -1 where there are none (no ground
    truth of the category to score). Categories in the libraries' order (their sorted `cat_ids`)."""
    out = {}
    for k, cid in enumerate(cat_ids):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        out[int(cid)] = float(np.mean(p)) if p.size else -1.0
    return out


def watchdog_seconds(n_gt: int, n_pred: int) -> float:
    """The default time limit of one library run: 120 s + 2 ms per ground-truth or predicted instance.

    The libraries need well under 0.2 ms per instance (COCO val2017, 36k gt and 100 detections on each of 5k
    images: about a minute on one core), so the limit is about ten times the longest honest run on a loaded
    machine, while a run that spins (an input the checks above let through into a library loop) ends.
    """
    return WATCHDOG_BASE_S + WATCHDOG_PER_INSTANCE_S * (n_gt + n_pred)


def _child(conn, runner, args) -> None:
    try:
        result = ("ok", runner(*args))
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which raises it in one line
        result = ("error", f"{type(e).__name__}: {e}", traceback.format_exc())
    try:
        conn.send(result)
    finally:
        conn.close()


def _run_bounded(runner, args: tuple, timeout: float, library: str, path) -> dict[str, float]:
    """`runner(*args)` in a forked child process, ended after `timeout` seconds (the watchdog).

    Forking copies nothing up front (the parsed files are shared copy-on-write), so a normal evaluation is not
    slowed (a few milliseconds). A timeout, a crash of the library (a signal) or an exception inside it ends in
    one XPasteError line naming the file; the child's traceback is kept as the error's cause (shown with
    --debug). Without fork (not Linux/macOS) or with timeout 0, the runner runs in this process, unbounded.
    """
    if not timeout or "fork" not in multiprocessing.get_all_start_methods():
        return runner(*args)
    ctx = multiprocessing.get_context("fork")
    receiver, sender = ctx.Pipe(duplex=False)
    for stream in (sys.stdout, sys.stderr):  # the child must not write the parent's pending output again
        with contextlib.suppress(Exception):
            stream.flush()
    proc = ctx.Process(target=_child, args=(sender, runner, args), name="xpaste-eval")
    proc.start()
    sender.close()
    try:
        if not receiver.poll(timeout):
            raise XPasteError(f"{library} did not finish within {timeout:g} s; stopped (a damaged input the "
                              "checks let through, or files larger than the limit expects)", path,
                              "rerun with a larger --timeout, or --timeout 0 for no limit")
        try:
            result = receiver.recv()
        except EOFError:  # the child died without answering
            proc.join(5)
            code = proc.exitcode
            how = (f"signal {signal.Signals(-code).name}" if isinstance(code, int) and code < 0
                   else f"exit status {code}")
            raise XPasteError(f"{library} crashed ({how}) evaluating these files", path,
                              "check the segmentations and boxes of the files") from None
    finally:
        receiver.close()
        if proc.is_alive():
            proc.kill()
        proc.join()
    if result[0] == "ok":
        return result[1]
    raise XPasteError(f"{library} failed on these files: {result[1]}", path,
                      "rerun with --debug for the library's traceback") from RuntimeError(result[2])


def evaluate(gt_path: str | os.PathLike, pred_path: str | os.PathLike, iou_type: str = "segm",
             kind: str = "auto", max_dets: int | None = None, timeout: float | None = None) -> dict[str, Any]:
    """AP metrics of `pred_path` (a COCO results json list) against `gt_path`.

    kind: 'lvis' (LVISEval: federated, adds APr/APc/APf), 'coco' (COCOeval) or 'auto' (LVIS when the
    categories carry `frequency`). max_dets: detections kept per image; None uses the benchmark's own
    limit (300 for LVIS, 100 for COCO). Values are in [0, 1], or -1 where the library reports that no
    ground truth exists for a metric (e.g. no small objects); an empty predictions list scores 0.
    `per_category`: {category id: AP} of every gt category, from the library's precision array
    (`per_category_ap`), -1 where the category has no ground truth; `categories`: {category id: name}.
    timeout: the watchdog, in seconds, on the library run (forked child process, see `_run_bounded`): None
    derives it from the input size (`watchdog_seconds`: 120 s + 2 ms per gt or predicted instance), 0 runs
    the library in this process without a limit. A run past it ends in one XPasteError line.

    The files are first made to mean what they say to the libraries (see `_normalise_gt`,
    `_load_predictions`): ground-truth ids renumbered (a gt id 0 is never matched by either library),
    missing `area`/`bbox`/`iscrowd` computed as pycocotools defines them, NaN/Infinity refused, segm results
    without their bbox (detectron2's rule). Raises XPasteError, one line naming the file, for unreadable or
    inconsistent files, the same rules as every other command's reader: ids integers in the signed 64-bit
    range, unique, and known (predictions naming image or category ids absent from the gt are refused, not
    dropped); segmentations through `xpaste.ops.masks.segmentation_to_rle` (RLE runs covering exactly
    height x width pixels, polygon coordinates bounded, images over MAX_POLYGON_SIDE not rasterised); boxes
    that are read ([x, y, w, h]: gt and predictions for bbox, gt without a mask) finite, w, h >= 0, within
    the polygon coordinate bound; scores finite numbers; gt areas finite and >= 0; iscrowd/ignore 0 or 1;
    LVIS' neg/not-exhaustive category id lists lists of ints; gt without masks for segm.
    Categories are matched by id (the results format has none of the names); a gt area above 1e10 lies
    outside every area range of both libraries, which then ignore that object, as they define.
    LVIS evaluation of ground truth with iscrowd=1 logs one warning per file: LVISEval scores crowd regions as
    ordinary objects (the number is left as the library computes it).
    """
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    gt = _load_gt(gt_path)
    _check_records(gt["images"], "image", {"id": "int"}, gt_path)
    _check_records(gt["categories"], "category", {"id": "int"}, gt_path)
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
    if timeout is None:
        timeout = watchdog_seconds(len(gt["annotations"]), len(preds))
    elif not (_is_number(timeout) and timeout >= 0):
        raise ValueError(f"timeout must be a number >= 0, got {timeout!r}")
    if kind == "lvis":  # imported here, not in each forked child (saves ~50 ms a run)
        _import_lvis()
    else:
        import pycocotools.cocoeval  # noqa: F401
    metrics = _run_bounded(runner, (gt, preds, iou_type, limit), float(timeout), LIBRARIES[kind], pred_path)
    names = {int(c["id"]): c.get("name") for c in gt["categories"]}  # `xpaste plan` checks them against its dataset
    return {**metrics, "kind": kind, "iou_type": iou_type, "max_dets": limit, "categories": names}


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
