"""`xpaste eval` on the quirky inputs people feed pycocotools / lvis: the printed AP is what the files mean.

Every right value here comes from pycocotools' COCOeval or lvis' LVISEval run directly on a clean, equivalent
input written by the test (ids renumbered from 1, areas filled in by pycocotools, bbox removed from segm
results, polygons encoded by pycocotools), never from xpaste.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import logging

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from xpaste.errors import XPasteError
from xpaste.evaluate.metrics import COCO_METRICS, LVIS_METRICS, evaluate

H, W = 120, 140


def _rle(mask: np.ndarray) -> dict:
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in r["size"]], "counts": r["counts"].decode()}


def _square(y0, x0, side, h=H, w=W) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y0 + side, x0:x0 + side] = True
    return m


def make_case(first_id: int = 0, lvis: bool = False, seed: int = 0):
    """Two images, three categories, masks of small/medium/large size; noisy predictions (misses, shifts, FPs)."""
    rng = np.random.default_rng(seed)
    images, anns, preds = [], [], []
    for image_id in (1, 2):
        img = {"id": image_id, "file_name": f"{image_id}.png", "height": H, "width": W}
        if lvis:
            img.update(neg_category_ids=[3] if image_id == 2 else [], not_exhaustive_category_ids=[])
        images.append(img)
        for k, (side, cat) in enumerate([(10, 1), (25, 2), (40, 1), (100, 2), (18, 3)]):
            if lvis and image_id == 2 and cat == 3:
                continue
            y, x = (int(v) for v in rng.integers(0, min(H, W) - side, 2))
            m = _square(y, x, side)
            if k % 2:  # polygon ground truth for every other object
                seg = [[x, y, x + side, y, x + side, y + side, x, y + side]]
            else:
                seg = _rle(m)
            anns.append({"id": first_id + len(anns), "image_id": image_id, "category_id": cat, "segmentation": seg,
                         "bbox": [x, y, side, side], "area": int(m.sum()), "iscrowd": 0})
            if rng.random() < 0.8 or len(anns) == 1:  # the first object (id 0 or 1) is always predicted
                dy, dx = (int(v) for v in rng.integers(-3, 4, 2)) if len(anns) > 1 else (0, 1)
                pm = np.roll(m, (dy, dx), axis=(0, 1))
                preds.append({"image_id": image_id, "category_id": cat, "segmentation": _rle(pm),
                              "bbox": [x + dx, y + dy, side, side], "score": float(rng.random())})
        fp = _square(70, 5, 12)
        preds.append({"image_id": image_id, "category_id": 1, "segmentation": _rle(fp), "bbox": [5, 70, 12, 12],
                      "score": float(rng.random())})
    cats = [{"id": c, "name": f"c{c}"} for c in (1, 2, 3)]
    if lvis:
        for c, f in zip(cats, "rcf"):
            c["frequency"] = f
    return {"images": images, "annotations": anns, "categories": cats}, preds


def _write(tmp_path, name, obj):
    p = tmp_path / name
    p.write_text(json.dumps(obj))
    return p


def coco_direct(gt: dict, preds: list, iou_type: str) -> list[float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(copy.deepcopy(preds)), iouType=iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(v) for v in ev.stats[:6]]


def lvis_direct(gt: dict, preds: list, iou_type: str, monkeypatch) -> dict:
    import lvis

    class Loaded(lvis.LVIS):
        def _load_json(self, data):
            return data

    monkeypatch.setattr(np, "float", float, raising=False)
    with contextlib.redirect_stdout(io.StringIO()):
        g = Loaded(copy.deepcopy(gt))
        ev = lvis.LVISEval(g, lvis.LVISResults(g, copy.deepcopy(preds)), iou_type=iou_type)
        ev.run()
    monkeypatch.undo()
    return {k: float(ev.results[k]) for k in LVIS_METRICS}


def _renumbered(gt: dict) -> dict:
    out = copy.deepcopy(gt)
    for i, a in enumerate(out["annotations"], 1):
        a["id"] = i
    return out


def _segm_only(preds: list) -> list:
    return [{k: v for k, v in p.items() if k != "bbox"} for p in preds]


# ------------------------------------------------------------------------------ ids
@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gt_id_zero_scores_like_ids_from_one_coco(tmp_path, iou_type, seed):
    gt, preds = make_case(first_id=0, seed=seed)
    ours = evaluate(_write(tmp_path, "gt.json", gt), _write(tmp_path, "p.json", preds), iou_type=iou_type)
    clean_preds = _segm_only(preds) if iou_type == "segm" else preds
    expected = coco_direct(_renumbered(gt), clean_preds, iou_type)
    assert [ours[k] for k in COCO_METRICS] == expected
    # the raw library on the id-0 file is wrong (the gt id 0 is never "matched"): the case is a real one
    assert coco_direct(gt, clean_preds, iou_type)[0] != expected[0]


@pytest.mark.parametrize("seed", [0, 3])
def test_gt_id_zero_scores_like_ids_from_one_lvis(tmp_path, seed, monkeypatch):
    gt, preds = make_case(first_id=0, lvis=True, seed=seed)
    ours = evaluate(_write(tmp_path, "gt.json", gt), _write(tmp_path, "p.json", preds))
    assert ours["kind"] == "lvis"
    expected = lvis_direct(_renumbered(gt), _segm_only(preds), "segm", monkeypatch)
    assert {k: ours[k] for k in LVIS_METRICS} == expected


def test_perfect_predictions_with_id_zero_score_100(tmp_path):
    gt, _ = make_case(first_id=0)
    preds = []
    for a in gt["annotations"]:
        seg = a["segmentation"]
        if isinstance(seg, list):
            seg = mask_utils.merge(mask_utils.frPyObjects(seg, H, W))
            seg = {"size": seg["size"], "counts": seg["counts"].decode()}
        preds.append({"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": seg, "score": 0.9})
    res = evaluate(_write(tmp_path, "gt.json", gt), _write(tmp_path, "p.json", preds))
    assert res["AP"] == pytest.approx(1.0)


@pytest.mark.parametrize("field, value, words", [
    ("id", 2**63, "signed 64-bit"),
    ("id", 1.5, "integer"),
    ("image_id", 77, "unknown image id 77"),
])
def test_bad_gt_ids_refused_in_one_line(tmp_path, field, value, words):
    gt, preds = make_case(first_id=1)
    gt["annotations"][0][field] = value
    path = _write(tmp_path, "gt.json", gt)
    with pytest.raises(XPasteError, match=words) as info:
        evaluate(path, _write(tmp_path, "p.json", preds))
    assert info.value.path == str(path) and "\n" not in str(info.value)


# ------------------------------------------------------------------------------ missing fields
def _filled_by_pycocotools(gt: dict) -> dict:
    """area and bbox of every annotation from pycocotools' own annToRLE / area / toBbox."""
    from pycocotools.coco import COCO

    out = copy.deepcopy(gt)
    api = COCO()
    api.dataset = copy.deepcopy(gt)
    api.createIndex()
    for a in out["annotations"]:
        rle = api.annToRLE(a)
        a["area"] = float(mask_utils.area(rle))
        a["bbox"] = [float(v) for v in mask_utils.toBbox(rle)]
    return out


@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
@pytest.mark.parametrize("drop", [("area",), ("area", "bbox"), ("area", "iscrowd")])
def test_gt_without_area_bbox_iscrowd_coco(tmp_path, iou_type, drop):
    gt, preds = make_case(first_id=1, seed=4)
    full = _filled_by_pycocotools(gt)
    for a in gt["annotations"]:
        for k in drop:
            a.pop(k)
    ours = evaluate(_write(tmp_path, "gt.json", gt), _write(tmp_path, "p.json", preds), iou_type=iou_type)
    assert [ours[k] for k in COCO_METRICS] == coco_direct(full, _segm_only(preds) if iou_type == "segm" else preds,
                                                          iou_type)


def test_gt_without_area_lvis(tmp_path, monkeypatch):
    gt, preds = make_case(first_id=1, lvis=True, seed=5)
    full = _filled_by_pycocotools(gt)
    for a in gt["annotations"]:
        del a["area"], a["iscrowd"]
    ours = evaluate(_write(tmp_path, "gt.json", gt), _write(tmp_path, "p.json", preds))
    assert {k: ours[k] for k in LVIS_METRICS} == lvis_direct(full, _segm_only(preds), "segm", monkeypatch)


def test_gt_without_mask_refused_for_segm_scored_for_bbox(tmp_path):
    gt, preds = make_case(first_id=1, seed=6)
    full = copy.deepcopy(gt)
    gt["annotations"][2]["segmentation"] = []
    gpath, ppath = _write(tmp_path, "gt.json", gt), _write(tmp_path, "p.json", preds)
    with pytest.raises(XPasteError, match="no segmentation") as info:
        evaluate(gpath, ppath, iou_type="segm")
    assert info.value.path == str(gpath)
    # bbox AP needs only the box: equal to pycocotools on the file with the mask (unused for bbox IoU)
    ours = evaluate(gpath, ppath, iou_type="bbox")
    assert [ours[k] for k in COCO_METRICS] == coco_direct(full, preds, "bbox")


def test_degenerate_gt_polygon_part_left_out(tmp_path):
    """A 2-point part after a valid polygon: pycocotools draws no pixel for it; the part is left out."""
    gt, preds = make_case(first_id=1, seed=7)
    clean = copy.deepcopy(gt)
    poly = next(a for a in gt["annotations"] if isinstance(a["segmentation"], list))
    poly["segmentation"].append([1, 1, 3, 3])
    ours = evaluate(_write(tmp_path, "gt.json", gt), _write(tmp_path, "p.json", preds))
    assert [ours[k] for k in COCO_METRICS] == coco_direct(clean, _segm_only(preds), "segm")


# ------------------------------------------------------------------------------ predictions
def test_segm_results_use_mask_area_not_box_area(tmp_path):
    """detectron2's rule: segm results are scored without their bbox (else APs..APl use box areas)."""
    gt, _ = make_case(first_id=1, seed=8)
    thin = np.zeros((H, W), bool)
    idx = np.arange(110)
    thin[idx, idx + 5] = True  # a diagonal: 110 px of mask, a 110x110 box
    preds = [{"image_id": 1, "category_id": 1, "segmentation": _rle(thin), "bbox": [5, 0, 110, 110], "score": 0.99}]
    for a in gt["annotations"]:
        seg = a["segmentation"]
        m = mask_utils.merge(mask_utils.frPyObjects(seg, H, W)) if isinstance(seg, list) else seg
        preds.append({"image_id": a["image_id"], "category_id": a["category_id"], "score": 0.5,
                      "segmentation": {"size": m["size"], "counts": m["counts"] if isinstance(m["counts"], str)
                                       else m["counts"].decode()}, "bbox": a["bbox"]})
    ours = evaluate(_write(tmp_path, "gt.json", gt), _write(tmp_path, "p.json", preds))
    expected = coco_direct(gt, _segm_only(preds), "segm")
    assert [ours[k] for k in COCO_METRICS] == expected
    assert coco_direct(gt, preds, "segm")[3] != expected[3]  # APs: the box area would hide the false positive


def test_polygon_and_uncompressed_predictions_read_like_rle(tmp_path):
    gt, preds = make_case(first_id=1, seed=9)
    mixed = copy.deepcopy(_segm_only(preds))
    for i, p in enumerate(mixed):
        m = mask_utils.decode({"size": p["segmentation"]["size"], "counts": p["segmentation"]["counts"].encode()})
        if i % 2:  # uncompressed RLE, column-major runs starting with zeros
            flat = m.flatten(order="F")
            change = np.flatnonzero(np.diff(flat)) + 1
            bounds = np.concatenate([[0], change, [flat.size]])
            runs = np.diff(bounds).tolist()
            if flat[0] == 1:
                runs = [0] + runs
            p["segmentation"] = {"size": [H, W], "counts": runs}
        else:  # a square mask as its polygon
            ys, xs = np.nonzero(m)
            x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
            p["segmentation"] = [[x0, y0, x1, y0, x1, y1, x0, y1]]
            r = mask_utils.merge(mask_utils.frPyObjects(p["segmentation"], H, W))
            preds[i]["segmentation"] = {"size": [H, W], "counts": r["counts"].decode()}
    ours = evaluate(_write(tmp_path, "gt.json", gt), _write(tmp_path, "p.json", mixed))
    assert [ours[k] for k in COCO_METRICS] == coco_direct(gt, _segm_only(preds), "segm")


@pytest.mark.parametrize("lvis", [False, True])
def test_empty_predictions_score_zero(tmp_path, lvis, monkeypatch):
    """An empty result list scores what one detection matching nothing scores: 0 where there is ground truth."""
    gt, _ = make_case(first_id=1, lvis=lvis, seed=10)
    ours = evaluate(_write(tmp_path, "gt.json", gt), _write(tmp_path, "p.json", []))
    nothing = np.zeros((H, W), bool)
    nothing[0, 0] = True  # one pixel where no object lies, on a category the image has (LVIS: not ignored)
    dummy = [{"image_id": 1, "category_id": 1, "segmentation": _rle(nothing), "score": 0.01}]
    if lvis:
        expected = lvis_direct(gt, dummy, "segm", monkeypatch)
        assert {k: ours[k] for k in LVIS_METRICS} == expected
    else:
        assert [ours[k] for k in COCO_METRICS] == coco_direct(gt, dummy, "segm")
    assert ours["AP"] == 0.0


@pytest.mark.parametrize("change, words", [
    ({"image_id": 99}, "image ids not in the ground truth: [99]"),
    ({"category_id": 42}, "category ids not in the ground truth: [42]"),
])
def test_predictions_with_unknown_ids_refused(tmp_path, change, words):
    gt, preds = make_case(first_id=1)
    preds[1].update(change)
    path = _write(tmp_path, "p.json", preds)
    with pytest.raises(XPasteError) as info:
        evaluate(_write(tmp_path, "gt.json", gt), path)
    assert words in str(info.value) and info.value.path == str(path)


def test_nan_in_gt_refused(tmp_path):
    gt, preds = make_case(first_id=1)
    gt["images"][0]["score"] = float("nan")
    path = _write(tmp_path, "gt.json", gt)
    with pytest.raises(XPasteError, match="non-standard number NaN") as info:
        evaluate(path, _write(tmp_path, "p.json", preds))
    assert info.value.path == str(path)


def test_cli_prints_100_for_id_zero(tmp_path):
    from typer.testing import CliRunner

    import xpaste.commands.eval  # noqa: F401 - registers the command
    from xpaste.commands.app import app

    m1, m2 = _square(5, 5, 20, 50, 60), _square(30, 30, 15, 50, 60)
    gt = {"images": [{"id": 1, "file_name": "x.png", "height": 50, "width": 60}],
          "categories": [{"id": 1, "name": "thing"}],
          "annotations": [{"id": i, "image_id": 1, "category_id": 1, "segmentation": _rle(m), "iscrowd": 0}
                          for i, m in enumerate((m1, m2))]}  # ids 0, 1 and no area
    preds = [{"image_id": 1, "category_id": 1, "segmentation": _rle(m), "score": 0.9} for m in (m1, m2)]
    result = CliRunner().invoke(app, ["eval", "--gt", str(_write(tmp_path, "gt.json", gt)),
                                      "--pred", str(_write(tmp_path, "p.json", preds))])
    assert result.exit_code == 0, result.output
    ap_line = next(line for line in result.output.splitlines() if line.startswith("AP "))
    assert ap_line.split()[1] == "100.0"


@pytest.mark.parametrize("value, as_int", [(None, 0), (False, 0), (True, 1)])
def test_iscrowd_null_or_bool_read_as_meant(tmp_path, value, as_int):
    gt, preds = make_case(first_id=1, seed=11)
    clean = copy.deepcopy(gt)
    gt["annotations"][3]["iscrowd"] = value
    clean["annotations"][3]["iscrowd"] = as_int
    ours = evaluate(_write(tmp_path, "gt.json", gt), _write(tmp_path, "p.json", preds), iou_type="bbox")
    assert [ours[k] for k in COCO_METRICS] == coco_direct(clean, preds, "bbox")


@pytest.mark.parametrize("field, value, iou_type, words", [
    ("bbox", [1, 2, 3], "bbox", "malformed bbox"),
    ("area", "big", "segm", "non-numeric area"),
    ("segmentation", [[1, 2, "x", 4, 5, 6]], "segm", "unreadable segmentation"),
    ("segmentation", {"size": [H + 1, W], "counts": "abc"}, "segm", "RLE size"),
])
def test_malformed_gt_fields_refused_in_one_line(tmp_path, field, value, iou_type, words):
    gt, preds = make_case(first_id=1)
    gt["annotations"][2][field] = value
    path = _write(tmp_path, "gt.json", gt)
    with pytest.raises(XPasteError, match=words) as info:
        evaluate(path, _write(tmp_path, "p.json", preds), iou_type=iou_type)
    assert info.value.path == str(path) and "annotation id 3" in str(info.value)


# ------------------------------------------------------------------------------ LVIS and crowd regions
class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def metrics_log():
    handler = _Records()
    logger = logging.getLogger("xpaste.evaluate.metrics")
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)


def _mask_of(ann: dict, h=H, w=W) -> np.ndarray:
    seg = ann["segmentation"]
    rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w)) if isinstance(seg, list) else \
        {"size": seg["size"], "counts": seg["counts"].encode()}
    return mask_utils.decode(rle).astype(bool)


def _crowd_case(seed: int, crowd_rows: list[int]):
    """LVIS-style gt with `crowd_rows` marked iscrowd=1; predictions exactly the non-crowd objects."""
    gt, _ = make_case(first_id=1, lvis=True, seed=seed)
    for i in crowd_rows:
        gt["annotations"][i]["iscrowd"] = 1
    preds = [{"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": _rle(_mask_of(a)),
              "score": 0.9} for a in gt["annotations"] if not a["iscrowd"]]
    return gt, preds


@pytest.mark.parametrize("seed, crowd_rows", [(0, [0]), (1, [2, 5, 6]), (4, [])])
def test_lvis_crowd_regions_scored_as_lvis_does_with_one_warning(tmp_path, monkeypatch, metrics_log, seed,
                                                                 crowd_rows):
    gt, preds = _crowd_case(seed, crowd_rows)
    gt_path = _write(tmp_path, "gt.json", gt)
    ours = evaluate(gt_path, _write(tmp_path, "p.json", preds))
    expected = lvis_direct(gt, preds, "segm", monkeypatch)  # the lvis library itself: the number is unchanged
    assert ours["kind"] == "lvis" and {k: ours[k] for k in LVIS_METRICS} == expected
    if crowd_rows:
        assert expected["AP"] < 1.0  # the missed crowd regions count against AP under LVIS's rules
        assert len(metrics_log) == 1 and "\n" not in metrics_log[0]
        assert f"score {len(crowd_rows)} crowd region" in metrics_log[0] and str(gt_path) in metrics_log[0]
        assert "--kind coco" in metrics_log[0]
    else:
        assert expected["AP"] == 1.0 and metrics_log == []
    # COCOeval ignores crowd regions: no warning there, and the perfect predictions score 1.0
    metrics_log.clear()
    coco = evaluate(gt_path, _write(tmp_path, "p.json", preds), kind="coco")
    assert coco["AP"] == coco_direct(gt, preds, "segm")[0] == 1.0
    assert metrics_log == []


def test_cli_warns_once_about_lvis_crowd_regions_even_with_compare(tmp_path, monkeypatch, capsys):
    from xpaste.cli import main

    gt, preds = _crowd_case(0, [0, 3])
    gt_path, pred_path = _write(tmp_path, "gt.json", gt), _write(tmp_path, "p.json", preds)
    assert main(["eval", "--gt", str(gt_path), "--pred", str(pred_path), "--compare", str(pred_path)]) == 0
    captured = capsys.readouterr()
    warnings_ = [line for line in captured.err.splitlines() if "crowd region" in line]
    assert warnings_ == [f"xpaste: {gt_path}: LVIS's rules score 2 crowd regions (iscrowd=1) as ordinary objects "
                         "to find (the lvis library has no iscrowd), so missing them lowers AP; use --kind coco to "
                         "have COCOeval ignore crowd regions, or drop them from the ground truth"]
    expected = lvis_direct(gt, preds, "segm", monkeypatch)["AP"]
    ap_line = next(line for line in captured.out.splitlines() if line.startswith("AP "))
    assert ap_line.split()[1:3] == [f"{100 * expected:.1f}"] * 2
