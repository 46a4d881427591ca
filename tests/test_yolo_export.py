"""YOLO-seg export (`xpaste export-yolo`, `xpaste.integrations.yolo_export`) checked with ultralytics' own functions."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from coco_fixtures import write_dataset

pytest.importorskip("ultralytics")

from typer.testing import CliRunner  # noqa: E402

import xpaste.commands.export  # noqa: E402,F401  (registers export-yolo on the app)
from xpaste.commands.app import app  # noqa: E402
from xpaste.data.coco import decode_annotation_mask, load_coco  # noqa: E402
from xpaste.errors import XPasteError  # noqa: E402
from xpaste.integrations.yolo_export import export_yolo_seg, mask_to_polygon  # noqa: E402
from xpaste.ops.masks import polygons_to_mask, rle_encode  # noqa: E402


def read_labels(path: Path) -> list[tuple[int, np.ndarray]]:
    rows = []
    for line in path.read_text().splitlines():
        values = line.split()
        rows.append((int(values[0]), np.array(values[1:], np.float64).reshape(-1, 2)))
    return rows


# ----------------------------------------------------------------------------- exporter
def test_export_layout_classes_and_roundtrip(tmp_path):
    js, images = write_dataset(tmp_path / "coco", n_images=4)
    data_yaml = export_yolo_seg(js, images, tmp_path / "yolo")
    data = yaml.safe_load(data_yaml.read_text())
    assert data["names"] == {0: "cup", 1: "cat/dog", 2: "fire_hydrant", 3: "ünï"}
    assert data["train"] == data["val"] == "images/train" and Path(data["path"]) == (tmp_path / "yolo").resolve()
    dataset = load_coco(js)
    ious = []
    for info in dataset.images:
        h, w = info["height"], info["width"]
        image = tmp_path / "yolo/images/train" / info["file_name"]
        assert image.is_file() and image.read_bytes() == (images / info["file_name"]).read_bytes()
        rows = read_labels((tmp_path / "yolo/labels/train" / info["file_name"]).with_suffix(".txt"))
        anns = [a for a in dataset.annotations_for(info["id"]) if not a["iscrowd"]]  # crowd regions skipped
        assert [c for c, _ in rows] == [a["category_id"] - 1 for a in anns]  # ids 1..4 -> 0..3, in order
        for (_, xy), ann in zip(rows, anns):
            assert len(xy) >= 3 and xy.min() >= 0 and xy.max() <= 1
            back = polygons_to_mask([(xy * [w, h]).reshape(-1).tolist()], h, w)
            truth = decode_annotation_mask(ann, h, w)
            ious.append((back & truth).sum() / (back | truth).sum())
    assert len(ious) == 10 and min(ious) > 0.8, ious  # polygon, compressed and uncompressed RLE sources


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
    (tmp_path / "im.png").write_bytes(b"")
    from PIL import Image

    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(tmp_path / "im.png")
    polys = [[5, 5, 20, 5, 20, 15, 5, 15], [35, 25, 55, 25, 55, 35, 35, 35]]
    doc = {"images": [{"id": 1, "file_name": "im.png", "height": h, "width": w}],
           "categories": [{"id": 7, "name": "thing"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "segmentation": rle_encode(two),
                            "area": int(two.sum()), "bbox": [5, 5, 50, 30], "iscrowd": 0},
                           {"id": 2, "image_id": 1, "category_id": 7, "segmentation": polys,
                            "area": 350.0, "bbox": [5, 5, 50, 30], "iscrowd": 0}]}
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    export_yolo_seg(tmp_path / "ann.json", tmp_path, tmp_path / "out")
    rows = read_labels(tmp_path / "out/labels/train/im.txt")
    assert len(rows) == 2 and {c for c, _ in rows} == {0}  # one line per instance, parts joined
    for _, xy in rows:
        back = polygons_to_mask([(xy * [w, h]).reshape(-1).tolist()], h, w)
        assert (back & two).sum() / (back | two).sum() > 0.8
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
    with pytest.raises(XPasteError, match="overwrite"):
        export_yolo_seg(js, images, tmp_path / "a")
    export_yolo_seg(js, images, tmp_path / "a", overwrite=True)
    assert not (tmp_path / "a/images/val").exists()

    result = CliRunner().invoke(app, ["export-yolo", "--dataset", str(js), "--images", str(images),
                                      "--out", str(tmp_path / "b"), "--val-fraction", "0.5", "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "b/images/val").rglob("*.*")) == val  # same seed, same split
    assert "data.yaml" in result.output
