"""COCO / LVIS loading, validation, mask decoding and image reading (xpaste.data.coco)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from pycocotools import mask as mask_utils

from xpaste.data.coco import (
    CocoDataset,
    annotation_from_mask,
    dataset_to_json,
    decode_annotation_mask,
    load_coco,
    load_sample,
    read_image_rgb,
)
from xpaste.errors import XPasteError

H, W = 20, 30


def uncompressed_rle(mask: np.ndarray) -> dict:
    """Column-major run lengths starting with a run of zeros, as COCO's crowd annotations store them."""
    flat = mask.astype(np.uint8).flatten(order="F")
    counts, value, run = [], 0, 0
    for v in flat:
        if v == value:
            run += 1
        else:
            counts.append(run)
            value, run = v, 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": [int(c) for c in counts]}


def make_mask(x1, y1, x2, y2, h=H, w=W) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y1:y2, x1:x2] = True
    return m


def base_dataset(lvis: bool = False) -> dict:
    """Three annotations on one 20x30 image (polygon, compressed RLE, uncompressed crowd RLE), one on a second."""
    rle = mask_utils.encode(np.asfortranarray(make_mask(10, 2, 14, 9).astype(np.uint8)))
    images = [
        {"id": 1, "file_name": "a.png", "height": H, "width": W, "license": 3},
        {"id": 2, "file_name": "sub/b.png", "height": H, "width": W},
        {"id": 3, "file_name": "c.png", "height": H, "width": W},
    ]
    cats = [{"id": 5, "name": "cat"}, {"id": 7, "name": "dog", "supercategory": "animal"}]
    if lvis:
        images[0].update(neg_category_ids=[7], not_exhaustive_category_ids=[])
        cats[0].update(frequency="r", synonyms=["cat", "kitty"], **{"def": "a feline"}, image_count=1)
        cats[1].update(frequency="f", synonyms=["dog"], **{"def": "a canine"}, image_count=2)
    anns = [
        {"id": 11, "image_id": 1, "category_id": 5, "iscrowd": 0, "bbox": [2, 3, 5, 4], "area": 20,
         "segmentation": [[2, 3, 7, 3, 7, 7, 2, 7]]},
        {"id": 12, "image_id": 1, "category_id": 7, "iscrowd": 0, "bbox": [10, 2, 4, 7], "area": 28,
         "segmentation": {"size": [H, W], "counts": rle["counts"].decode()}},
        {"id": 13, "image_id": 1, "category_id": 7, "iscrowd": 1, "bbox": [20, 10, 6, 5], "area": 30,
         "segmentation": uncompressed_rle(make_mask(20, 10, 26, 15))},
        {"id": 14, "image_id": 2, "category_id": 5, "iscrowd": 0, "bbox": [0, 0, 3, 3], "area": 9,
         "segmentation": [[0, 0, 3, 0, 3, 3, 0, 3]]},
    ]
    return {"info": {"description": "test", "year": 2024}, "licenses": [{"id": 3, "name": "x"}],
            "images": images, "annotations": anns, "categories": cats}


def write_dataset(tmp_path: Path, obj, name="ann.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(obj) if not isinstance(obj, str) else obj)
    return path


def write_images(root: Path, obj: dict) -> None:
    rng = np.random.default_rng(0)
    for img in obj["images"]:
        p = root / img["file_name"]
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (img["height"], img["width"], 3), dtype=np.uint8)).save(p)


@pytest.fixture
def coco(tmp_path):
    obj = base_dataset()
    images = tmp_path / "images"
    write_images(images, obj)
    return load_coco(write_dataset(tmp_path, obj)), images, obj


# ------------------------------------------------------------------------------------------ loading
def test_load_preserves_everything(tmp_path):
    obj = base_dataset(lvis=True)
    ds = load_coco(write_dataset(tmp_path, obj))
    assert ds.is_lvis
    assert ds.header == {"info": obj["info"], "licenses": obj["licenses"]}
    assert dataset_to_json(ds) == obj
    assert ds.images[0]["neg_category_ids"] == [7]
    assert ds.category_by_id[5]["synonyms"] == ["cat", "kitty"]
    assert ds.category_by_id[7]["def"] == "a canine"
    # json round trip keeps the LVIS fields bit for bit
    assert json.loads(json.dumps(dataset_to_json(ds))) == obj


def test_lookups(coco):
    ds, _, _ = coco
    assert not ds.is_lvis
    assert set(ds.image_by_id) == {1, 2, 3}
    assert [a["id"] for a in ds.annotations_for(1)] == [11, 12, 13]
    assert ds.annotations_for(3) == []
    assert ds.annotations_for(999) == []


def test_empty_dataset_is_valid(tmp_path):
    ds = load_coco(write_dataset(tmp_path, {"images": [], "annotations": [], "categories": []}))
    assert ds.images == [] and ds.header == {}
    assert ds.annotations_for(1) == []


def _break(mutate):
    obj = base_dataset()
    mutate(obj)
    return obj


INVALID = {
    "top-level list": ([1, 2], "expected an object"),
    "missing images": (_break(lambda o: o.pop("images")), "'images'"),
    "missing categories": (_break(lambda o: o.pop("categories")), "'categories'"),
    "annotations not list": (_break(lambda o: o.update(annotations={})), "expected a list"),
    "duplicate image id": (_break(lambda o: o["images"].append(dict(o["images"][0]))), "duplicate image id 1"),
    "duplicate category id": (_break(lambda o: o["categories"].append({"id": 5, "name": "x"})),
                              "duplicate category id 5"),
    "duplicate annotation id": (_break(lambda o: o["annotations"].append(dict(o["annotations"][0]))),
                                "duplicate annotation id 11"),
    "unknown category": (_break(lambda o: o["annotations"][1].update(category_id=99)),
                         "annotation id 12 refers to unknown category id 99"),
    "unknown image": (_break(lambda o: o["annotations"][3].update(image_id=42)),
                      "annotation id 14 refers to unknown image id 42"),
    "image without file_name": (_break(lambda o: o["images"][1].pop("file_name")), "'file_name'"),
    "zero height": (_break(lambda o: o["images"][0].update(height=0)), "positive integer"),
    "string image id": (_break(lambda o: o["images"][0].update(id="1")), "expected an integer"),
    "bool category id": (_break(lambda o: o["categories"][0].update(id=True)), "expected an integer"),
    "category without name": (_break(lambda o: o["categories"][0].pop("name")), "'name'"),
    "annotation without image_id": (_break(lambda o: o["annotations"][2].pop("image_id")),
                                    "annotation #2 (id=13) has no 'image_id'"),
    "float category_id": (_break(lambda o: o["annotations"][0].update(category_id=5.0)), "'category_id'=5.0"),
    "annotation not object": (_break(lambda o: o["annotations"].append([1, 2])), "annotation #4"),
}


@pytest.mark.parametrize("name", sorted(INVALID))
def test_validation_errors_name_file_and_culprit(tmp_path, name):
    obj, expected = INVALID[name]
    path = write_dataset(tmp_path, obj)
    with pytest.raises(XPasteError) as info:
        load_coco(path)
    assert str(path) in str(info.value)
    assert expected in str(info.value)


def test_malformed_json(tmp_path):
    path = write_dataset(tmp_path, '{"images": [', name="broken.json")
    with pytest.raises(XPasteError, match="malformed json") as info:
        load_coco(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(XPasteError, match="not found"):
        load_coco(tmp_path / "nope.json")


# ------------------------------------------------------------------------------------------ masks
def test_all_formats_agree_with_pycocotools(tmp_path):
    from pycocotools.coco import COCO

    obj = base_dataset()
    ds = load_coco(write_dataset(tmp_path, obj))
    api = COCO()
    api.dataset = json.loads(json.dumps(obj))
    api.createIndex()
    for ann in ds.annotations:
        ours = decode_annotation_mask(ann, H, W)
        assert ours.dtype == bool and ours.shape == (H, W)
        np.testing.assert_array_equal(ours, api.annToMask(api.anns[ann["id"]]).astype(bool))


def test_compressed_counts_as_bytes():
    m = make_mask(3, 4, 9, 8)
    rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    out = decode_annotation_mask({"id": 1, "segmentation": {"size": [H, W], "counts": rle["counts"]}}, H, W)
    np.testing.assert_array_equal(out, m)


def test_polygon_partly_outside_is_clipped():
    ann = {"id": 3, "segmentation": [[-10, -10, 5, -10, 5, 5, -10, 5]]}
    out = decode_annotation_mask(ann, H, W)
    assert out.shape == (H, W) and out[:4, :4].all() and not out[10:, 10:].any()


@pytest.mark.parametrize("seg, match", [
    (None, "no segmentation"),
    ([], "no segmentation"),
    ([[1, 1, 5, 5]], "at least 6"),
    ([[1, 1, 5, 5, 7]], "even number"),
    ([[1, 1, 5, "x", 7, 7]], "invalid coordinate"),
    ([[1, 1, 5, 1, 1e12, 7]], "invalid coordinate"),
    ({"size": [H + 1, W], "counts": [H * W + W]}, "differs from the image size"),
    ({"size": [H, W], "counts": [5, 7]}, "cover 12 pixels"),
    ({"size": [H, W], "counts": [H * W + 2, -2]}, "non-negative"),
    ({"size": [H, W], "counts": "52"}, "cover"),
    ({"size": [H, W], "counts": "5\x7f"}, "invalid character"),
    ({"size": [H, W]}, "counts"),
    ("polygon", "expected list or dict"),
])
def test_malformed_segmentation_raises_value_error_with_id(seg, match):
    ann = {"id": 4242, "bbox": [0, 0, 3, 3]}
    if seg is not None:
        ann["segmentation"] = seg
    with pytest.raises(ValueError, match=match) as info:
        decode_annotation_mask(ann, H, W)
    assert "4242" in str(info.value)


def test_annotation_from_mask_fields_and_invariants():
    m = make_mask(4, 6, 11, 9)
    m[7, 20] = True
    ann = annotation_from_mask(m, category_id=7, ann_id=100, image_id=1, iscrowd=True, score=0.5, source="pasted")
    assert ann["bbox"] == [4, 6, 17, 3]  # exclusive right edge: columns 4..20 -> w = 17
    assert ann["area"] == int(m.sum()) == 22
    assert ann["iscrowd"] == 1 and ann["score"] == 0.5 and ann["source"] == "pasted"
    assert isinstance(ann["segmentation"]["counts"], str)
    json.dumps(ann)  # json-ready
    rle = {"size": ann["segmentation"]["size"], "counts": ann["segmentation"]["counts"].encode()}
    assert mask_utils.toBbox(rle).tolist() == ann["bbox"]
    assert int(mask_utils.area(rle)) == ann["area"]
    with pytest.raises(ValueError, match="empty"):
        annotation_from_mask(np.zeros((4, 4), bool), 1, 1, 1)
    with pytest.raises(TypeError, match="area"):
        annotation_from_mask(m, 1, 1, 1, area=3)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 24), st.integers(1, 24), st.integers(0, 2**32 - 1), st.floats(0.05, 0.95))
def test_mask_round_trip_property(h, w, seed, p):
    rng = np.random.default_rng(seed)
    m = rng.random((h, w)) < p
    if not m.any():
        m[h // 2, w // 2] = True
    ann = annotation_from_mask(m, 1, 1, 1)
    np.testing.assert_array_equal(decode_annotation_mask(ann, h, w), m)
    unc = dict(ann, segmentation=uncompressed_rle(m))
    np.testing.assert_array_equal(decode_annotation_mask(unc, h, w), m)
    rows, cols = np.nonzero(m)
    assert ann["bbox"] == [cols.min(), rows.min(), cols.max() + 1 - cols.min(), rows.max() + 1 - rows.min()]


# ------------------------------------------------------------------------------------------ samples
def test_load_sample_targets(coco):
    ds, images, _ = coco
    s = load_sample(ds, 1, images)
    assert s.image.shape == (H, W, 3) and s.image.dtype == np.uint8
    assert s.meta["image_id"] == 1 and s.meta["file_name"] == "a.png"
    assert (s.meta["height"], s.meta["width"]) == (H, W)
    assert s.meta["skipped_annotations"] == []
    t = s.targets
    assert t.labels.tolist() == [5, 7, 7]
    assert t.extra["ann_id"].tolist() == [11, 12, 13] and t.extra["ann_id"].dtype == np.int64
    assert t.extra["iscrowd"].tolist() == [False, False, True]  # crowd kept, flagged
    np.testing.assert_array_equal(t.masks[1], make_mask(10, 2, 14, 9))
    np.testing.assert_array_equal(t.masks[2], make_mask(20, 10, 26, 15))
    assert t.boxes[1].tolist() == [10, 2, 14, 9]  # exclusive x2/y2
    assert t.boxes[2].tolist() == [20, 10, 26, 15]
    for box, m in zip(t.boxes, t.masks):
        rows, cols = np.nonzero(m)
        assert box.tolist() == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
    # the stored pixels come back unchanged
    np.testing.assert_array_equal(s.image, np.asarray(Image.open(images / "a.png")))


def test_load_sample_subdir_and_no_annotations(coco):
    ds, images, _ = coco
    assert len(load_sample(ds, 2, images).targets) == 1
    s = load_sample(ds, 3, images)
    assert len(s.targets) == 0 and s.targets.image_size == (H, W)
    assert s.targets.extra["iscrowd"].dtype == bool and s.targets.extra["ann_id"].dtype == np.int64


def test_broken_annotations_are_skipped_and_listed(tmp_path):
    obj = base_dataset()
    obj["annotations"] += [
        {"id": 20, "image_id": 1, "category_id": 5, "segmentation": [[1, 2, 3, 4]]},
        {"id": 21, "image_id": 1, "category_id": 5, "segmentation": [[100, 100, 110, 100, 110, 110]]},
        {"id": 22, "image_id": 1, "category_id": 5, "segmentation": {"size": [5, 5], "counts": [25]}},
        {"id": 23, "image_id": 1, "category_id": 5},
    ]
    write_images(tmp_path / "im", obj)
    s = load_sample(load_coco(write_dataset(tmp_path, obj)), 1, tmp_path / "im")
    assert s.targets.extra["ann_id"].tolist() == [11, 12, 13]
    skipped = dict(s.meta["skipped_annotations"])
    assert sorted(skipped) == [20, 21, 22, 23]
    assert skipped[21].startswith("out_of_image: ")
    assert skipped[20].startswith("degenerate_polygon: ") and "at least 6" in skipped[20]
    assert skipped[22].startswith("size_mismatch: ") and skipped[23].startswith("no_mask: ")


def test_unknown_image_id(coco):
    ds, images, _ = coco
    with pytest.raises(XPasteError, match="image id 77"):
        load_sample(ds, 77, images)


def _image_case(tmp_path, name, payload):
    obj = base_dataset()
    write_images(tmp_path / "im", obj)
    target = tmp_path / "im" / "a.png"
    if name == "escape":
        obj["images"][0]["file_name"] = "../x.jpg"
        (tmp_path / "x.jpg").write_bytes(target.read_bytes())
        target = tmp_path / "im"
    elif name == "missing":
        target.unlink()
    elif payload is not None:
        target.write_bytes(payload(target.read_bytes()))
    ds = load_coco(write_dataset(tmp_path, obj))
    return ds, tmp_path / "im", target


@pytest.mark.parametrize("name, payload, match", [
    ("zero-byte", lambda b: b"", "cannot decode image"),
    ("corrupt", lambda b: b"\x89PNG\r\n\x1a\n" + b"garbage" * 20, "cannot decode image"),
    ("truncated", lambda b: b[: len(b) // 2], "cannot decode image"),
    ("wrong size", lambda b: _png_bytes(np.zeros((H + 1, W, 3), np.uint8)), f"{W}x{H + 1}.*{W}x{H}"),
    ("missing", None, "not found"),
    ("escape", None, "outside"),
])
def test_image_errors_name_the_file(tmp_path, name, payload, match):
    ds, images, target = _image_case(tmp_path, name, payload)
    with pytest.raises(XPasteError, match=match) as info:
        load_sample(ds, 1, images)
    assert str(target.resolve()) in str(info.value) or str(target) in str(info.value)


def _png_bytes(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


# ------------------------------------------------------------------------------------------ image modes
def _save(tmp_path, im: Image.Image, name: str) -> Path:
    p = tmp_path / name
    im.save(p)
    return p


def test_image_modes_decode_to_rgb(tmp_path):
    gray = np.arange(H * W, dtype=np.uint8).reshape(H, W)
    rgb = np.random.default_rng(1).integers(0, 255, (H, W, 3), dtype=np.uint8)
    cases = {
        "gray.png": Image.fromarray(gray, "L"),
        "bw.png": Image.fromarray(gray > 100),
        "la.png": Image.fromarray(np.stack([gray, gray], -1), "LA"),
        "palette.png": Image.fromarray(rgb).quantize(16),
        "rgba.png": Image.fromarray(np.dstack([rgb, np.full((H, W), 7, np.uint8)]), "RGBA"),
        "cmyk.jpg": Image.fromarray(rgb).convert("CMYK"),
        "cmyk.tif": Image.fromarray(rgb).convert("CMYK"),
    }
    pal = Image.fromarray(rgb).quantize(16)
    pal.info["transparency"] = 0
    cases["palette_transparent.png"] = pal
    out = {}
    for name, im in cases.items():
        arr = read_image_rgb(_save(tmp_path, im, name))
        assert arr.shape == (H, W, 3) and arr.dtype == np.uint8, name
        assert arr.flags.writeable, name
        out[name] = arr
    np.testing.assert_array_equal(out["gray.png"], np.repeat(gray[:, :, None], 3, 2))
    np.testing.assert_array_equal(out["rgba.png"], rgb)  # alpha dropped, colour untouched
    np.testing.assert_array_equal(out["bw.png"][..., 0], np.where(gray > 100, 255, 0))
    np.testing.assert_array_equal(out["palette.png"], np.asarray(Image.fromarray(rgb).quantize(16).convert("RGB")))
    np.testing.assert_array_equal(out["cmyk.tif"], np.asarray(Image.fromarray(rgb).convert("CMYK").convert("RGB")))


def test_16bit_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 257 * 100, 65535], [128, 129, 1000, 30000]], np.uint16)
    p = tmp_path / "g16.png"
    Image.fromarray(values).save(p)
    assert Image.open(p).mode.startswith("I")
    arr = read_image_rgb(p)
    assert arr.shape == (2, 4, 3) and arr.dtype == np.uint8
    np.testing.assert_array_equal(arr[..., 0], np.round(values / 257).astype(np.uint8))
    np.testing.assert_array_equal(arr[..., 0], arr[..., 2])


def test_dataset_direct_construction_is_dataclass():
    ds = CocoDataset(None, {}, [{"id": 1, "file_name": "a", "height": 2, "width": 2}], [], [])
    assert ds.image_by_id[1]["file_name"] == "a" and "images=1" in repr(ds)


def test_lvis_v1_images_without_file_name_use_coco_url(tmp_path):
    """LVIS v1 lists images by coco_url only; the image is found under the COCO root as split/name."""
    import json

    import numpy as np
    from PIL import Image

    from xpaste.data.coco import load_coco, load_sample

    (tmp_path / "train2017").mkdir()
    Image.fromarray(np.zeros((8, 10, 3), np.uint8)).save(tmp_path / "train2017" / "000000391895.jpg")
    doc = {"images": [{"id": 391895, "coco_url": "http://images.cocodataset.org/train2017/000000391895.jpg",
                       "height": 8, "width": 10, "neg_category_ids": [], "not_exhaustive_category_ids": []}],
           "annotations": [], "categories": [{"id": 1, "name": "cup", "frequency": "r"}]}
    path = tmp_path / "lvis_v1_train.json"
    path.write_text(json.dumps(doc))
    dataset = load_coco(path)
    assert dataset.images[0]["file_name"] == "train2017/000000391895.jpg"
    assert load_sample(dataset, 391895, tmp_path).image.shape == (8, 10, 3)
