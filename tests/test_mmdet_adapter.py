"""mmdetection adapter.

Two kinds of tests, kept apart on purpose:
* `test_arrays_*` / `test_polygons_*` / `test_label_map_*`: the pure numpy conversion and paste step
  (`paste_arrays`), which needs no mmdet. They prove nothing about mmdet compatibility.
* `test_mmdet_*`: the registered transform inside real mmdet 3.x pipelines (real HorizontalBoxes,
  BitmapMasks/PolygonMasks, LoadAnnotations, Resize, RandomFlip, PackDetInputs). Skipped when mmdet is not
  installed (it is not in the project env). With `mmcv-lite`, which ships no compiled ops, mmdet's mask
  structures still import `mmcv.ops.roi_align` at module level; the fixture then puts a placeholder
  `mmcv._ext` in sys.modules whose every op raises, so a test fails loudly if anything calls a compiled op.
"""
from __future__ import annotations

import importlib.util
import pickle
import sys
import types

import cv2
import numpy as np
import pytest

from conftest import make_cutout
from xpaste.integrations.mmdet import label_map_from_classes, paste_arrays, polygons_to_masks
from xpaste.ops.masks import polygons_to_mask, tight_box
from xpaste.paste.transform import CopyPaste
from xpaste.pool.store import InstancePool

H, W = 96, 128


def _instances():
    masks = np.zeros((3, H, W), bool)
    masks[0, 10:40, 10:50] = True
    masks[1, 50:90, 60:120] = True
    masks[2, 20:30, 90:100] = True
    boxes = np.array([tight_box(m) for m in masks], np.float32)
    boxes[2] += [-1, -1, 1, 1]  # a loose box: output boxes come from the masks
    return boxes, masks, np.array([0, 1, 2], np.int64), np.array([False, False, True])


def _pool(categories=(1, 2), n=12) -> InstancePool:
    r = np.random.default_rng(2)
    arrays = [make_cutout(r, int(r.integers(10, 40)), int(r.integers(10, 40))) for _ in range(n)]
    cats = [categories[i % len(categories)] for i in range(n)]
    return InstancePool.from_arrays(arrays, cats, {1: "cat", 2: "dog", 3: "bird"})


# ----------------------------------------------------------------------------- numpy only
def test_arrays_paste_and_convert_back():
    boxes, masks, labels, ignore = _instances()
    img = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    cp = CopyPaste(_pool(), num_paste=5, uniform_scale=(0.1, 0.3), min_visible_area=1)
    out = paste_arrays(img, boxes, masks, labels, ignore, cp, rng=np.random.default_rng(1), label_map={1: 7, 2: 8})
    n = len(out["labels"])
    assert out["pasted"].sum() >= 1 and not out["pasted"][:3].any() and out["pasted"][3:].all()
    assert out["masks"].dtype == np.uint8 and out["masks"].shape == (n, H, W)
    assert out["boxes"].dtype == np.float32 and out["labels"].dtype == np.int64
    for box, mask in zip(out["boxes"], out["masks"]):
        assert tuple(box) == tight_box(mask.astype(bool))
    assert set(out["labels"][out["pasted"]]) <= {7, 8}
    assert list(out["ignore_flags"]) == [False, False, True] + [False] * (n - 3)
    union = out["masks"][out["pasted"]].any(axis=0).astype(bool)
    for i in range(3):
        assert np.array_equal(out["masks"][i].astype(bool), masks[i] & ~union)
    assert np.array_equal(out["img"][~union], img[~union])  # hard blend touches only pasted pixels
    again = paste_arrays(img, boxes, masks, labels, ignore, cp, rng=np.random.default_rng(1), label_map={1: 7, 2: 8})
    assert all(np.array_equal(out[k], again[k]) for k in out)


def test_arrays_bgr_channel_order_and_empty_input():
    rgba = np.zeros((30, 30, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 255  # pure red (RGB)
    pool = InstancePool.from_arrays([rgba], [1], {1: "red"})
    img = np.full((H, W, 3), 40, np.uint8)
    out = paste_arrays(img, np.zeros((0, 4)), np.zeros((0, H, W), bool), np.zeros(0, np.int64), None,
                       CopyPaste(pool, num_paste=2, flip_prob=0.0), rng=np.random.default_rng(0))
    union = out["masks"].any(axis=0).astype(bool)
    assert union.any() and out["pasted"].all()
    assert np.all(out["img"][union] == (0, 0, 255))  # red in BGR
    assert np.all(out["img"][~union] == 40)


def test_arrays_present_sampling_and_unmapped_categories():
    boxes, masks, labels, ignore = _instances()
    img = np.zeros((H, W, 3), np.uint8)
    # Label 1 is pool category 2 through the map, so 'present' sampling pastes only category 2.
    out = paste_arrays(img, boxes[1:2], masks[1:2], np.array([1]), None,
                       CopyPaste(_pool(), num_paste=4, sampling="present"), rng=np.random.default_rng(0),
                       label_map={1: 0, 2: 1})
    assert out["pasted"].any() and set(out["labels"][out["pasted"]]) == {1}
    with pytest.raises(KeyError, match="label_map"):
        paste_arrays(img, boxes, masks, labels, ignore, CopyPaste(_pool(), num_paste=8),
                     rng=np.random.default_rng(0), label_map={1: 0})
    with pytest.raises(TypeError, match="uint8"):
        paste_arrays(img.astype(np.float32), boxes, masks, labels, ignore, CopyPaste(_pool(), num_paste=1))


def test_polygons_rasterise_like_pycocotools():
    polys = [[np.array([10, 10, 40, 12, 36, 40, 12, 34], np.float32)],
             [np.array([1.0, 1.0, 5.0, 5.0])],  # a 2-point sliver a crop can leave: no pixels
             []]
    out = polygons_to_masks(polys, H, W)
    assert out.shape == (3, H, W)
    assert np.array_equal(out[0], polygons_to_mask([polys[0][0].tolist()], H, W))
    assert not out[1].any() and not out[2].any()


def test_label_map_from_classes():
    assert label_map_from_classes(["dog", "cat"], {1: "cat", 2: "dog", 3: "bird"}) == {1: 1, 2: 0}


# ----------------------------------------------------------------------------- real mmdet
@pytest.fixture(scope="module")
def mmdet_env():
    pytest.importorskip("mmdet")
    if importlib.util.find_spec("mmcv._ext") is None:  # mmcv-lite: see the module docstring
        class _NoOps(types.ModuleType):
            def __getattr__(self, name):
                if name.startswith("__"):
                    raise AttributeError(name)

                def op(*args, **kwargs):
                    raise RuntimeError(f"mmcv._ext.{name} called: compiled mmcv ops are not available")
                return op
        sys.modules.setdefault("mmcv._ext", _NoOps("mmcv._ext"))
    from mmdet.utils import register_all_modules

    import xpaste.integrations.mmdet  # noqa: F401  registers on import

    register_all_modules(init_default_scope=True)
    return sys.modules["mmdet"]


@pytest.fixture
def pool_dir(tmp_path):
    src = _pool()
    path = tmp_path / "pool"
    with InstancePool.create(path, {1: "cat", 2: "dog", 3: "bird"}) as pool:
        for row in range(len(src)):
            pool.add(src.rgba(row), int(src.category_ids[row]))
    return path


def _raw_results(tmp_path) -> dict:
    """A results dict as an mmdet 3.x dataset hands it to the pipeline."""
    img = np.random.default_rng(4).integers(0, 256, (H, W, 3), dtype=np.uint8)
    path = str(tmp_path / "img.png")
    cv2.imwrite(path, img)
    square = [10.0, 10.0, 50.0, 10.0, 50.0, 40.0, 10.0, 40.0]
    other = [60.0, 50.0, 120.0, 50.0, 120.0, 90.0, 60.0, 90.0]
    instances = [
        {"bbox": [10, 10, 50, 40], "bbox_label": 0, "ignore_flag": 0, "mask": [square]},
        {"bbox": [60, 50, 120, 90], "bbox_label": 1, "ignore_flag": 1, "mask": [other]},
    ]
    return {"img_path": path, "img_id": 3, "instances": instances}


def _pipeline(pool_dir, poly: bool, pack: bool, **kwargs):
    from mmcv.transforms import Compose

    steps = [dict(type="LoadImageFromFile"),
             dict(type="LoadAnnotations", with_bbox=True, with_mask=True, poly2mask=not poly),
             dict(type="Resize", scale=(160, 120), keep_ratio=True),
             dict(type="RandomFlip", prob=1.0),
             dict(type="XPasteCopyPaste", pool=str(pool_dir), classes=("dog", "cat"), **kwargs)]
    if pack:
        steps.append(dict(type="PackDetInputs"))
    return Compose(steps)


def test_mmdet_registered_and_built_from_config(mmdet_env, pool_dir):
    from mmdet.registry import TRANSFORMS

    from xpaste.integrations.mmdet import XPasteCopyPaste, register

    assert TRANSFORMS.get("XPasteCopyPaste") is XPasteCopyPaste
    register()  # idempotent
    t = TRANSFORMS.build(dict(type="XPasteCopyPaste", pool=str(pool_dir), max_paste=5, blend="gaussian"))
    assert isinstance(t, XPasteCopyPaste) and t._copy_paste is None  # the pool opens on first use
    from mmcv.transforms import BaseTransform

    assert isinstance(t, BaseTransform)


def test_mmdet_config_file_with_custom_imports(mmdet_env, tmp_path, pool_dir):
    from mmcv.transforms import Compose
    from mmengine.config import Config

    cfg_path = tmp_path / "cfg.py"
    cfg_path.write_text(
        "custom_imports = dict(imports=['xpaste.integrations.mmdet'], allow_failed_imports=False)\n"
        "train_pipeline = [dict(type='LoadImageFromFile'),\n"
        "    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),\n"
        f"    dict(type='XPasteCopyPaste', pool={str(pool_dir)!r}, max_paste=5, classes=('dog', 'cat'), seed=2),\n"
        "    dict(type='PackDetInputs')]\n")
    cfg = Config.fromfile(str(cfg_path))
    out = Compose(cfg.train_pipeline)(_raw_results(tmp_path))
    assert len(out["data_samples"].gt_instances) >= 1


@pytest.mark.parametrize("poly", [False, True])
def test_mmdet_pipeline_pastes(mmdet_env, tmp_path, pool_dir, poly):
    from mmdet.structures.bbox import HorizontalBoxes
    from mmdet.structures.mask import BitmapMasks, PolygonMasks

    pipe = _pipeline(pool_dir, poly, pack=False, num_paste=4, uniform_scale=(0.1, 0.3), min_visible_area=1,
                     seed=0)
    before = _pipeline(pool_dir, poly, pack=False, num_paste=0).transforms[:-1]
    plain = _raw_results(tmp_path)
    for t in before:
        plain = t(plain)
    assert isinstance(plain["gt_masks"], PolygonMasks if poly else BitmapMasks)
    res = pipe(_raw_results(tmp_path))
    h, w = res["img"].shape[:2]
    assert (h, w) == plain["img"].shape[:2] == (120, 160) and res["img"].dtype == np.uint8
    assert isinstance(res["gt_bboxes"], HorizontalBoxes) and isinstance(res["gt_masks"], BitmapMasks)
    n = len(res["gt_bboxes_labels"])
    assert n > 2 and len(res["gt_bboxes"]) == len(res["gt_masks"]) == len(res["gt_ignore_flags"]) == n
    assert (res["gt_masks"].height, res["gt_masks"].width) == (h, w)
    # Boxes are the masks' boxes, in mmdet's own convention.
    np.testing.assert_array_equal(res["gt_bboxes"].tensor.numpy(), res["gt_masks"].get_bboxes(HorizontalBoxes).tensor.numpy())
    # Originals keep labels and ignore flags; pasted get the mapped labels ("dog"=0, "cat"=1) and False.
    assert list(res["gt_bboxes_labels"][:2]) == [0, 1] and list(res["gt_ignore_flags"]) == [False, True] + [False] * (n - 2)
    assert set(res["gt_bboxes_labels"][2:]) <= {0, 1}
    pasted = res["gt_masks"].masks[2:].any(axis=0).astype(bool)
    plain_masks = plain["gt_masks"].to_ndarray().astype(bool)
    for i in range(2):
        assert np.array_equal(res["gt_masks"].masks[i].astype(bool), plain_masks[i] & ~pasted)
    assert np.array_equal(res["img"][~pasted], plain["img"][~pasted])


def test_mmdet_pack_det_inputs(mmdet_env, tmp_path, pool_dir):
    out = _pipeline(pool_dir, False, pack=True, num_paste=4, uniform_scale=(0.1, 0.3), min_visible_area=1,
                    seed=0)(_raw_results(tmp_path))
    sample = out["data_samples"]
    assert tuple(out["inputs"].shape) == (3, 120, 160)
    gt, ignored = sample.gt_instances, sample.ignored_instances
    assert len(gt) >= 2 and len(ignored) == 1  # the ignore-flagged original goes to ignored_instances
    assert gt.masks.masks.shape[1:] == (120, 160) and set(gt.labels.tolist()) <= {0, 1}


def test_mmdet_channel_order_with_real_loading(mmdet_env, tmp_path):
    from mmcv.transforms import Compose

    rgba = np.zeros((30, 30, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 255  # pure red
    pool = InstancePool.from_arrays([rgba], [1], {1: "red"})
    raw = _raw_results(tmp_path)
    cv2.imwrite(raw["img_path"], np.full((H, W, 3), 40, np.uint8))
    pipe = Compose([dict(type="LoadImageFromFile"), dict(type="LoadAnnotations", with_bbox=True, with_mask=True),
                    dict(type="XPasteCopyPaste", pool=pool, label_map={1: 1}, num_paste=2, flip_prob=0.0, seed=1)])
    res = pipe(raw)
    pasted = res["gt_masks"].masks[2:].any(axis=0).astype(bool)
    assert pasted.any() and np.all(res["img"][pasted] == (0, 0, 255))  # BGR, as mmdet keeps images


def test_mmdet_dataloader_workers_differ_and_repeat(mmdet_env, tmp_path, pool_dir):
    import torch
    from torch.utils.data import DataLoader

    pipe = _pipeline(pool_dir, False, pack=False, max_paste=10, seed=5)
    raw = _raw_results(tmp_path)

    class Data(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            res = pipe(dict(raw, instances=[dict(a) for a in raw["instances"]]))
            return res["img"], res["gt_bboxes"].tensor.numpy()

    def run():
        torch.manual_seed(0)
        loader = DataLoader(Data(), batch_size=None, num_workers=2)
        return [(img.numpy() if hasattr(img, "numpy") else img) for img, _ in loader]

    first, second = run(), run()
    assert all(np.array_equal(a, b) for a, b in zip(first, second))  # same torch seed: same pastes
    assert not np.array_equal(first[0], first[1])  # worker 0 and worker 1 are reseeded differently
    assert pickle.loads(pickle.dumps(pipe.transforms[-1]))._copy_paste is None  # no pool in the pickle


# ----------------------------------------------------------------------------- options and the scale prior
def test_options_validated_when_the_transform_is_built(tmp_path):
    from xpaste.integrations.mmdet import XPasteCopyPaste
    from xpaste.paste.config import PasteConfig, PasteConfigError

    with pytest.raises(PasteConfigError, match="blend"):  # a pool path is opened lazily: options are not
        XPasteCopyPaste(str(tmp_path / "pool"), blend="soft")
    with pytest.raises(PasteConfigError, match="unknown paste option"):
        XPasteCopyPaste(str(tmp_path / "pool"), max_pastes=3)
    t = XPasteCopyPaste(str(tmp_path / "pool"), max_paste=7, alpha_threshold=127, seed=3)
    assert t.config == PasteConfig(max_paste=7, alpha_threshold=127) and t.seed == 3


def _mmdet_dataset(tmp_path, classes, **transform_kwargs):
    from mmdet.registry import DATASETS
    from prior_fixtures import prior_pool, write_small_object_coco

    js, images_dir = write_small_object_coco(tmp_path)
    pipeline = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations", with_bbox=True, with_mask=True),
                dict(type="RandomFlip", prob=0.5),
                dict(type="XPasteCopyPaste", pool=prior_pool(), classes=classes, **transform_kwargs)]
    ds = DATASETS.build(dict(type="CocoDataset", ann_file=str(js), data_prefix=dict(img=str(images_dir) + "/"),
                             metainfo=dict(classes=classes), pipeline=pipeline, test_mode=False))
    return ds, js


def test_mmdet_dataset_prior_through_the_hook(mmdet_env, tmp_path):
    from types import SimpleNamespace

    from mmdet.registry import HOOKS
    from prior_fixtures import assert_follows_prior, planned_scales, record_plans, training_median
    from pycocotools.coco import COCO

    # mmdet labels categories in the json's order (CocoDataset: cat_ids = get_cat_ids(cat_names=classes)),
    # so `classes` lists them in that order: labels 0, 1, 2 are json and pool ids 1, 2, 3.
    classes = ("cup", "dog", "kite")
    ds, js = _mmdet_dataset(tmp_path, classes, max_paste=20, seed=0)
    hook = HOOKS.build(dict(type="XPasteScalePriorHook"))
    hook.before_train(SimpleNamespace(train_dataloader=SimpleNamespace(dataset=ds)))
    transform = ds.pipeline.transforms[-1]
    copy_paste = transform._paster()
    coco = COCO(str(js))  # the oracle: per category mean of sqrt(box area / image area), crowd left out
    for cid in (1, 2, 3):
        s = [np.sqrt(a["bbox"][2] * a["bbox"][3]) / 256 for a in coco.loadAnns(coco.getAnnIds(catIds=[cid]))
             if not a["iscrowd"]]
        assert copy_paste.scale_prior[cid] == pytest.approx((np.mean(s), np.std(s)))
    plans = record_plans(copy_paste)
    for _ in range(3):
        for i in range(len(ds)):
            ds[i]
    assert_follows_prior(planned_scales(plans), training_median(js))


def test_mmdet_explicit_prior_wins_and_no_prior_warns(mmdet_env, tmp_path, monkeypatch):
    import warnings

    import xpaste.paste.transform as transform_module
    from xpaste.integrations.mmdet import attach_scale_prior

    ds, js = _mmdet_dataset(tmp_path / "a", ("cup", "dog", "kite"), scale_prior={1: (0.2, 0.0)})
    assert attach_scale_prior(ds) == 0
    assert ds.pipeline.transforms[-1]._paster().scale_prior == {1: (0.2, 0.0)}
    monkeypatch.setattr(transform_module, "_WARNED", set())
    ds, _ = _mmdet_dataset(tmp_path / "b", ("cup", "dog", "kite"))
    with pytest.warns(UserWarning, match="XPasteScalePriorHook"):
        ds[0]
    ds, _ = _mmdet_dataset(tmp_path / "c", ("cup", "dog", "kite"), scale_prior=str(js))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        ds[0]
    assert set(ds.pipeline.transforms[-1]._paster().scale_prior) == {1, 2, 3}


def test_mmdet_handed_over_masks_behave_as_mmdets_own(mmdet_env, tmp_path, pool_dir):
    """The transform hands its uint8 masks to BitmapMasks without the constructor's copy: the result must be
    what BitmapMasks(array) makes of the same masks, also under the mmdet transforms that run after it."""
    from mmcv.transforms import Compose
    from mmdet.structures.mask import BitmapMasks
    from pycocotools import mask as coco

    res = _pipeline(pool_dir, False, pack=False, num_paste=5, uniform_scale=(0.1, 0.3), min_visible_area=1,
                    seed=1)(_raw_results(tmp_path))
    got = res["gt_masks"]
    own = BitmapMasks(np.array(got.masks, copy=True), got.height, got.width)  # mmdet's constructor, its copy
    assert got.masks.dtype == np.uint8 and got.masks.flags.c_contiguous and set(np.unique(got.masks)) <= {0, 1}
    assert got.masks.shape == own.masks.shape and np.array_equal(got.masks, own.masks)
    assert np.array_equal(got.areas, [coco.area(coco.encode(np.asfortranarray(m))) for m in own.masks])
    after = Compose([dict(type="RandomFlip", prob=1.0, direction="vertical"),
                     dict(type="Resize", scale=(80, 60), keep_ratio=True), dict(type="PackDetInputs")])
    out = after(res)
    res_own = dict(_pipeline(pool_dir, False, pack=False, num_paste=5, uniform_scale=(0.1, 0.3), min_visible_area=1,
                             seed=1)(_raw_results(tmp_path)))
    res_own["gt_masks"] = BitmapMasks(np.array(res_own["gt_masks"].masks, copy=True), got.height, got.width)
    ref = after(res_own)
    got_gt, ref_gt = out["data_samples"].gt_instances, ref["data_samples"].gt_instances
    assert np.array_equal(got_gt.masks.masks, ref_gt.masks.masks)
    assert np.array_equal(got_gt.bboxes.numpy(), ref_gt.bboxes.numpy())
