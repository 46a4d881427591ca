"""`xpaste.evaluate`: numbers identical to the official libraries, clear errors, the `eval` CLI."""
from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys

import numpy as np
import pytest

from xpaste.errors import XPasteError
from xpaste.evaluate.metrics import COCO_METRICS, LVIS_METRICS, evaluate, format_table
from xpaste.ops.masks import rle_encode

SIZE = 160  # big enough for 'large' objects (area > 96^2) next to small (< 32^2) and medium ones
FREQ = {1: "r", 2: "c", 3: "f", 4: "f"}


def _gt_objects(rng: np.random.Generator) -> list[tuple[int, int, np.ndarray]]:
    """(image_id, category_id, mask) for 3 images with small, medium and large objects."""
    objects = []
    for image_id in (1, 2, 3):
        for k, (side, cat) in enumerate([(12, 1), (20, 2), (50, 3), (110, 3), (8, 4), (40, 2)]):
            if image_id == 3 and cat == 1:
                continue  # the rare category is absent from image 3 (and listed as negative there)
            mask = np.zeros((SIZE, SIZE), bool)
            y, x = rng.integers(0, SIZE - side, 2)
            mask[y : y + side, x : x + side] = rng.random((side, side)) < 0.95
            mask[y, x] = mask[y + side - 1, x + side - 1] = True
            objects.append((image_id, cat, mask))
    return objects


def _box(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1 - xs.min()), float(ys.max() + 1 - ys.min())]


def _polygon(mask: np.ndarray) -> list[list[float]]:
    x, y, w, h = _box(mask)
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def write_gt(path, objects, lvis_style: bool) -> None:
    images = []
    for image_id in (1, 2, 3):
        img = {"id": image_id, "height": SIZE, "width": SIZE, "file_name": f"{image_id}.jpg"}
        if lvis_style:
            img["neg_category_ids"] = [1] if image_id == 3 else []
            img["not_exhaustive_category_ids"] = [4] if image_id == 2 else []
        images.append(img)
    anns = []
    for i, (image_id, cat, mask) in enumerate(objects):
        # Alternate RLE and polygon ground truth: both encodings must be read alike.
        seg = rle_encode(mask) if i % 2 else _polygon(mask)
        ann = {"id": i + 1, "image_id": image_id, "category_id": cat, "segmentation": seg,
               "bbox": _box(mask), "area": float(mask.sum())}
        if not lvis_style:
            ann["iscrowd"] = 0
        anns.append(ann)
    cats = [{"id": c, "name": f"cat{c}", **({"frequency": f} if lvis_style else {})} for c, f in FREQ.items()]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))


def _mask_of(obj, polygon_ids: set[int], index: int) -> np.ndarray:
    from xpaste.ops.masks import polygons_to_mask

    mask = obj[2]
    return polygons_to_mask(_polygon(mask), SIZE, SIZE) if index in polygon_ids else mask


def write_predictions(path, objects, rng: np.random.Generator | None) -> None:
    """Perfect predictions when rng is None; otherwise shifted, dropped and false-positive ones."""
    polygon_ids = {i for i in range(len(objects)) if i % 2 == 0}
    preds = []
    for i, obj in enumerate(objects):
        mask = _mask_of(obj, polygon_ids, i)  # the gt exactly as the libraries rasterise it
        box = _box(obj[2])  # the gt 'bbox' field
        score = 1.0 - 0.01 * i
        if rng is not None:
            if rng.random() < 0.2:
                continue
            mask = np.roll(mask, tuple(rng.integers(-4, 5, 2)), axis=(0, 1))
            box, score = _box(mask), float(rng.random())
        preds.append({"image_id": obj[0], "category_id": obj[1], "segmentation": rle_encode(mask),
                      "bbox": box, "score": score})
    if rng is not None:
        for image_id, cat in [(3, 1), (2, 4), (1, 2), (2, 3)]:  # negative, not-exhaustive, plain FPs
            mask = np.zeros((SIZE, SIZE), bool)
            mask[5:35, 100:140] = True
            preds.append({"image_id": image_id, "category_id": cat, "segmentation": rle_encode(mask),
                          "bbox": _box(mask), "score": float(rng.random())})
    path.write_text(json.dumps(preds))


@pytest.fixture
def files(tmp_path):
    objects = _gt_objects(np.random.default_rng(3))
    out = {}
    for style in ("lvis", "coco"):
        write_gt(tmp_path / f"{style}_gt.json", objects, lvis_style=style == "lvis")
        out[f"{style}_gt"] = tmp_path / f"{style}_gt.json"
    write_predictions(tmp_path / "perfect.json", objects, None)
    write_predictions(tmp_path / "noisy.json", objects, np.random.default_rng(7))
    out["perfect"], out["noisy"] = tmp_path / "perfect.json", tmp_path / "noisy.json"
    return out


def _as_scored(pred, iou_type):
    """segm results without their bbox, as detectron2's evaluators pass them (else box areas size them)."""
    if iou_type != "segm":
        return str(pred)
    out = pred.parent / f"{pred.stem}_segm_only.json"
    out.write_text(json.dumps([{k: v for k, v in p.items() if k != "bbox"} for p in json.loads(pred.read_text())]))
    return str(out)


def direct_lvis(gt, pred, iou_type, monkeypatch) -> dict:
    import lvis

    monkeypatch.setattr(np, "float", float, raising=False)
    ev = lvis.LVISEval(str(gt), _as_scored(pred, iou_type), iou_type=iou_type)
    ev.run()
    monkeypatch.undo()
    return dict(ev.results)


def direct_coco(gt, pred, iou_type) -> list[float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(gt))
        ev = COCOeval(coco, coco.loadRes(_as_scored(pred, iou_type)), iouType=iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(v) for v in ev.stats[:6]]  # AP, AP50, AP75, APs, APm, APl


@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
def test_lvis_numbers_equal_the_library(files, iou_type, monkeypatch):
    ours = evaluate(files["lvis_gt"], files["noisy"], iou_type=iou_type)
    assert ours["kind"] == "lvis" and ours["iou_type"] == iou_type
    expected = direct_lvis(files["lvis_gt"], files["noisy"], iou_type, monkeypatch)
    for key in LVIS_METRICS:
        assert ours[key] == float(expected[key]), key
    assert 0 < ours["AP"] < 1  # the noise really costs something
    assert "float" not in np.__dict__  # the np.float shim is gone again


@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
def test_coco_numbers_equal_the_library(files, iou_type):
    ours = evaluate(files["coco_gt"], files["noisy"], iou_type=iou_type)
    assert ours["kind"] == "coco"
    expected = direct_coco(files["coco_gt"], files["noisy"], iou_type)
    assert [ours[k] for k in COCO_METRICS] == expected
    assert "APr" not in ours


def test_lvis_file_evaluated_as_coco_matches_pycocotools(files, tmp_path):
    """--kind coco on an LVIS file (no iscrowd fields) equals COCOeval on the same file with iscrowd added."""
    ours = evaluate(files["lvis_gt"], files["noisy"], kind="coco")
    data = json.loads(files["lvis_gt"].read_text())
    for ann in data["annotations"]:
        ann["iscrowd"] = 0
    (tmp_path / "with_crowd.json").write_text(json.dumps(data))
    assert [ours[k] for k in COCO_METRICS] == direct_coco(tmp_path / "with_crowd.json", files["noisy"], "segm")


@pytest.mark.parametrize("style", ["lvis", "coco"])
@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
def test_perfect_predictions_score_one(files, style, iou_type):
    res = evaluate(files[f"{style}_gt"], files["perfect"], iou_type=iou_type)
    assert res["AP"] == pytest.approx(1.0) and res["AP50"] == pytest.approx(1.0)
    assert res["APs"] == pytest.approx(1.0) and res["APl"] == pytest.approx(1.0)
    if style == "lvis":
        assert res["APr"] == res["APc"] == res["APf"] == pytest.approx(1.0)


def test_max_dets_limits_detections(files):
    full = evaluate(files["lvis_gt"], files["noisy"])
    one = evaluate(files["lvis_gt"], files["noisy"], max_dets=1)
    assert one["max_dets"] == 1 and full["max_dets"] == 300
    assert one["AP"] < full["AP"]


def _bad(tmp_path, content) -> str:
    path = tmp_path / "bad.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


@pytest.mark.parametrize("content, words", [
    ("{not json", "malformed json"),
    ('[{"image_id": 1, "category_id": 1, "score": NaN, "bbox": [1, 2, 3, 4]}]', "non-standard number NaN"),
    ({"annotations": []}, "json list"),
    ([{"image_id": 1, "category_id": 1, "score": 0.5}], "segmentation"),
    ([{"image_id": 99, "category_id": 1, "score": 0.5, "segmentation": {"size": [SIZE, SIZE], "counts": "a"}}],
     "image ids not in the ground truth"),
    ([{"image_id": 1, "category_id": 42, "score": 0.5, "segmentation": {"size": [SIZE, SIZE], "counts": "a"}}],
     "category ids not in the ground truth"),
    ([{"image_id": 1, "category_id": 1, "score": "high", "segmentation": {"size": [SIZE, SIZE], "counts": "a"}}],
     "score"),
    ([{"image_id": 1, "category_id": 1, "score": 0.5, "segmentation": "abc"}], "compressed RLE"),
    ([{"image_id": 1, "category_id": 1, "score": 0.5, "segmentation": [[0, 0, 5, 0]]}], "at least 3 points"),
    ([{"image_id": 1, "category_id": 1, "score": 0.5, "segmentation": {"size": [10, 10], "counts": "a"}}],
     "RLE size"),
])
def test_malformed_predictions_name_the_file(files, tmp_path, content, words):
    path = _bad(tmp_path, content)
    with pytest.raises(XPasteError) as info:
        evaluate(files["lvis_gt"], path)
    assert info.value.path == path
    assert words in str(info.value)


def test_bad_gt_is_refused(files, tmp_path):
    with pytest.raises(XPasteError, match="neg_category_ids|frequency") as info:
        evaluate(files["coco_gt"], files["noisy"], kind="lvis")
    assert info.value.path == str(files["coco_gt"])
    (tmp_path / "gt.json").write_text(json.dumps([1, 2]))
    with pytest.raises(XPasteError, match="not a COCO/LVIS annotation file"):
        evaluate(tmp_path / "gt.json", files["noisy"])
    with pytest.raises(ValueError, match="iou_type"):
        evaluate(files["lvis_gt"], files["noisy"], iou_type="keypoints")


def test_import_lvis_leaves_root_logging_alone():
    code = ("import logging; from xpaste.evaluate.metrics import _import_lvis; _import_lvis(); "
            "assert not logging.getLogger().handlers, logging.getLogger().handlers; "
            "assert logging.getLogger().level == logging.WARNING")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_format_table_aligns_and_marks_missing():
    table = format_table({"base": {"AP": 0.1234, "APr": -1.0}, "paste": {"AP": 0.2, "APr": 0.05}}, delta=True)
    lines = table.splitlines()
    assert lines[0].split() == ["metric", "base", "paste", "delta"]
    assert lines[1].split() == ["AP", "12.3", "20.0", "+7.7"]
    assert lines[2].split() == ["APr", "-", "5.0", "-"]
    assert len({len(line) for line in lines}) == 1


def test_cli_compare_prints_both_columns_and_writes_json(files, tmp_path):
    from typer.testing import CliRunner

    import xpaste.commands.eval  # noqa: F401 - registers the command
    from xpaste.commands.app import app

    out = tmp_path / "res" / "metrics.json"
    result = CliRunner().invoke(app, ["eval", "--gt", str(files["lvis_gt"]), "--pred", str(files["noisy"]),
                                      "--compare", str(files["perfect"]), "--out", str(out)])
    assert result.exit_code == 0, result.output
    header = next(line for line in result.output.splitlines() if line.startswith("metric"))
    assert header.split() == ["metric", "noisy.json", "perfect.json", "delta"]
    assert "APr" in result.output
    saved = json.loads(out.read_text())
    noisy = evaluate(files["lvis_gt"], files["noisy"])
    assert saved["runs"][0]["AP"] == noisy["AP"] and saved["runs"][1]["AP"] == pytest.approx(1.0)
    ap_line = next(line for line in result.output.splitlines() if line.startswith("AP "))
    assert ap_line.split()[1:] == [f"{100 * noisy['AP']:.1f}", "100.0", f"{100 * (1 - noisy['AP']):+.1f}"]

    bad = CliRunner().invoke(app, ["eval", "--gt", str(files["lvis_gt"]), "--pred", _bad(tmp_path, {})])
    assert isinstance(bad.exception, XPasteError) and "bad.json" in str(bad.exception)
    usage = CliRunner().invoke(app, ["eval", "--gt", str(files["lvis_gt"]), "--pred", str(files["noisy"]),
                                     "--iou-type", "keypoints"])
    assert usage.exit_code == 2 and "--iou-type" in usage.output


# ---- issue 20: eval checks its inputs like augment, and a watchdog bounds the library run ----------------------
def _edited(path, tmp_path, name, edit) -> str:
    data = json.loads(path.read_text())
    edit(data)
    out = tmp_path / name
    out.write_text(json.dumps(data))
    return str(out)


def _set(where, key, value):
    return lambda data: where(data).__setitem__(key, value)


@pytest.mark.parametrize("target, edit, iou_type, words", [
    ("pred", _set(lambda d: d[0], "bbox", [5, 5, -3, 4]), "bbox", "negative width or height"),
    ("pred", _set(lambda d: d[0], "bbox", [1e308, 5, 1e308, 4]), "bbox", "beyond 1344 px from the origin"),
    ("pred", _set(lambda d: d[0], "bbox", [5, 5, 4]), "bbox", "malformed bbox"),
    ("gt", _set(lambda d: d["annotations"][0], "bbox", [5, 5, 4, -1]), "bbox", "negative width or height"),
    ("gt", _set(lambda d: d["annotations"][0], "bbox", [-1e9, 5, 4, 4]), "bbox", "beyond"),
    ("gt", _set(lambda d: d["annotations"][0], "area", -5), "segm", "negative area"),
    ("gt", _set(lambda d: d["annotations"][0], "iscrowd", "yes"), "segm", "iscrowd='yes', expected 0 or 1"),
    ("gt", _set(lambda d: d["annotations"][0], "ignore", [1]), "segm", "ignore=[1], expected 0 or 1"),
    ("gt", _set(lambda d: d["images"][0], "neg_category_ids", 5), "segm", "neg_category_ids=5"),
    ("gt", _set(lambda d: d["images"][0], "not_exhaustive_category_ids", None), "bbox", "not_exhaustive"),
    ("gt", _set(lambda d: d["categories"], 0, 7), "segm", "category #0 is a int"),
    ("gt", _set(lambda d: d["images"], 0, "x"), "segm", "image #0 is a str"),
    # a polygon in an image of 10**9 px a side: pycocotools' C ints overflow (it crashed with SIGSEGV)
    ("gt", lambda d: (d["images"][0].update(height=10**9, width=10**9),
                      d["annotations"][1].__setitem__("segmentation", [[0, 0, 8e9, 0, 8e9, 8e9]])), "segm",
     "side over 65536"),
])
def test_eval_refuses_what_the_libraries_would_misread(files, tmp_path, target, edit, iou_type, words):
    gt, pred = files["lvis_gt"], files["noisy"]
    if target == "gt":
        gt = _edited(gt, tmp_path, "gt.json", edit)
    else:
        pred = _edited(pred, tmp_path, "pred.json", edit)
    with pytest.raises(XPasteError, match=words.replace("[", r"\[").replace("(", r"\(")) as info:
        evaluate(gt, pred, iou_type=iou_type)
    assert info.value.path == str(gt if target == "gt" else pred) and "\n" not in str(info.value)


def test_watchdog_gives_the_same_numbers_as_an_in_process_run(files):
    for kind in ("lvis", "coco"):
        bounded = evaluate(files["lvis_gt"], files["noisy"], kind=kind)
        direct = evaluate(files["lvis_gt"], files["noisy"], kind=kind, timeout=0)
        assert bounded == direct


def _spin(*_):
    while True:
        pass


def _segfault(*_):
    import faulthandler
    import os
    import signal

    faulthandler.disable()  # pytest's dump of the child's stack is noise here
    os.kill(os.getpid(), signal.SIGSEGV)


def _boom(*_):
    raise RuntimeError("boom")


@pytest.mark.parametrize("runner, words", [(_spin, "did not finish within 1 s; stopped"),
                                           (_segfault, "crashed (signal SIGSEGV)"),
                                           (_boom, "failed on these files: RuntimeError: boom")])
def test_watchdog_ends_a_stuck_or_crashing_library_in_one_line(files, monkeypatch, runner, words):
    import time

    from xpaste.evaluate import metrics

    monkeypatch.setattr(metrics, "_run_coco", runner)
    start = time.monotonic()
    with pytest.raises(XPasteError) as info:
        evaluate(files["coco_gt"], files["noisy"], timeout=1)
    assert time.monotonic() - start < 15
    assert words in str(info.value) and "\n" not in str(info.value)
    assert info.value.path == str(files["noisy"])


def test_watchdog_default_grows_with_the_input():
    from xpaste.evaluate.metrics import watchdog_seconds

    assert watchdog_seconds(0, 0) == 120
    assert watchdog_seconds(244_000, 6_000_000) > 10_000  # LVIS val with 300 detections an image: hours allowed


def test_cli_eval_timeout_and_max_dets_end_in_one_line(files, monkeypatch, capsys):
    from xpaste.cli import main
    from xpaste.evaluate import metrics

    args = ["eval", "--gt", str(files["coco_gt"]), "--pred", str(files["noisy"])]
    assert main(args + ["--max-dets", "0"]) == 2
    monkeypatch.setattr(metrics, "_run_coco", _spin)
    capsys.readouterr()
    assert main(args + ["--timeout", "0.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "did not finish within 0.5 s" in err and "--timeout" in err


def test_segm_does_not_read_a_broken_gt_box(files, tmp_path):
    """Found by the CLI fuzz: a gt bbox [x, y, [], h] with its area given made segm eval raise a TypeError
    (the box area was computed as a default even when unused). segm reads no gt box: the numbers stay."""
    gt = _edited(files["lvis_gt"], tmp_path, "gt.json", _set(lambda d: d["annotations"][0], "bbox", [1, 2, [], 4]))
    assert evaluate(gt, files["noisy"]) == evaluate(files["lvis_gt"], files["noisy"])
