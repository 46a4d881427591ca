"""The one polygon <-> mask module (`xpaste.ops.polygons`), its <3-point rule, and the one COCO segmentation
decoder (`xpaste.ops.masks.segmentation_to_rle`) that dataset loading and evaluation share.

Right values come from pycocotools (`frPyObjects` / `merge` / `decode`, `COCO.annToRLE`), never from xpaste.
The rule for polygon parts of fewer than 3 points is detectron2's (`load_coco_json` keeps a part only when
`len(poly) % 2 == 0 and len(poly) >= 6`): such parts are left out, everywhere, never an error by themselves.
"""
from __future__ import annotations

import copy
import json
import subprocess
import sys

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from xpaste.data.coco import AnnotationError, decode_annotation_mask
from xpaste.errors import XPasteError
from xpaste.evaluate.metrics import evaluate
from xpaste.integrations.common import polygon_mask, polygons_to_masks
from xpaste.ops import masks as ops_masks
from xpaste.ops import polygons as ops_polygons
from xpaste.ops.masks import SegmentationError, rle_decode, segmentation_to_rle
from xpaste.ops.polygons import polygons_to_mask, polygons_to_rle, usable_polygons

H, W = 30, 40


def _random_polygon(rng) -> list[float]:
    cx, cy = rng.uniform(5, W - 5), rng.uniform(5, H - 5)
    n = int(rng.integers(3, 8))
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    r = rng.uniform(2, 9, n)
    return [round(float(v), 2) for a, rr in zip(angles, r) for v in (cx + rr * np.cos(a), cy + rr * np.sin(a))]


def _pycoco(polys: list) -> np.ndarray:
    """pycocotools' own pixels of an instance's polygon list, as given."""
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polys, H, W))).astype(bool)


def _ann_to_rle(seg) -> dict:
    """COCO.annToRLE of one annotation (pycocotools' reference decoder of every segmentation form), counts as
    bytes (annToRLE hands a compressed RLE back as it is)."""
    api = COCO()
    api.dataset = {"images": [{"id": 1, "height": H, "width": W}], "categories": [{"id": 1}],
                   "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": copy.deepcopy(seg),
                                    "area": 1.0, "bbox": [0, 0, 1, 1], "iscrowd": 0}]}
    api.createIndex()
    rle = api.annToRLE(api.anns[1])
    counts = rle["counts"]
    return {"size": list(rle["size"]), "counts": counts.encode() if isinstance(counts, str) else counts}


# ------------------------------------------------------------------------------ what pycocotools does
def test_pycocotools_reads_short_parts_inconsistently():
    """Why the rule exists: pycocotools draws nothing for a short part after the first, but misreads or
    refuses a short FIRST part, and ignores the last number of an odd-length part."""
    square = [2.0, 2.0, 12.0, 2.0, 12.0, 12.0, 2.0, 12.0]
    assert not mask_utils.decode(mask_utils.frPyObjects([square, [1.0, 1.0, 9.0, 9.0]], H, W)[1]).any()
    try:  # 4 numbers first: read as a box [x, y, w, h] (2.0.11 refuses a list of them with TypeError)
        first = mask_utils.decode(mask_utils.frPyObjects([[1.0, 1.0, 9.0, 9.0]], H, W)[0]).astype(bool)
        assert first[1:10, 1:10].all()
    except TypeError:
        pass
    odd = mask_utils.decode(mask_utils.frPyObjects([square + [7.0]], H, W)[0]).astype(bool)
    assert np.array_equal(odd, _pycoco([square]))


# ------------------------------------------------------------------------------ the rule, in every entry point
@pytest.mark.parametrize("seed", range(6))
def test_short_and_odd_parts_are_left_out_everywhere(seed):
    """Parts of 1 or 2 points and odd-length parts, anywhere in the list: every entry point gives the pixels
    pycocotools gives the usable parts alone (which, for short parts after the first, are its pixels of the
    whole list)."""
    rng = np.random.default_rng(seed)
    good = [_random_polygon(rng), _random_polygon(rng)]
    short, two_points, odd = [3.0, 4.0], [3.0, 4.0, 9.0, 12.0], _random_polygon(rng) + [5.0]
    for polys in ([two_points] + good, [good[0], short, good[1], two_points], [good[0], odd, good[1]],
                  [odd, short] + good):
        truth = _pycoco(good)
        assert truth.any()
        if len(polys[0]) >= 6 and len(polys[0]) % 2 == 0 and all(len(p) % 2 == 0 for p in polys):
            assert np.array_equal(_pycoco(polys), truth)  # pycocotools itself agrees here
        assert np.array_equal(polygons_to_mask(polys, H, W), truth)
        assert np.array_equal(ops_masks.polygons_to_mask(polys, H, W), truth)  # the old name
        assert np.array_equal(polygon_mask([np.asarray(p) for p in polys], H, W), truth)
        assert np.array_equal(polygons_to_masks([polys, good], H, W), np.stack([truth, truth]))
        assert np.array_equal(decode_annotation_mask({"id": 1, "segmentation": polys}, H, W), truth)
        rle, dropped = segmentation_to_rle(polys, H, W)
        assert np.array_equal(rle_decode(rle), truth)
        assert dropped == [j for j, p in enumerate(polys) if len(p) < 6 or len(p) % 2]


def test_usable_polygons_flatten_and_keep_order():
    parts, dropped = usable_polygons([[0, 0, 4, 0, 4, 4], np.array([[1, 1], [2, 2]]), np.array([[0, 0], [5, 0], [5, 5]]),
                                      [1, 2, 3, 4, 5, 6, 7]])
    assert dropped == [1, 3] and [p.tolist() for p in parts] == [[0, 0, 4, 0, 4, 4], [0, 0, 5, 0, 5, 5]]
    assert all(p.dtype == np.float64 for p in parts)


def test_no_usable_part():
    """Without a usable part the rasterisers give no pixel; the COCO decoder refuses the annotation."""
    polys = [[1.0, 1.0, 9.0, 9.0], [2.0, 2.0]]
    assert polygons_to_rle(polys, H, W) is None
    out = polygons_to_mask(polys, H, W)
    assert out.shape == (H, W) and out.dtype == bool and not out.any()
    assert polygon_mask(polys, H, W) is None
    assert not polygons_to_masks([polys], H, W).any()
    with pytest.raises(SegmentationError, match="at least 3 points") as info:
        segmentation_to_rle(polys, H, W, "annotation 4")
    assert info.value.reason == "degenerate_polygon" and str(info.value).startswith("annotation 4: ")
    with pytest.raises(AnnotationError, match="at least 6"):
        decode_annotation_mask({"id": 4, "segmentation": polys}, H, W)


# ------------------------------------------------------------------------------ the one decoder
def _square_mask() -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[5:17, 8:30] = True
    m[9:12, 12:20] = False
    return m


def _uncompressed(m: np.ndarray) -> dict:
    flat = m.flatten(order="F").astype(np.uint8)
    change = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    return {"size": [H, W], "counts": [0] + runs if flat[0] else runs}


SEGMENTATIONS = {
    "polygons": [[2.5, 3.0, 20.0, 4.0, 18.0, 25.0, 3.0, 20.0], [25.0, 5.0, 38.0, 5.0, 30.0, 14.0]],
    "compressed": {"size": [H, W],
                   "counts": mask_utils.encode(np.asfortranarray(_square_mask(), np.uint8))["counts"].decode()},
    "uncompressed": _uncompressed(_square_mask()),
}


@pytest.mark.parametrize("kind", list(SEGMENTATIONS))
def test_decoder_equals_ann_to_rle(kind):
    seg = SEGMENTATIONS[kind]
    truth = _ann_to_rle(seg)
    rle, dropped = segmentation_to_rle(copy.deepcopy(seg), H, W)
    assert dropped == [] and rle["size"] == [H, W] and isinstance(rle["counts"], str)
    assert rle["counts"].encode() == truth["counts"]
    # the dataset loader's pixels are pycocotools' too
    expected = mask_utils.decode(truth).astype(bool)
    assert np.array_equal(decode_annotation_mask({"id": 1, "segmentation": copy.deepcopy(seg)}, H, W), expected)


def _eval_files(tmp_path, pred_seg) -> tuple:
    gt = {"images": [{"id": 1, "file_name": "a.png", "height": H, "width": W}],
          "categories": [{"id": 1, "name": "thing"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0,
                           "segmentation": SEGMENTATIONS["compressed"]}]}
    preds = [{"image_id": 1, "category_id": 1, "score": 0.9, "segmentation": pred_seg}]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "p.json").write_text(json.dumps(preds))
    return tmp_path / "gt.json", tmp_path / "p.json"


@pytest.mark.parametrize("kind", list(SEGMENTATIONS))
def test_evaluation_reads_every_form_like_pycocotools(tmp_path, kind):
    """A prediction equal to the ground truth's pycocotools pixels scores AP 1 in each encoding."""
    seg = SEGMENTATIONS[kind]
    gt_rle = _ann_to_rle(seg)
    gt_path, pred_path = _eval_files(tmp_path, seg)
    gt = json.loads(gt_path.read_text())
    gt["annotations"][0]["segmentation"] = {"size": [H, W], "counts": gt_rle["counts"].decode()}
    gt_path.write_text(json.dumps(gt))
    assert evaluate(gt_path, pred_path, kind="coco")["AP"] == pytest.approx(1.0)


@pytest.mark.parametrize("counts, words", [
    (SEGMENTATIONS["compressed"]["counts"][:-3], "RLE runs cover"),  # a short string: pycocotools reads garbage
    ("5\x7f", "invalid character"),
])
def test_malformed_compressed_rle_refused_on_load_and_in_evaluation(tmp_path, counts, words):
    """Both readers refuse what the one decoder refuses (evaluation used to pass such strings on unchecked)."""
    seg = {"size": [H, W], "counts": counts}
    with pytest.raises(AnnotationError, match=words):
        decode_annotation_mask({"id": 1, "segmentation": seg}, H, W)
    gt_path, pred_path = _eval_files(tmp_path, seg)
    with pytest.raises(XPasteError, match=f"prediction 0: unreadable segmentation .*{words}") as info:
        evaluate(gt_path, pred_path, kind="coco")
    assert info.value.path == str(pred_path)


def test_size_mismatch_and_unsized_compressed_rle():
    seg = {"size": [H + 1, W], "counts": [(H + 1) * W]}
    with pytest.raises(SegmentationError, match="differs from the image size") as info:
        segmentation_to_rle(seg, H, W)
    assert info.value.reason == "size_mismatch"
    rle, _ = segmentation_to_rle(SEGMENTATIONS["compressed"], None, None)  # checked against its own size
    assert rle == SEGMENTATIONS["compressed"]
    with pytest.raises(SegmentationError, match="height and width"):
        segmentation_to_rle(SEGMENTATIONS["polygons"], None, None)


# ------------------------------------------------------------------------------ one home, old names, floors
def test_old_names_are_the_new_functions():
    import xpaste.data.coco as coco
    import xpaste.integrations.yolo_export as yolo_export

    assert ops_masks.polygons_to_mask is ops_polygons.polygons_to_mask
    assert yolo_export.mask_to_polygon is ops_polygons.mask_to_polygon
    assert coco.AnnotationError is SegmentationError
    assert (coco.DEGENERATE_POLYGON, coco.INVALID_SEGMENTATION, coco.SIZE_MISMATCH) == (
        ops_masks.DEGENERATE_POLYGON, ops_masks.INVALID_SEGMENTATION, ops_masks.SIZE_MISMATCH)


def test_ops_polygons_is_light_and_on_the_lowest_floor():
    code = ("import sys, xpaste.ops.polygons, xpaste.ops.masks; "
            "bad = [m for m in sys.modules if m in ('cv2', 'pycocotools', 'torch') "
            "or m.startswith(('xpaste.data', 'xpaste.evaluate', 'xpaste.integrations'))]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
