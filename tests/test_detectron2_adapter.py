"""detectron2 adapter: the dataset-dict conversion and paste, WITHOUT detectron2 (it is not installable here).

The `make_xpaste_mapper` DatasetMapper subclass needs detectron2 and is not exercised by these tests.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest

from xpaste.integrations.detectron2 import (XYWH_ABS, XYXY_ABS, add_xpaste_config, copy_paste_kwargs_from_cfg,
                                            paste_into_dataset_dict, segmentation_to_mask)
from xpaste.ops.masks import polygons_to_mask, rle_decode, rle_encode, tight_box
from xpaste.paste.transform import CopyPaste
from xpaste.pool.store import InstancePool

H, W = 96, 128


def _dataset_dict() -> tuple[np.ndarray, dict, list[np.ndarray]]:
    """A BGR image and annotations in every segmentation / bbox form detectron2 can hand over."""
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    poly = [[10.0, 10.0, 40.0, 12.0, 36.0, 40.0, 12.0, 34.0]]
    m_poly = polygons_to_mask(poly, H, W)
    m_rle = np.zeros((H, W), bool)
    m_rle[50:80, 60:100] = True
    m_unc = np.zeros((H, W), bool)
    m_unc[5:25, 90:120] = True
    m_arr = np.zeros((H, W), bool)
    m_arr[60:90, 10:30] = True
    m_crowd = np.zeros((H, W), bool)
    m_crowd[30:50, 50:80] = True
    # Uncompressed RLE counts (column-major runs starting with zeros), as COCO crowd annotations store them.
    flat = m_unc.T.reshape(-1).astype(np.int8)
    edges = np.concatenate(([0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]))
    counts = np.diff(edges).tolist()
    x0, y0, x1, y1 = tight_box(m_poly)
    annos = [
        {"bbox": [x0, y0, x1 - x0, y1 - y0], "bbox_mode": XYWH_ABS, "segmentation": poly, "category_id": 0,
         "iscrowd": 0, "id": 11},
        {"bbox": [60, 50, 100, 80], "bbox_mode": XYXY_ABS, "segmentation": rle_encode(m_rle), "category_id": 1,
         "iscrowd": 0, "area": 1200.0},
        {"bbox": np.array([90.0, 5.0, 120.0, 25.0]), "bbox_mode": XYXY_ABS,
         "segmentation": {"size": [H, W], "counts": counts}, "category_id": 2},
        {"bbox": [10, 60, 30, 90], "bbox_mode": XYXY_ABS, "segmentation": m_arr.astype(np.uint8), "category_id": 3},
        {"bbox": [50, 30, 80, 50], "bbox_mode": XYXY_ABS, "segmentation": rle_encode(m_crowd), "category_id": 4,
         "iscrowd": 1},
    ]
    return image, {"file_name": "x.jpg", "image_id": 7, "height": H, "width": W, "annotations": annos}, \
        [m_poly, m_rle, m_unc, m_arr, m_crowd]


def _decode(ann: dict) -> np.ndarray:
    segm = ann["segmentation"]
    return segm.astype(bool) if isinstance(segm, np.ndarray) else rle_decode(segm)


def test_segmentation_forms_rasterise_like_pycocotools():
    _, d, masks = _dataset_dict()
    for ann, mask in zip(d["annotations"], masks):
        assert np.array_equal(segmentation_to_mask(ann["segmentation"], H, W), mask)
    # A crop can leave polygons with fewer than 3 points: they cover nothing.
    assert not segmentation_to_mask([[1.0, 2.0, 3.0, 4.0]], H, W).any()


@pytest.mark.parametrize("segmentation", ["rle", "mask"])
def test_paste_writes_consistent_annotations(small_pool, segmentation):
    image, d, masks = _dataset_dict()
    before = copy.deepcopy(d)
    cmap = {k: 10 + k for k in range(1, 6)}  # pool id -> contiguous id
    cp = CopyPaste(small_pool, num_paste=6, uniform_scale=(0.1, 0.25), min_visible_area=50)
    out_image, out = paste_into_dataset_dict(d, image, cp, rng=np.random.default_rng(0),
                                             category_map=cmap, segmentation=segmentation)
    assert out_image.shape == image.shape and out_image.dtype == np.uint8
    annos = out["annotations"]
    pasted = [a for a in annos if a["pasted"]]
    originals = [a for a in annos if not a["pasted"]]
    assert pasted, "nothing was pasted"
    assert out["image_id"] == 7 and out["file_name"] == "x.jpg"
    union = np.zeros((H, W), bool)
    for a in annos:
        assert a["bbox_mode"] == XYXY_ABS
        if segmentation == "rle":
            assert set(a["segmentation"]) == {"size", "counts"} and a["segmentation"]["size"] == [H, W]
        mask = _decode(a)
        assert mask.any()
        assert tuple(a["bbox"]) == tight_box(mask)
    for a in pasted:
        assert a["category_id"] in cmap.values() and a["iscrowd"] == 0
        union |= _decode(a)
    # Originals come back in input order, keep their keys, and lose exactly the pasted pixels.
    by_cat = {a["category_id"]: a for a in originals}
    for ann, mask in zip(d["annotations"], masks):
        if ann["category_id"] in by_cat:
            got = by_cat[ann["category_id"]]
            assert np.array_equal(_decode(got), mask & ~union)
            assert got.get("iscrowd", 0) == ann.get("iscrowd", 0)
    if 0 in by_cat:
        assert by_cat[0]["id"] == 11
    if 1 in by_cat:
        assert by_cat[1]["area"] == float(_decode(by_cat[1]).sum())
    assert [a["category_id"] for a in originals] == sorted(by_cat)  # input order
    # Inputs untouched.
    assert np.array_equal(image, _dataset_dict()[0])
    for a, b in zip(d["annotations"], before["annotations"]):
        assert a.keys() == b.keys() and a["bbox_mode"] == b["bbox_mode"]


def test_crowd_annotation_preserved_when_nothing_pasted(small_pool):
    image, d, _ = _dataset_dict()
    out_image, out = paste_into_dataset_dict(d, image, CopyPaste(small_pool, num_paste=0))
    assert np.array_equal(out_image, image)
    assert [a["iscrowd"] for a in out["annotations"] if "iscrowd" in a] == [0, 0, 1]
    assert [a["category_id"] for a in out["annotations"]] == [0, 1, 2, 3, 4]
    assert not any(a["pasted"] for a in out["annotations"])
    assert out["annotations"][0]["bbox"] == [float(v) for v in tight_box(_dataset_dict()[2][0])]


def _red_pool() -> InstancePool:
    rgba = np.zeros((30, 30, 4), np.uint8)
    rgba[..., 0] = 255  # pure red in RGB
    rgba[..., 3] = 255
    return InstancePool.from_arrays([rgba], [1], {1: "red"})


@pytest.mark.parametrize("image_format, expected", [("BGR", (0, 0, 255)), ("RGB", (255, 0, 0))])
def test_image_format_channel_order(image_format, expected):
    image = np.full((H, W, 3), 40, np.uint8)
    d = {"annotations": []}
    cp = CopyPaste(_red_pool(), num_paste=3, blend="hard", flip_prob=0.0)
    out_image, out = paste_into_dataset_dict(d, image, cp, rng=np.random.default_rng(1), image_format=image_format)
    annos = out["annotations"]
    assert annos and all(a["pasted"] and a["category_id"] == 1 for a in annos)
    union = np.zeros((H, W), bool)
    for a in annos:
        union |= _decode(a)
    assert np.all(out_image[union] == np.array(expected, np.uint8))
    assert np.all(out_image[~union] == 40)


def test_same_rng_same_output(small_pool):
    image, d, _ = _dataset_dict()
    cp = CopyPaste(small_pool, max_paste=8)
    runs = [paste_into_dataset_dict(d, image, cp, rng=np.random.default_rng(seed)) for seed in (5, 5, 6)]
    (img_a, a), (img_b, b), (img_c, c) = runs
    assert np.array_equal(img_a, img_b)
    assert a["annotations"] == b["annotations"]
    assert not (np.array_equal(img_a, img_c) and a["annotations"] == c["annotations"])


def test_present_sampling_uses_pool_ids_through_the_map(small_pool):
    image, d, _ = _dataset_dict()
    d["annotations"] = [a for a in d["annotations"] if a["category_id"] == 2]  # contiguous 2 = pool id 3
    cmap = {k: k - 1 for k in range(1, 6)}
    cp = CopyPaste(small_pool, num_paste=5, sampling="present")
    _, out = paste_into_dataset_dict(d, image, cp, rng=np.random.default_rng(0), category_map=cmap)
    pasted = [a["category_id"] for a in out["annotations"] if a["pasted"]]
    assert pasted and set(pasted) == {2}


def test_unmapped_pool_category_is_an_error(small_pool):
    image, d, _ = _dataset_dict()
    with pytest.raises(KeyError, match="category_map"):
        paste_into_dataset_dict(d, image, CopyPaste(small_pool, num_paste=10), rng=np.random.default_rng(0),
                                category_map={1: 0})


def test_second_paste_keeps_pasted_flags(small_pool):
    image, d, _ = _dataset_dict()
    cp = CopyPaste(small_pool, num_paste=3, uniform_scale=(0.1, 0.2), min_visible_area=1)
    img1, d1 = paste_into_dataset_dict(d, image, cp, rng=np.random.default_rng(0))
    n1 = sum(a["pasted"] for a in d1["annotations"])
    img2, d2 = paste_into_dataset_dict(d1, img1, CopyPaste(small_pool, num_paste=0))
    assert sum(a["pasted"] for a in d2["annotations"]) == n1


@pytest.mark.parametrize("change, error", [
    ({"bbox_mode": 2}, ValueError),  # XYXY_REL
    ({"keypoints": [1, 2, 2]}, ValueError),
    ({"segmentation": {"size": [H + 1, W], "counts": "PP"}}, ValueError),
])
def test_bad_annotations_rejected(small_pool, change, error):
    image, d, _ = _dataset_dict()
    ann = d["annotations"][1]
    ann.update(change)
    if change.get("bbox_mode") == 2:
        ann["segmentation"] = []  # an empty mask falls back to the bbox, whose mode is checked
    with pytest.raises(error):
        paste_into_dataset_dict(d, image, CopyPaste(small_pool, num_paste=1))


def test_bad_image_and_options_rejected(small_pool):
    image, d, _ = _dataset_dict()
    cp = CopyPaste(small_pool, num_paste=1)
    with pytest.raises(ValueError, match="image_format"):
        paste_into_dataset_dict(d, image, cp, image_format="L")
    with pytest.raises(ValueError, match="uint8"):
        paste_into_dataset_dict(d, image.astype(np.float32), cp)
    d["annotations"][0].pop("segmentation")
    with pytest.raises(ValueError, match="segmentation"):
        paste_into_dataset_dict(d, image, cp)


def test_add_xpaste_config_on_a_yacs_cfgnode(small_pool, tmp_path):
    yacs_config = pytest.importorskip("yacs.config")  # not in the project env; run in a venv that has yacs
    cfg = yacs_config.CfgNode()
    cfg.INPUT = yacs_config.CfgNode()
    add_xpaste_config(cfg)
    cfg.merge_from_list(["INPUT.XPASTE.POOL", str(tmp_path), "INPUT.XPASTE.MAX_PASTE", "7",
                         "INPUT.XPASTE.BLEND", "gaussian", "INPUT.XPASTE.SEED", "3"])
    cfg.freeze()
    kwargs = copy_paste_kwargs_from_cfg(cfg)
    assert cfg.INPUT.XPASTE.POOL == str(tmp_path)
    assert kwargs["max_paste"] == 7 and kwargs["blend"] == "gaussian" and kwargs["seed"] == 3
    cp = CopyPaste(small_pool, **kwargs)
    assert cp.max_paste == 7 and cp.sampling == "balanced"
    assert yacs_config.CfgNode.load_cfg(cfg.dump()).INPUT.XPASTE.MAX_PASTE == 7  # yaml round trip


def test_mapper_without_detectron2_says_so(small_pool):
    try:
        import detectron2  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("detectron2 is installed")
    from xpaste.integrations.detectron2 import make_xpaste_mapper

    with pytest.raises(ImportError, match="needs detectron2"):
        make_xpaste_mapper(object(), True, pool=small_pool)
