"""YOLO-seg export (`xpaste export-yolo`, `xpaste.integrations.yolo_export`), checked with ultralytics' own functions.

Right values come from outside xpaste: which label file ultralytics reads for an image and what pixels a label
covers come from ultralytics' `YOLODataset` / `img2label_paths` / `polygon2mask`, ground-truth pixels from
numpy-drawn masks and pycocotools' decoding of the annotations.
"""
from __future__ import annotations

import glob
import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from coco_fixtures import write_dataset
from PIL import Image

pytest.importorskip("ultralytics")

from pycocotools import mask as mask_utils  # noqa: E402
from typer.testing import CliRunner  # noqa: E402
from ultralytics.data.dataset import YOLODataset  # noqa: E402
from ultralytics.data.utils import IMG_FORMATS, img2label_paths, polygon2mask  # noqa: E402

import xpaste.commands.export  # noqa: E402,F401  (registers export-yolo on the app)
from xpaste.commands.app import app  # noqa: E402
from xpaste.data.coco import load_coco  # noqa: E402
from xpaste.errors import XPasteError  # noqa: E402
from xpaste.integrations.yolo_export import export_yolo_seg, mask_to_polygon  # noqa: E402


def read_labels(path: Path) -> list[tuple[int, np.ndarray]]:
    rows = []
    for line in path.read_text().splitlines():
        values = line.split()
        rows.append((int(values[0]), np.array(values[1:], np.float64).reshape(-1, 2)))
    return rows


def coco_truth(ann: dict, h: int, w: int) -> np.ndarray:
    """pycocotools' pixels of an annotation (polygons, compressed or uncompressed RLE)."""
    seg = ann["segmentation"]
    if isinstance(seg, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
    elif isinstance(seg["counts"], list):
        rle = mask_utils.frPyObjects(seg, h, w)
    else:
        rle = {"size": seg["size"], "counts": seg["counts"].encode()}
    return mask_utils.decode(rle).astype(bool)


def raster(xy_normalised: np.ndarray, h: int, w: int) -> np.ndarray:
    """ultralytics' own rasterisation of one label polygon."""
    return polygon2mask((h, w), [(np.asarray(xy_normalised) * [w, h]).reshape(-1)], color=1).astype(bool)


def rle(mask: np.ndarray) -> dict:
    """pycocotools' compressed RLE of a bool mask, JSON-ready."""
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": r["size"], "counts": r["counts"].decode()}


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def ultralytics_labels(image_dir: Path, names: dict) -> dict[str, dict]:
    """What ultralytics' YOLODataset (image listing, label pairing, verification) reads: {image path: label}."""
    data = {"names": names, "nc": len(names), "channels": 3}
    dataset = YOLODataset(img_path=str(image_dir), data=data, task="segment", augment=False, imgsz=64)
    return {lab["im_file"]: lab for lab in dataset.labels}


# ----------------------------------------------------------------------------- exporter
def test_export_layout_classes_and_roundtrip(tmp_path):
    js, images = write_dataset(tmp_path / "coco", n_images=4)
    data_yaml = export_yolo_seg(js, images, tmp_path / "yolo")
    data = yaml.safe_load(data_yaml.read_text())
    assert data["names"] == {0: "cup", 1: "cat/dog", 2: "fire_hydrant", 3: "ünï"}
    assert data["train"] == data["val"] == "images/train" and Path(data["path"]) == (tmp_path / "yolo").resolve()
    dataset = load_coco(js)
    read = ultralytics_labels(tmp_path / "yolo/images/train", data["names"])
    assert len(read) == 4
    ious = []
    for info in dataset.images:
        h, w = info["height"], info["width"]
        image = tmp_path / "yolo/images/train" / info["file_name"]
        assert image.is_file() and image.read_bytes() == (images / info["file_name"]).read_bytes()
        label = read[str(image.resolve())]
        anns = [a for a in dataset.annotations_for(info["id"]) if not a["iscrowd"]]  # crowd regions skipped
        assert label["cls"].reshape(-1).tolist() == [a["category_id"] - 1 for a in anns]  # ids 1..4 -> 0..3
        for xy, ann in zip(label["segments"], anns):
            assert len(xy) >= 3 and xy.min() >= 0 and xy.max() <= 1
            ious.append(iou(raster(xy, h, w), coco_truth(ann, h, w)))
    assert len(ious) == 10 and min(ious) >= 0.95, ious  # polygon, compressed and uncompressed RLE sources


def test_export_of_xpaste_augment_output(tmp_path):
    """The augmented dataset (RLE masks, pasted and occluded instances) exports like any COCO file."""
    from xpaste.augment import augment_dataset
    from xpaste.pool.importers import import_coco

    js, images = write_dataset(tmp_path / "coco", n_images=3)
    import_coco(js, images, tmp_path / "pool", min_area=100, progress=False)
    augment_dataset(js, images, tmp_path / "pool", tmp_path / "aug", num_paste=3, progress=False)
    aug = load_coco(tmp_path / "aug/annotations.json")
    data = yaml.safe_load(export_yolo_seg(tmp_path / "aug/annotations.json", tmp_path / "aug/images",
                                          tmp_path / "yolo").read_text())
    assert len(data["names"]) == 4
    lines = sum(len(read_labels(p)) for p in (tmp_path / "yolo/labels/train").rglob("*.txt"))
    assert lines == sum(1 for a in aug.annotations if not a["iscrowd"]) > 0


def test_multi_part_masks_become_one_polygon(tmp_path):
    h, w = 40, 60
    two = np.zeros((h, w), bool)
    two[5:15, 5:20] = True
    two[25:35, 35:55] = True
    (tmp_path / "src").mkdir()
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(tmp_path / "src" / "im.png")
    polys = [[5, 5, 20, 5, 20, 15, 5, 15], [35, 25, 55, 25, 55, 35, 35, 35]]
    doc = {"images": [{"id": 1, "file_name": "im.png", "height": h, "width": w}],
           "categories": [{"id": 7, "name": "thing"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "segmentation": rle(two),
                            "area": int(two.sum()), "bbox": [5, 5, 50, 30], "iscrowd": 0},
                           {"id": 2, "image_id": 1, "category_id": 7, "segmentation": polys,
                            "area": 350.0, "bbox": [5, 5, 50, 30], "iscrowd": 0}]}
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    export_yolo_seg(tmp_path / "ann.json", tmp_path / "src", tmp_path / "out")
    rows = read_labels(tmp_path / "out/labels/train/im.txt")
    assert len(rows) == 2 and {c for c, _ in rows} == {0}  # one line per instance, parts joined
    truth = [two, coco_truth(doc["annotations"][1], h, w)]
    for (_, xy), t in zip(rows, truth):
        back = raster(xy, h, w)
        assert not (t & ~back).any() and iou(back, t) >= 0.95  # every pixel kept; only the bridge is extra
    assert mask_to_polygon(np.zeros((h, w), bool)) is None


def test_export_val_split_overwrite_and_cli(tmp_path):
    js, images = write_dataset(tmp_path / "coco", n_images=4)
    data_yaml = export_yolo_seg(js, images, tmp_path / "a", val_fraction=0.5, seed=1)
    data = yaml.safe_load(data_yaml.read_text())
    assert data["val"] == "images/val"
    val = sorted(p.name for p in (tmp_path / "a/images/val").rglob("*.*"))
    train = sorted(p.name for p in (tmp_path / "a/images/train").rglob("*.*"))
    assert len(val) == 2 and len(train) == 2 and not set(val) & set(train)
    assert len(list((tmp_path / "a/labels/val").rglob("*.txt"))) == 2
    with pytest.raises(XPasteError, match="--fresh"):
        export_yolo_seg(js, images, tmp_path / "a")
    export_yolo_seg(js, images, tmp_path / "a", overwrite=True)
    assert not (tmp_path / "a/images/val").exists()

    result = CliRunner().invoke(app, ["export-yolo", "--dataset", str(js), "--images", str(images),
                                      "--out", str(tmp_path / "b"), "--val-fraction", "0.5", "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "b/images/val").rglob("*.*")) == val  # same seed, same split
    assert "data.yaml" in result.output


# ----------------------------------------------------------------------------- label paths (ultralytics' pairing)
def write_images(root: Path, file_names: list[str], h: int = 40, w: int = 50) -> Path:
    """Images at root/data/<file_name>; image i has i % 3 + 1 rectangles of category 1 + i % 2; returns the json."""
    images, anns = [], []
    for i, name in enumerate(file_names):
        (root / "data" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((h, w, 3), 40 * (i % 6), np.uint8)).save(root / "data" / name)
        images.append({"id": i + 1, "file_name": name, "height": h, "width": w})
        for k in range(i % 3 + 1):
            x, y = 2 + 15 * k, 3 + k
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 1 + i % 2,
                         "segmentation": [[x, y, x + 10, y, x + 10, y + 20, x, y + 20]], "area": 200.0,
                         "bbox": [x, y, 10, 20], "iscrowd": 0})
    doc = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    (root / "ds.json").write_text(json.dumps(doc))
    return root / "ds.json"


TRICKY_NAMES = ["a.png", "images/b.png", "x/images/c.jpg", "x/images/y/images/d.png", "p/q/r/e.PNG",
                "sub1/same.png", "sub2/same.png", "images/same.png", "labels/same.png", "images/labels/f.png",
                "train/images/g.jpeg", "Ünï code/h h.png", "img.v2/i.png"]


@pytest.mark.parametrize("val_fraction", [0.0, 0.4])
def test_every_label_lands_where_ultralytics_looks(tmp_path, val_fraction):
    """For any file_name, ultralytics' own YOLODataset pairs each image with its instances (none as background)."""
    js = write_images(tmp_path, TRICKY_NAMES)
    export_yolo_seg(js, tmp_path / "data", tmp_path / "yolo", val_fraction=val_fraction, seed=3)
    found: dict[str, dict] = {}
    for split in ("train", "val") if val_fraction else ("train",):
        found.update(ultralytics_labels(tmp_path / "yolo/images" / split, {0: "a", 1: "b"}))
    assert len(found) == len(TRICKY_NAMES)  # ultralytics lists every exported image ...
    labels = img2label_paths(sorted(found))
    assert len(set(labels)) == len(labels) and all(os.path.isfile(p) for p in labels)  # ... each with its own file
    for i, name in enumerate(TRICKY_NAMES):
        [im_file] = [f for f in found if f.endswith(os.sep + name.replace("/", os.sep))]
        assert found[im_file]["cls"].reshape(-1).tolist() == [i % 2] * (i % 3 + 1), name
    written = sorted(glob.glob(str(tmp_path / "yolo/**/*.txt"), recursive=True))
    assert sorted(labels) == written  # and no label file ultralytics would not read


@pytest.mark.parametrize("names, what", [
    (["d/a.png", "d/a.jpg"], "share the file"),  # one label d/a.txt for two images
    (["a.png", "a.png"], "share the file"),  # the same image twice
    (["x/.hidden.png"], "hidden"),  # ultralytics' glob **/*.* skips it: it would never train
    ([".cache/a.png"], "hidden"),
    (["a.gif"], "extensions"),  # not in ultralytics' IMG_FORMATS: never listed
    (["noext"], "extensions"),
    (["../up.png"], "outside"),
])
def test_unrepresentable_layouts_refused_before_writing(tmp_path, names, what):
    for name in names:
        (tmp_path / "data" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "data" / name, format="PNG")
    doc = {"images": [{"id": i + 1, "file_name": n, "height": 8, "width": 8} for i, n in enumerate(names)],
           "annotations": [], "categories": [{"id": 1, "name": "a"}]}
    (tmp_path / "ds.json").write_text(json.dumps(doc))
    with pytest.raises(XPasteError, match=what):
        export_yolo_seg(tmp_path / "ds.json", tmp_path / "data", tmp_path / "yolo")
    assert not (tmp_path / "yolo").exists()  # refused before anything was written


def test_cli_refusal_is_one_line(tmp_path, capsys):
    from xpaste.cli import main

    js = write_images(tmp_path, ["d/a.png", "d/a.jpg"])
    assert main(["export-yolo", "--dataset", str(js), "--images", str(tmp_path / "data"),
                 "--out", str(tmp_path / "yolo")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "d/a.png" in err and "d/a.jpg" in err and "Traceback" not in err


def test_image_formats_match_ultralytics():
    """The refusal list is ultralytics' own: every IMG_FORMATS extension exports, in any letter case."""
    from xpaste.integrations.yolo_export import _relative_name

    for ext in IMG_FORMATS:
        assert _relative_name(f"d/x.{ext.upper()}") == f"d/x.{ext.upper()}"


# ----------------------------------------------------------------------------- shapes (ultralytics' rasteriser)
def shapes(h: int = 64, w: int = 80) -> dict[str, np.ndarray]:
    """Masks drawn with numpy: the right pixels, independent of xpaste and of any contour code."""
    def blank():
        return np.zeros((h, w), bool)

    out = {}
    m = blank(); m[10:40, 10:40] = True; m[18:32, 18:32] = False; out["ring"] = m
    m = blank(); m[5:15, 45:55] = True; m[5:15, 57:67] = True; out["two blobs"] = m
    m = blank(); m[np.arange(5, 45), np.arange(20, 60)] = True; out["diagonal 1-px line"] = m
    m = blank(); m[np.arange(30, 60), np.arange(70, 40, -1)] = True; out["anti-diagonal 1-px line"] = m
    m = blank(); m[20:60, 62] = True; out["vertical 1-px line"] = m
    m = blank(); m[44:60, 2:6] = True; m[56:60, 2:20] = True; out["L-shape"] = m
    m = blank(); m[50, 30] = True; out["single pixel"] = m
    m = blank(); m[47:49, 25:27] = True; out["2x2"] = m
    m = blank(); m[0:6, 0:9] = True; out["top-left corner"] = m
    m = blank(); m[55:64, 70:80] = True; out["bottom-right corner"] = m
    m = blank(); m[0:64, 74:80] = True; m[30:34, 76:78] = False; out["full-height border strip with hole"] = m
    m = blank(); m[20:27, 0:7] = True; m[23, 3] = False; out["1-px hole at the left border"] = m
    m = blank(); m[40:63, 30:53] = True; m[43:60, 33:50] = False; m[49:54, 39:44] = True
    out["island inside a hole"] = m
    return out


@pytest.mark.parametrize("encoding", ["rle", "polygon"])
def test_shapes_survive_through_ultralytics(tmp_path, encoding):
    """Every instance is exported (none dropped) and ultralytics' reading of it has IoU >= 0.95 with its pixels;
    one-piece shapes (with or without holes, 1-px lines included) come back exactly."""
    import cv2

    h, w = 64, 80
    masks = shapes(h, w)
    (tmp_path / "data").mkdir()
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(tmp_path / "data/x.png")
    anns = []
    for i, m in enumerate(masks.values()):
        if encoding == "rle":
            seg = rle(m)
        else:  # COCO polygons of the outer outlines; the truth is then what pycocotools makes of them
            contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            seg = [(c.reshape(-1, 2) + 0.5).reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]
            if not seg:
                continue
        anns.append({"id": i + 1, "image_id": 1, "category_id": 1, "segmentation": seg, "area": float(m.sum()),
                     "bbox": [0, 0, 1, 1], "iscrowd": 0, "name": list(masks)[i]})
    (tmp_path / "ds.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "x.png", "height": h,
                                                              "width": w}],
                                                  "categories": [{"id": 1, "name": "thing"}], "annotations": anns}))
    export_yolo_seg(tmp_path / "ds.json", tmp_path / "data", tmp_path / "yolo")
    [label] = ultralytics_labels(tmp_path / "yolo/images/train", {0: "thing"}).values()
    assert len(label["segments"]) == len(anns)  # no instance lost, on the way out or in ultralytics' checks
    for ann, xy in zip(anns, label["segments"]):
        truth = coco_truth(ann, h, w)
        got = raster(xy, h, w)
        if not truth.any():  # a line drawn as a polygon: pycocotools gives it no pixel, ultralytics draws it
            truth = polygon2mask((h, w), [np.array(ann["segmentation"][0])], color=1).astype(bool)
        parts = cv2.connectedComponents(truth.astype(np.uint8), connectivity=8)[0] - 1
        assert iou(got, truth) >= (1.0 if parts == 1 else 0.95), (ann["name"], iou(got, truth))


@pytest.mark.parametrize("max_tree_parts", [1000, 2])  # 2: the chain used for masks with very many parts
def test_mask_to_polygon_random_masks(monkeypatch, max_tree_parts):
    """Random masks: ultralytics' polygon2mask of the polygon covers every mask pixel; a one-piece mask (any
    number of holes) comes back exactly; an empty mask gives None."""
    import cv2

    import xpaste.ops.polygons as polygons  # mask_to_polygon's home (re-exported by yolo_export)

    monkeypatch.setattr(polygons, "MAX_TREE_PARTS", max_tree_parts)

    rng = np.random.default_rng(7)
    exact = 0
    for t in range(150):
        h, w = (int(v) for v in rng.integers(6, 60, 2))
        m = np.zeros((h, w), np.uint8)
        for _ in range(int(rng.integers(1, 5))):
            cv2.circle(m, (int(rng.integers(0, w)), int(rng.integers(0, h))), int(rng.integers(0, 14)), 1, -1)
        for _ in range(int(rng.integers(0, 5))):
            cv2.circle(m, (int(rng.integers(0, w)), int(rng.integers(0, h))), int(rng.integers(0, 5)), 0, -1)
        if t % 4 == 0:
            m = (rng.random((h, w)) < 0.4).astype(np.uint8)  # speckle: many parts and holes
        truth = m.astype(bool)
        poly = mask_to_polygon(truth)
        if not truth.any():
            assert poly is None
            continue
        assert poly.ndim == 2 and poly.shape[1] == 2 and len(poly) >= 3
        got = polygon2mask((h, w), [poly.reshape(-1)], color=1).astype(bool)
        assert not (truth & ~got).any(), t
        if cv2.connectedComponents(m, connectivity=8)[0] == 2 and max_tree_parts > 2:  # tree bridges: exact
            assert np.array_equal(got, truth), t
            exact += 1
    assert exact > 50 or max_tree_parts == 2  # the exactness branch really ran


def test_skips_are_counted_by_reason(tmp_path, capsys):
    h, w = 20, 20
    (tmp_path / "data").mkdir()
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(tmp_path / "data/x.png")
    sq = np.zeros((h, w), bool)
    sq[2:8, 2:8] = True
    anns = [{"id": 1, "segmentation": rle(sq), "iscrowd": 0},
            {"id": 2, "segmentation": rle(sq), "iscrowd": 1},
            {"id": 3, "segmentation": [], "iscrowd": 0},
            {"id": 4, "segmentation": rle(np.zeros((h, w), bool)), "iscrowd": 0}]
    for a in anns:
        a.update(image_id=1, category_id=1, area=36.0, bbox=[2, 2, 6, 6])
    (tmp_path / "ds.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "x.png", "height": h,
                                                              "width": w}],
                                                  "categories": [{"id": 1, "name": "t"}], "annotations": anns}))
    export_yolo_seg(tmp_path / "ds.json", tmp_path / "data", tmp_path / "yolo")
    out = capsys.readouterr().out
    assert "1 instances written" in out and "skipped 3 annotations" in out
    assert "1 crowd" in out and "1 empty mask" in out and "1 no usable segmentation" in out


def test_image_size_checked_as_ultralytics_reads_it(tmp_path):
    """A JPEG with EXIF orientation 6 (stored 60x40, displayed 40x60): the dataset must give the displayed
    size, which is what ultralytics' loader reports (its shape), else the export is refused in one line."""
    from PIL import ImageOps

    (tmp_path / "data").mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(tmp_path / "data/r.jpg", exif=exif)
    shown = ImageOps.exif_transpose(Image.open(tmp_path / "data/r.jpg")).size  # PIL: (40, 60) as displayed
    sq = np.zeros((shown[1], shown[0]), bool)
    sq[5:20, 5:30] = True

    def export(w, h, out):
        doc = {"images": [{"id": 1, "file_name": "r.jpg", "width": w, "height": h}],
               "categories": [{"id": 1, "name": "t"}],
               "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": rle(sq), "area": 375.0,
                                "bbox": [5, 5, 25, 15], "iscrowd": 0}]}
        (tmp_path / "ds.json").write_text(json.dumps(doc))
        return export_yolo_seg(tmp_path / "ds.json", tmp_path / "data", tmp_path / out)

    with pytest.raises(XPasteError, match="as displayed"):
        export(60, 40, "stored")  # the stored size: the label would be stretched onto the upright image
    assert not (tmp_path / "stored").exists()
    export(*shown, "shown")
    [label] = ultralytics_labels(tmp_path / "shown/images/train", {0: "t"}).values()
    assert tuple(label["shape"]) == (shown[1], shown[0])
    assert iou(raster(label["segments"][0], shown[1], shown[0]), sq) == 1.0


def test_duplicate_rows_ultralytics_drops_are_announced(tmp_path, capsys):
    """Two identical instances: ultralytics keeps one (its rule), while a different shape with the same box
    stays; the summary announces exactly what ultralytics drops."""
    h, w = 20, 20
    (tmp_path / "data").mkdir()
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(tmp_path / "data/x.png")
    a = np.zeros((h, w), bool)
    a[2:10, 2:10] = True
    b = a.copy()
    b[5, 5] = False  # another object, same box
    anns = [{"id": i + 1, "image_id": 1, "category_id": 1, "segmentation": rle(m), "area": float(m.sum()),
             "bbox": [2, 2, 8, 8], "iscrowd": 0} for i, m in enumerate([a, b, a])]
    (tmp_path / "ds.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "x.png", "height": h,
                                                              "width": w}],
                                                  "categories": [{"id": 1, "name": "t"}], "annotations": anns}))
    export_yolo_seg(tmp_path / "ds.json", tmp_path / "data", tmp_path / "yolo")
    [label] = ultralytics_labels(tmp_path / "yolo/images/train", {0: "t"}).values()
    kept = len(label["segments"])  # what ultralytics itself keeps of the 3 rows
    assert kept == 2
    assert f"note: {3 - kept} instances repeat another of their image exactly" in capsys.readouterr().out


# ----------------------------------------------------------------------------- resume after a fault
def files_of(out: Path) -> dict[str, bytes]:
    """Every file of an export (data.yaml without its absolute `path`), for byte-for-byte comparison."""
    found = {}
    for p in sorted(out.rglob("*")):
        if p.is_file():
            rel = str(p.relative_to(out))
            data = yaml.safe_load(p.read_bytes()) if p.name == "data.yaml" else p.read_bytes()
            if p.name == "data.yaml":
                data.pop("path")
            found[rel] = data
    return found


@pytest.mark.parametrize("stop_after", [0, 1, 3])
def test_an_interrupted_export_resumes_to_the_uninterrupted_files(tmp_path, monkeypatch, stop_after):
    import xpaste.integrations.yolo_export as yolo_export

    js, images = write_dataset(tmp_path / "coco", n_images=5)
    export_yolo_seg(js, images, tmp_path / "reference", val_fraction=0.4, seed=2)
    reference = files_of(tmp_path / "reference")
    original, calls = yolo_export.write_bytes_atomic, []

    def interrupted(path, data, durable=True):
        if Path(path).suffix == ".txt":
            calls.append(path)
            if len(calls) > stop_after:
                raise KeyboardInterrupt  # Ctrl-C after `stop_after` label files
        original(path, data, durable)

    monkeypatch.setattr(yolo_export, "write_bytes_atomic", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_yolo_seg(js, images, tmp_path / "out", val_fraction=0.4, seed=2)
    monkeypatch.setattr(yolo_export, "write_bytes_atomic", original)
    assert not (tmp_path / "out" / "data.yaml").exists()
    with pytest.raises(XPasteError, match="--fresh"):  # other settings: not mixed in
        export_yolo_seg(js, images, tmp_path / "out", val_fraction=0.4, seed=3)
    export_yolo_seg(js, images, tmp_path / "out", val_fraction=0.4, seed=2)  # the same command: resumes
    assert files_of(tmp_path / "out") == reference
    export_yolo_seg(js, images, tmp_path / "out", val_fraction=0.4, seed=2)  # and once more: nothing changes
    assert files_of(tmp_path / "out") == reference


def test_a_refused_rerun_names_the_command_that_replaces_it(tmp_path, capsys):
    import shlex

    from xpaste.cli import main

    js, images = write_dataset(tmp_path / "coco", n_images=3)
    out = tmp_path / "y o"
    assert main(["export-yolo", "--dataset", str(js), "--images", str(images), "--out", str(out)]) == 0
    args = ["export-yolo", "--dataset", str(js), "--images", str(images), "--out", str(out), "--seed", "4",
            "--val-fraction", "0.34"]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "other settings" in err
    hinted = shlex.split(err.split("replace them")[1].split(": ", 1)[1].rstrip(")"))
    assert hinted[0] == "xpaste" and hinted[-1] == "--fresh"
    assert main(hinted[1:]) == 0  # the hint is a command that runs
    export_yolo_seg(js, images, tmp_path / "reference", val_fraction=0.34, seed=4)
    assert files_of(out) == files_of(tmp_path / "reference")


def test_a_full_disk_names_the_destination_and_a_rerun_completes(tmp_path, capsys):
    """On a 600 KiB tmpfs the copies fail with ENOSPC: the one line names the file being written; after space is
    made, the same command completes the export, byte for byte the uninterrupted one."""
    import subprocess

    from xpaste.cli import main

    js, images = write_dataset(tmp_path / "coco", n_images=6, size=(240, 320))
    assert sum(p.stat().st_size for p in images.rglob("*.*")) > 900_000
    export_yolo_seg(js, images, tmp_path / "reference")
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(small)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root)")
    try:
        args = ["export-yolo", "--dataset", str(js), "--images", str(images), "--out", str(small / "yolo")]
        capsys.readouterr()
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "No space left on device" in err and "Traceback" not in err, err
        named = err.split("xpaste: error: ", 1)[1].split(": No space")[0]
        assert named.startswith(str(small / "yolo")) and str(images) not in err, err
        assert not list((small / "yolo").rglob(".*.tmp"))  # nothing half-written left behind
        assert subprocess.run(["mount", "-o", "remount,size=8m", str(small)]).returncode == 0
        assert main(args) == 0
        assert files_of(small / "yolo") == files_of(tmp_path / "reference")
    finally:
        subprocess.run(["umount", str(small)])
