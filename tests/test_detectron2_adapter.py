"""detectron2 adapter.

* The dataset-dict conversion and paste (`paste_into_dataset_dict`), which need no detectron2.
* `test_real_*`: the mapper inside a REAL detectron2 (`make install` installs the CPU wheel from
  ../shared/wheels when it is there): `build_detection_train_loader`, the scale prior measured from
  DATASETS.TRAIN, and two Mask R-CNN training steps on CPU. Skipped, saying why, without detectron2.
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


def _yacs_cfg():
    yacs_config = pytest.importorskip("yacs.config", reason="yacs comes with detectron2 (make install)")
    cfg = yacs_config.CfgNode()
    cfg.INPUT = yacs_config.CfgNode()
    add_xpaste_config(cfg)
    return cfg


def test_config_node_is_derived_from_paste_config(small_pool, tmp_path):
    from xpaste.paste.config import PasteConfig

    cfg = _yacs_cfg()
    node = cfg.INPUT.XPASTE
    options = PasteConfig.options()
    assert set(node) == {o["name"].upper() for o in options} | {"POOL", "SCALE_PRIOR", "SEED"}
    for o in options:  # same default, spelled once
        assert node[o["name"].upper()] == o["default"], o["name"]
    kwargs = copy_paste_kwargs_from_cfg(cfg)
    assert kwargs == {"config": PasteConfig(), "seed": None, "scale_prior": None}
    cfg.merge_from_list(["INPUT.XPASTE.POOL", str(tmp_path), "INPUT.XPASTE.MAX_PASTE", "7",
                         "INPUT.XPASTE.BLEND", "gaussian", "INPUT.XPASTE.SEED", "3",
                         "INPUT.XPASTE.ASPECT_JITTER", "(0.9, 1.1)", "INPUT.XPASTE.NUM_PASTE", "4",
                         "INPUT.XPASTE.SCALE_PRIOR", "none"])
    cfg.freeze()
    kwargs = copy_paste_kwargs_from_cfg(cfg)
    assert kwargs["config"] == PasteConfig(max_paste=7, blend="gaussian", aspect_jitter=(0.9, 1.1), num_paste=4)
    assert kwargs["seed"] == 3 and kwargs["scale_prior"] == {}
    cp = CopyPaste(small_pool, **kwargs)
    assert cp.max_paste == 7 and cp.sampling == "balanced" and cp.aspect_jitter == (0.9, 1.1)
    assert type(cfg).load_cfg(cfg.dump()).INPUT.XPASTE.MAX_PASTE == 7  # yaml round trip


@pytest.mark.parametrize("key, value, match", [("BLEND", "soft", "blend"), ("MAX_PASTE", 0, "max_paste"),
                                               ("ALPHA_THRESHOLD", 300, "alpha_threshold")])
def test_config_node_bad_values_fail_in_one_line(key, value, match):
    from xpaste.paste.config import PasteConfigError

    cfg = _yacs_cfg()
    cfg.INPUT.XPASTE[key] = value
    with pytest.raises(PasteConfigError, match=match) as info:
        copy_paste_kwargs_from_cfg(cfg)
    assert "\n" not in str(info.value)


def test_prior_of_dataset_dicts_matches_pycocotools(tmp_path):
    from prior_fixtures import write_small_object_coco
    from pycocotools.coco import COCO

    from xpaste.integrations.detectron2 import scale_prior_from_dataset_dicts

    js, _ = write_small_object_coco(tmp_path)
    coco = COCO(str(js))
    contiguous = {cid: i for i, cid in enumerate(sorted(coco.cats))}
    dicts = []  # as detectron2's load_coco_json makes them: XYWH_ABS boxes, contiguous ids, crowd kept
    for img_id, img in coco.imgs.items():
        dicts.append({"height": img["height"], "width": img["width"], "annotations": [
            {"bbox": a["bbox"], "bbox_mode": XYWH_ABS, "category_id": contiguous[a["category_id"]],
             "iscrowd": a["iscrowd"]} for a in coco.imgToAnns[img_id]]})
    dicts[1]["annotations"].append({"bbox": [0, 0, 250, 250], "bbox_mode": XYXY_ABS, "category_id": 0,
                                    "pasted": True})  # an earlier paste: not the training set's
    prior = scale_prior_from_dataset_dicts(dicts, category_map=contiguous)
    for cid in coco.cats:
        s = [np.sqrt(a["bbox"][2] * a["bbox"][3] / 256**2) for a in coco.loadAnns(coco.getAnnIds(catIds=[cid]))
             if not a["iscrowd"]]
        assert prior[cid] == pytest.approx((np.mean(s), np.std(s)))
    assert set(scale_prior_from_dataset_dicts(dicts)) == {0, 1, 2}  # no map: keyed by contiguous id


def test_mapper_without_detectron2_says_so(small_pool):  # the other side of the test_real_* tests
    try:
        import detectron2  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("detectron2 is installed")
    from xpaste.integrations.detectron2 import make_xpaste_mapper

    with pytest.raises(ImportError, match="needs detectron2"):
        make_xpaste_mapper(object(), True, pool=small_pool)


# ----------------------------------------------------------------------------- real detectron2
@pytest.fixture(scope="module")
def d2_dataset(tmp_path_factory):
    """A registered COCO training set of small objects; the cfg of a tiny-input Mask R-CNN R50-FPN."""
    pytest.importorskip("detectron2", reason="detectron2 is not installed (make install installs "
                        "../shared/wheels/detectron2-0.6-*.whl when that file exists)")
    import os

    import detectron2
    from detectron2.config import get_cfg
    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import register_coco_instances
    from prior_fixtures import write_small_object_coco

    js, images_dir = write_small_object_coco(tmp_path_factory.mktemp("d2"))
    name = "xpaste_small_objects_train"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        from detectron2.data import MetadataCatalog

        MetadataCatalog.remove(name)
    register_coco_instances(name, {}, str(js), str(images_dir))
    cfg = get_cfg()
    # By path: detectron2.model_zoo imports pkg_resources, gone from setuptools >= 81 (wheels/README.md).
    cfg.merge_from_file(os.path.join(os.path.dirname(detectron2.__file__), "model_zoo", "configs",
                                     "COCO-InstanceSegmentation", "mask_rcnn_R_50_FPN_1x.yaml"))
    add_xpaste_config(cfg)
    cfg.DATASETS.TRAIN = (name,)
    cfg.INPUT.MASK_FORMAT = "bitmask"
    cfg.INPUT.MIN_SIZE_TRAIN = (256,)
    cfg.INPUT.MAX_SIZE_TRAIN = 256
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    cfg.MODEL.RPN.BATCH_SIZE_PER_IMAGE = 32
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 100
    cfg.INPUT.XPASTE.MAX_PASTE = 20
    cfg.INPUT.XPASTE.SEED = 0
    return cfg, js


def test_real_loader_pastes_with_the_training_prior(d2_dataset):
    from detectron2.data import build_detection_train_loader
    from prior_fixtures import assert_follows_prior, planned_scales, prior_pool, record_plans, training_median

    from xpaste.integrations.detectron2 import make_xpaste_mapper

    cfg, js = d2_dataset
    mapper = make_xpaste_mapper(cfg, is_train=True, pool=prior_pool())
    assert mapper.category_map == {1: 0, 2: 1, 3: 2}  # from the dataset's metadata
    assert set(mapper.copy_paste.scale_prior) == {1, 2, 3}  # measured from DATASETS.TRAIN, keyed by pool id
    plans = record_plans(mapper.copy_paste)
    loader = iter(build_detection_train_loader(cfg, mapper=mapper))
    out, labels = [], set()
    for _ in range(8):
        for d in next(loader):
            inst = d["instances"]
            assert d["image"].shape[1:] == (256, 256) and len(inst.pasted) == len(inst)
            b = inst.gt_boxes.tensor[inst.pasted].numpy()
            out.extend(np.sqrt((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])) / 256)
            labels |= set(inst.gt_classes[inst.pasted].tolist())
    expected = training_median(js)
    assert_follows_prior(planned_scales(plans), expected)
    print(f"boxes reaching the model: median {np.median(out):.4f} (n={len(out)})")  # shown with -s
    assert len(out) >= 40 and abs(np.median(out) / expected - 1) < 0.2  # the boxes that reach the model
    assert labels <= {0, 1, 2}


def test_real_loader_without_a_training_set_warns(d2_dataset, monkeypatch):
    import xpaste.paste.transform as transform_module
    from prior_fixtures import prior_pool

    from xpaste.integrations.detectron2 import make_xpaste_mapper

    cfg = d2_dataset[0].clone()
    cfg.DATASETS.TRAIN = ()
    monkeypatch.setattr(transform_module, "_WARNED", set())
    with pytest.warns(UserWarning, match="SCALE_PRIOR"):
        mapper = make_xpaste_mapper(cfg, is_train=True, pool=prior_pool())
    assert mapper.copy_paste.scale_prior == {}
    cfg.INPUT.XPASTE.SCALE_PRIOR = str(d2_dataset[1])  # the json by path: keyed by the json's ids
    mapper = make_xpaste_mapper(cfg, is_train=True, pool=prior_pool())
    assert set(mapper.copy_paste.scale_prior) == {1, 2, 3}


def test_real_mask_rcnn_trains_two_steps(d2_dataset):
    import torch
    from detectron2.data import build_detection_train_loader
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage
    from prior_fixtures import prior_pool

    from xpaste.integrations.detectron2 import make_xpaste_mapper

    cfg, _ = d2_dataset
    torch.manual_seed(0)
    loader = iter(build_detection_train_loader(cfg, mapper=make_xpaste_mapper(cfg, True, pool=prior_pool())))
    model = build_model(cfg)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    with EventStorage(0):
        for _ in range(2):
            batch = next(loader)
            assert any(d["instances"].pasted.any() for d in batch)  # the model trains on pasted objects
            losses = model(batch)
            assert set(losses) >= {"loss_mask", "loss_cls", "loss_box_reg"}
            total = sum(losses.values())
            assert torch.isfinite(total)
            optimizer.zero_grad()
            total.backward()
            optimizer.step()


@pytest.mark.parametrize("image_format,crop,with_empty", [("BGR", False, False), ("RGB", True, True),
                                                          ("BGR", True, True), ("RGB", False, True)])
def test_real_mapper_instances_equal_detectron2s_own_steps(d2_dataset, small_pool, image_format, crop, with_empty):
    """The mapper hands its masks to BitMasks without a stack and filters empty instances itself: its
    Instances must equal what detectron2's own annotations_to_instances + filter_empty_instances make of
    the same pasted annotations (segmentation='mask'), field by field."""
    import torch
    from detectron2.data import detection_utils as utils
    from detectron2.data import transforms as T

    from xpaste.integrations.detectron2 import _mapper_class

    cfg = d2_dataset[0].clone()
    cfg.INPUT.FORMAT = image_format
    cfg.INPUT.CROP.ENABLED = crop  # DatasetMapper recomputes boxes from masks when cropping
    image, d, _ = _dataset_dict()
    # The forms detectron2's transform_instance_annotations takes: polygons and compressed RLE.
    d["annotations"] = [a for a in d["annotations"] if isinstance(a["segmentation"], list)
                        or (isinstance(a["segmentation"], dict) and not isinstance(a["segmentation"]["counts"], list))]
    if with_empty:  # a sliver polygon (2 points) rasterises to nothing: filter_empty_instances drops it
        d["annotations"].append({"bbox": [5, 5, 6, 6], "bbox_mode": XYXY_ABS, "segmentation": [[5.0, 5.0, 6.0, 6.0]],
                                 "category_id": 1, "iscrowd": 0})
    cp = CopyPaste(small_pool, num_paste=8, uniform_scale=(0.1, 0.3), min_visible_area=50, scale_prior={})
    mapper = _mapper_class()(cfg, True, cp, None)
    assert mapper.recompute_boxes == crop
    chw = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
    for seed in range(4):
        got = {"image": chw, "annotations": copy.deepcopy(d["annotations"])}
        cp.reseed(seed)
        mapper._transform_annotations(got, T.TransformList([]), (H, W))
        annos = [utils.transform_instance_annotations(copy.deepcopy(a), T.TransformList([]), (H, W))
                 for a in d["annotations"] if a.get("iscrowd", 0) == 0]
        cp.reseed(seed)
        ref_image, ref = paste_into_dataset_dict({"annotations": annos}, image, cp, image_format=image_format,
                                                 segmentation="mask")
        inst = utils.annotations_to_instances(ref["annotations"], (H, W), mask_format="bitmask")
        inst.pasted = torch.tensor([a["pasted"] for a in ref["annotations"]], dtype=torch.bool)
        if crop:
            inst.gt_boxes = inst.gt_masks.get_bounding_boxes()
        expected = utils.filter_empty_instances(inst)
        out = got["instances"]
        assert torch.equal(got["image"], torch.as_tensor(np.ascontiguousarray(ref_image.transpose(2, 0, 1))))
        assert len(out) == len(expected) and len(expected) < len(inst) + (not with_empty)
        assert torch.equal(out.gt_boxes.tensor, expected.gt_boxes.tensor)
        assert torch.equal(out.gt_classes, expected.gt_classes)
        assert out.gt_masks.tensor.dtype == torch.bool and torch.equal(out.gt_masks.tensor, expected.gt_masks.tensor)
        assert torch.equal(out.pasted, expected.pasted) and bool(out.pasted.any())
