"""EXIF orientation through import-coco and augment: annotations refer to the displayed image.

A phone photo is stored rotated with an EXIF orientation tag; the annotation was drawn on the displayed image
(what labelling tools, detectron2, ultralytics and OpenCV show). The right pixels under the annotation come
from PIL's `ImageOps.exif_transpose` of the file, not from xpaste.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageOps
from pycocotools import mask as mask_utils

from xpaste.cli import main

DH, DW = 40, 60  # displayed height, width
RED, BLUE = (255, 0, 0), (0, 0, 255)
# display = f(stored): the stored array is the inverse transform of the displayed one
_STORED = {1: lambda a: a, 3: lambda a: a[::-1, ::-1], 6: lambda a: np.rot90(a, 1), 8: lambda a: np.rot90(a, -1),
           2: lambda a: a[:, ::-1], 5: lambda a: np.rot90(a[:, ::-1], 1)}


def _write(tmp_path, orientation: int, json_size: str = "displayed"):
    disp = np.zeros((DH, DW, 3), np.uint8)
    disp[:] = BLUE
    disp[5:25, 8:30] = RED  # the object, 22 x 20, off-centre so every orientation moves it
    images = tmp_path / "images"
    images.mkdir()
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = images / "phone.jpg"
    Image.fromarray(np.ascontiguousarray(_STORED[orientation](disp))).save(path, exif=exif, quality=100)
    with Image.open(path) as im:  # independent check of the fixture itself
        shown = np.asarray(ImageOps.exif_transpose(im).convert("RGB")).astype(int)
    assert shown.shape == (DH, DW, 3) and (shown[7:23, 10:28].mean((0, 1)) > [200, -1, -1]).all()
    h, w = (DH, DW) if json_size == "displayed" else (shown.shape[1], shown.shape[0]) if orientation >= 5 else (DH, DW)
    poly = [[8, 5, 30, 5, 30, 25, 8, 25]]
    doc = {"images": [{"id": 1, "file_name": "phone.jpg", "height": h, "width": w}],
           "categories": [{"id": 1, "name": "red"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": poly,
                            "bbox": [8, 5, 22, 20], "area": 440, "iscrowd": 0}]}
    ann = tmp_path / "ds.json"
    ann.write_text(json.dumps(doc))
    return ann, images, shown


@pytest.mark.parametrize("orientation", [1, 2, 3, 5, 6, 8])
def test_cutout_and_augmented_pixels_are_the_object(tmp_path, orientation):
    from xpaste import InstancePool

    ann, images, shown = _write(tmp_path, orientation)
    pool = tmp_path / "pool"
    assert main(["pool", "import-coco", str(ann), "--images", str(images), "--out", str(pool), "--min-area", "10"]) == 0
    cut = InstancePool.open(pool).rgba(0)
    inside = cut[..., :3][cut[..., 3] > 0].astype(int)
    assert inside.mean(0)[0] > 200 and inside.mean(0)[2] < 60  # red, as the displayed image has it
    out = tmp_path / "aug"
    assert main(["augment", "--dataset", str(ann), "--images", str(images), "--pool", str(pool), "--out", str(out),
                 "--num-paste", "0"]) == 0
    doc = json.loads((out / "annotations.json").read_text())
    rec = doc["images"][0]
    assert (rec["height"], rec["width"]) == (DH, DW)
    seg = dict(doc["annotations"][0]["segmentation"])
    m = mask_utils.decode({"size": seg["size"], "counts": seg["counts"].encode()}).astype(bool)
    with Image.open(out / "images" / rec["file_name"]) as im:
        # written upright: no orientation tag (or 1), and the stored pixels are the displayed ones
        assert im.getexif().get(0x0112, 1) == 1
        written = np.asarray(im.convert("RGB")).astype(int)
    assert written.shape == (DH, DW, 3)
    inner = m.copy()  # away from the edges, where JPEG's chroma subsampling blends red and blue
    inner[1:] &= m[:-1]
    inner[:-1] &= m[1:]
    inner[:, 1:] &= m[:, :-1]
    inner[:, :-1] &= m[:, 1:]
    inner[2:] &= m[:-2]
    inner[:, 2:] &= m[:, :-2]
    assert np.abs(written[inner].mean(0) - shown[inner].mean(0)).max() < 8  # the object under its annotation
    assert written[inner].mean(0)[0] > 200 and written[inner].mean(0)[2] < 60


@pytest.mark.parametrize("orientation", [6, 8])
def test_json_with_the_stored_size_is_refused_with_an_exif_hint(tmp_path, orientation, capsys):
    ann, images, _ = _write(tmp_path, orientation, json_size="stored")
    assert main(["pool", "import-coco", str(ann), "--images", str(images), "--out", str(tmp_path / "pool"),
                 "--min-area", "10"]) == 2  # its only image refused: nothing imported, one line, no empty pool
    captured = capsys.readouterr()
    assert "dataset says" in captured.out + captured.err
    assert not (tmp_path / "pool" / "pool.json").exists()
    from xpaste.data.coco import load_coco, load_sample
    from xpaste.errors import XPasteError

    with pytest.raises(XPasteError, match="as displayed") as info:
        load_sample(load_coco(ann), 1, images)
    assert f"EXIF orientation {orientation}" in info.value.hint
