"""`XPasteCopyPaste` inside torchvision v2 pipelines, DataLoader workers and a real Mask R-CNN training step."""
from __future__ import annotations

import json
import math
import pickle
from types import SimpleNamespace

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import make_cutout
from torchvision import tv_tensors
from torchvision.transforms import v2

from xpaste.integrations.torchvision import XPasteCopyPaste, sanitize_labels_getter
from xpaste.ops.masks import rle_encode, tight_boxes
from xpaste.paste.transform import CopyPaste
from xpaste.pool.store import InstancePool

torch.set_num_threads(1)
K = 4  # Mask R-CNN classes: background + categories 1..3


def build_pool() -> InstancePool:
    """Module level, so that everything holding it pickles into DataLoader workers."""
    r = np.random.default_rng(11)
    arrays = [make_cutout(r, int(r.integers(12, 40)), int(r.integers(12, 40)), "blob" if i % 2 else "ellipse")
              for i in range(12)]
    return InstancePool.from_arrays(arrays, [1 + i % 3 for i in range(12)], {1: "a", 2: "b", 3: "c"})


def collate(batch):
    return tuple(zip(*batch))


def synthetic(height=96, width=128, n=3, seed=0):
    r = np.random.default_rng(seed)
    masks = np.zeros((n, height, width), bool)
    for i in range(n):
        y, x = r.integers(0, height - 30), r.integers(0, width - 30)
        masks[i, y : y + int(r.integers(8, 30)), x : x + int(r.integers(8, 30))] = True
    image = tv_tensors.Image(torch.from_numpy(r.integers(0, 256, (3, height, width), dtype=np.uint8)))
    target = {
        "image_id": 7,
        "boxes": tv_tensors.BoundingBoxes(torch.from_numpy(tight_boxes(masks)), format="XYXY",
                                          canvas_size=(height, width)),
        "masks": tv_tensors.Mask(torch.from_numpy(masks.astype(np.uint8))),
        "labels": torch.tensor([1 + i % 3 for i in range(n)], dtype=torch.int64),
    }
    return image, target


def transform(num_paste=4, seed=0, **kw) -> XPasteCopyPaste:
    return XPasteCopyPaste(CopyPaste(build_pool(), num_paste=num_paste, seed=seed, **kw))


def assert_consistent(image, target):
    n = len(target["labels"])
    h, w = image.shape[-2:]
    assert target["boxes"].shape == (n, 4) and target["masks"].shape == (n, h, w) and target["pasted"].shape == (n,)
    assert tuple(target["boxes"].canvas_size) == (h, w)


# ----------------------------------------------------------------------------- unit
def test_types_flags_and_tight_boxes():
    image, target = synthetic()
    out_image, out = transform()(image, target)
    assert type(out_image) is tv_tensors.Image and out_image.dtype == torch.uint8
    assert out_image.shape == image.shape
    assert isinstance(out["boxes"], tv_tensors.BoundingBoxes) and out["boxes"].format.name == "XYXY"
    assert isinstance(out["masks"], tv_tensors.Mask) and out["masks"].dtype == torch.uint8
    assert out["labels"].dtype == torch.int64 and out["pasted"].dtype == torch.bool
    assert out["image_id"] == 7
    assert_consistent(out_image, out)
    assert out["pasted"].sum() >= 1 and not out["pasted"][: int((~out["pasted"]).sum())].any()
    # Every box is the tight box of its mask, x2/y2 exclusive (last column + 1).
    masks = out["masks"].numpy().astype(bool)
    np.testing.assert_array_equal(out["boxes"].numpy(), tight_boxes(masks))
    m = masks[-1]
    cols = np.flatnonzero(m.any(axis=0))
    assert out["boxes"][-1, 2] == cols[-1] + 1
    # Input untouched.
    assert len(target["labels"]) == 3 and "pasted" not in target


def test_same_seed_same_output_and_pickle_roundtrip():
    image, target = synthetic()
    t1, t2 = transform(seed=5), pickle.loads(pickle.dumps(transform(seed=5)))
    a, b = t1(image, target), t2((image, target))  # a packed tuple works as well
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["masks"], b[1]["masks"])


def test_workers_draw_different_pastes(monkeypatch):
    """Each worker reseeds from its torch seed (base seed + worker id) the first time it runs."""
    image, target = synthetic()
    base = transform(seed=None)
    info = {"value": None}
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: info["value"])

    def run_in_worker(worker_id, base_seed=1234):
        copy = pickle.loads(pickle.dumps(base))  # what a worker process receives
        info["value"] = SimpleNamespace(id=worker_id, seed=base_seed + worker_id, num_workers=2)
        return copy(image, target)[0]

    w0, w1, w0_again = run_in_worker(0), run_in_worker(1), run_in_worker(0)
    assert not torch.equal(w0, w1)
    assert torch.equal(w0, w0_again)  # reproducible for a given DataLoader seed
    assert not torch.equal(run_in_worker(0, base_seed=99), w0)  # a new epoch's base seed: new pastes


def test_composes_with_v2_transforms():
    pipeline = v2.Compose([
        v2.RandomResizedCrop((64, 80), scale=(0.3, 1.0), antialias=True),
        transform(num_paste=6),
        v2.SanitizeBoundingBoxes(labels_getter=sanitize_labels_getter),
        v2.ToDtype(torch.float32, scale=True),
    ])
    torch.manual_seed(0)
    for seed in range(5):
        image, target = pipeline(*synthetic(seed=seed))
        assert image.dtype == torch.float32 and image.shape == (3, 64, 80)
        assert_consistent(image, target)
        boxes = target["boxes"]
        assert bool(((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all())


def test_float_image_refused_with_advice():
    image, target = synthetic()
    float_image = v2.ToDtype(torch.float32, scale=True)(image)
    with pytest.raises(TypeError, match=r"before v2\.ToDtype"):
        transform()(float_image, target)


def test_zero_instances_and_no_annotations():
    image, target = synthetic(n=0)
    out_image, out = transform(num_paste=3)(image, target)
    assert_consistent(out_image, out)
    assert len(out["labels"]) >= 1 and bool(out["pasted"].all())
    # torchvision's COCO wrapper gives only image_id for an image without annotations.
    _, out = transform(num_paste=0)(image, {"image_id": 3})
    assert out["masks"].shape == (0, 96, 128) and out["boxes"].shape == (0, 4) and out["labels"].shape == (0,)


def test_pil_xywh_and_coco_extras():
    image, target = synthetic()
    pil = PIL.Image.fromarray(image.permute(1, 2, 0).numpy())
    target["boxes"] = v2.functional.convert_bounding_box_format(target["boxes"], new_format="XYWH")
    target["iscrowd"] = [0, 0, 0]
    target["area"] = torch.tensor([1.5, 2.5, 3.5])
    out_image, out = transform(num_paste=5)(pil, target)
    assert isinstance(out_image, PIL.Image.Image) and out_image.size == pil.size
    assert out["boxes"].format.name == "XYWH"
    n = len(out["labels"])
    assert out["iscrowd"] == [0] * n and out["area"].shape == (n,)
    masks = out["masks"].numpy().astype(bool)
    pasted = out["pasted"].numpy()
    np.testing.assert_allclose(out["area"].numpy()[pasted], masks[pasted].sum(axis=(1, 2)))


def test_unusable_targets_refused():
    image, target = synthetic()
    with pytest.raises(ValueError, match="masks"):
        transform()(image, {k: v for k, v in target.items() if k != "masks"})
    with pytest.raises(ValueError, match="raw COCO"):
        transform()(image, {**target, "segmentation": [[]] * 3})
    with pytest.raises(TypeError, match=r"\(image, target\)"):
        transform()(image)


# ----------------------------------------------------------------------------- real client
def write_tiny_coco(root, n_images=4, size=96):
    r = np.random.default_rng(2)
    images, anns = [], []
    for i in range(n_images):
        PIL.Image.fromarray(r.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / f"{i}.jpg")
        images.append({"id": i + 1, "file_name": f"{i}.jpg", "height": size, "width": size})
        for j in range(2):
            x, y, w, h = (int(v) for v in (*r.integers(0, size - 40, 2), *r.integers(12, 40, 2)))
            if j == 0:  # polygon
                seg = [[x, y, x + w, y, x + w, y + h, x, y + h]]
            else:  # compressed RLE
                m = np.zeros((size, size), bool)
                m[y : y + h, x : x + w] = True
                seg = rle_encode(m)
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 1 + (i + j) % 3, "iscrowd": 0,
                         "bbox": [x, y, w, h], "area": float(w * h), "segmentation": seg})
    cats = [{"id": c, "name": n} for c, n in [(1, "a"), (2, "b"), (3, "c")]]
    (root / "ann.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))


def coco_dataset(root, pipeline):
    from torchvision.datasets import CocoDetection, wrap_dataset_for_transforms_v2

    ds = CocoDetection(str(root), str(root / "ann.json"), transforms=pipeline)
    return wrap_dataset_for_transforms_v2(ds, target_keys=("image_id", "boxes", "labels", "masks"))


def pipeline_for_training():
    return v2.Compose([
        v2.ToImage(),
        v2.RandomResizedCrop((96, 96), scale=(0.5, 1.0), antialias=True),
        XPasteCopyPaste(build_pool(), num_paste=3),
        v2.SanitizeBoundingBoxes(labels_getter=sanitize_labels_getter),
        v2.ToDtype(torch.float32, scale=True),
    ])


def test_dataloader_workers_paste_differently(tmp_path):
    write_tiny_coco(tmp_path)
    ds = coco_dataset(tmp_path, XPasteCopyPaste(build_pool(), num_paste=3))
    pickle.loads(pickle.dumps(ds))  # what a spawn/forkserver worker would receive
    same_image_twice = torch.utils.data.Subset(ds, [0, 0])
    loader = torch.utils.data.DataLoader(same_image_twice, batch_size=1, num_workers=2, collate_fn=collate)
    (img_a,), (img_b,) = [batch[0] for batch in loader]  # index 0 -> worker 0, index 1 -> worker 1
    assert isinstance(img_a, PIL.Image.Image)  # CocoDetection yields PIL images: they stay PIL
    a, b = np.asarray(img_a), np.asarray(img_b)
    assert a.shape == b.shape and not np.array_equal(a, b)


def test_maskrcnn_trains_on_pasted_coco(tmp_path):
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    write_tiny_coco(tmp_path)
    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(coco_dataset(tmp_path, pipeline_for_training()), batch_size=2,
                                         shuffle=True, num_workers=2, collate_fn=collate)
    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=K, min_size=96, max_size=128,
                                  rpn_batch_size_per_image=32, box_batch_size_per_image=16)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9)
    steps = 0
    for images, targets in loader:
        assert all(t["pasted"].any() for t in targets)
        losses = model(list(images), targets)
        total = sum(losses.values())
        assert all(math.isfinite(float(v.detach())) for v in losses.values()), losses
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        steps += 1
    assert steps == 2


# ----------------------------------------------------------------------------- the scale prior by default
def _pasted_scales(pipeline, js, images_dir, rounds=4):
    """Planned and output sqrt(area fraction) of pasted objects over a CocoDetection dataset."""
    from torchvision.datasets import CocoDetection, wrap_dataset_for_transforms_v2

    ds = wrap_dataset_for_transforms_v2(CocoDetection(str(images_dir), str(js), transforms=pipeline),
                                        target_keys=("image_id", "boxes", "labels", "masks"))
    boxes = []
    for _ in range(rounds):
        for i in range(len(ds)):
            image, target = ds[i]
            b = target["boxes"][target["pasted"]].as_subclass(torch.Tensor).numpy()
            h, w = target["boxes"].canvas_size
            boxes.extend(np.sqrt((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) / (h * w)))
    return np.array(boxes)


def test_prior_from_the_training_json(tmp_path):
    from prior_fixtures import (assert_follows_prior, planned_scales, prior_pool, record_plans,
                                training_median, write_small_object_coco)

    js, images_dir = write_small_object_coco(tmp_path)
    expected = training_median(js)
    paste = XPasteCopyPaste(prior_pool(), scale_prior=js, max_paste=20, seed=0)
    plans = record_plans(paste.copy_paste)
    out = _pasted_scales(v2.Compose([v2.ToImage(), paste]), js, images_dir)
    assert_follows_prior(planned_scales(plans), expected)
    # What comes out (boxes of the pasted masks) follows too; occlusion and the border only shrink a few.
    assert len(out) >= 40 and abs(np.median(out) / expected - 1) < 0.2
    # Control: the same transform without the prior pastes U(0.05, 0.3) sizes, far from the training set.
    plain = XPasteCopyPaste(prior_pool(), scale_prior={}, max_paste=20, seed=0)
    plans = record_plans(plain.copy_paste)
    _pasted_scales(v2.Compose([v2.ToImage(), plain]), js, images_dir, rounds=1)
    assert np.median(planned_scales(plans)) > 2 * expected


def test_no_prior_warns_once_and_names_the_fix(monkeypatch):
    import warnings

    import xpaste.paste.transform as transform_module

    monkeypatch.setattr(transform_module, "_WARNED", set())
    with pytest.warns(UserWarning, match=r"XPasteCopyPaste.*scale_prior=<your COCO/LVIS training json"):
        XPasteCopyPaste(build_pool(), num_paste=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        XPasteCopyPaste(build_pool(), num_paste=1)  # once per front-end
        XPasteCopyPaste(build_pool(), num_paste=1, scale_prior={})  # opted out knowingly


def test_options_validated_through_paste_config():
    from xpaste.paste.config import PasteConfigError

    with pytest.raises(PasteConfigError, match="blend"):
        XPasteCopyPaste(build_pool(), scale_prior={}, blend="nope")
    with pytest.raises(PasteConfigError, match="unknown paste option"):
        XPasteCopyPaste(build_pool(), scale_prior={}, max_pastes=3)
    with pytest.raises(TypeError, match="not both"):
        XPasteCopyPaste(CopyPaste(build_pool(), scale_prior={}), scale_prior={})
    t = XPasteCopyPaste(build_pool(), scale_prior={1: (0.1, 0.0)}, max_paste=7, alpha_threshold=127)
    assert t.copy_paste.config.max_paste == 7 and t.copy_paste.config.alpha_threshold == 127
    assert t.copy_paste.scale_prior == {1: (0.1, 0.0)}


# ----------------------------------------------------------------------------- build_copy_paste (common.py)
def test_build_copy_paste_is_the_adapters_one_rule(tmp_path, monkeypatch):
    """(pool, pool folder or CopyPaste; prior; options) -> CopyPaste, as every adapter builds it."""
    import warnings

    import xpaste.paste.transform as transform_module
    from xpaste.integrations.common import build_copy_paste
    from xpaste.paste.config import PasteConfig, PasteConfigError
    from xpaste.pool.writer import PoolWriter

    monkeypatch.setattr(transform_module, "_WARNED", set())
    ready = CopyPaste(build_pool(), scale_prior={})
    assert build_copy_paste(ready, where="X") is ready
    for extra in ({"scale_prior": {}}, {"options": {"max_paste": 3}}, {"options": PasteConfig()}):
        with pytest.raises(TypeError, match="not both"):  # they would be ignored
            build_copy_paste(ready, where="X", **extra)
    root = tmp_path / "pool"
    with PoolWriter.create(root, [{"id": 1, "name": "a"}]) as w:
        w.add(make_cutout(np.random.default_rng(0), 20, 20), 1)
    for folder in (root, str(root)):  # opened
        cp = build_copy_paste(folder, scale_prior={1: (0.1, 0.0)}, options={"max_paste": 4, "seed": 3}, where="X")
        assert isinstance(cp.pool, InstancePool) and len(cp.pool) == 1
        assert cp.config.max_paste == 4 and cp.seed == 3 and cp.scale_prior == {1: (0.1, 0.0)}
    assert build_copy_paste(build_pool(), scale_prior={}, options=PasteConfig(max_paste=5), where="X").max_paste == 5
    cp = build_copy_paste(build_pool(), scale_prior={}, where="X",
                          options={"config": PasteConfig(max_paste=5, flip_prob=0.0), "max_paste": 6,
                                   "category_weights": {1: 2.0}})
    assert (cp.max_paste, cp.flip_prob, cp.category_weights) == (6, 0.0, {1: 2.0})  # keywords over `config`
    with pytest.raises(PasteConfigError, match="unknown paste option"):
        build_copy_paste(build_pool(), scale_prior={}, options={"max_pastes": 3}, where="X")
    with pytest.raises(PasteConfigError, match="category_weights"):
        build_copy_paste(build_pool(), scale_prior={}, options={"sampling": "weighted"}, where="X")
    with pytest.warns(UserWarning, match=r"^Front-end A was built without a scale prior"):
        assert build_copy_paste(build_pool(), where="Front-end A").scale_prior == {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_copy_paste(build_pool(), where="Front-end A")  # once per front-end and process
        build_copy_paste(build_pool(), scale_prior={}, where="Front-end B")  # {}: chosen knowingly
    # the adapter goes through it, so it takes a pool folder too (it took only an InstancePool before)
    assert len(XPasteCopyPaste(str(root), scale_prior={}).copy_paste.pool) == 1


# ----------------------------------------------------------------------------- fast conversions (common.py)
# Right values from PIL / torchvision / OpenCV / pycocotools, never from xpaste.
@pytest.mark.parametrize("height,width", [(1, 1), (3, 5), (64, 64), (97, 130)])
def test_channel_layout_conversions_match_pil_and_torchvision(height, width):
    import cv2
    from torchvision.transforms.v2 import functional as F

    from xpaste.integrations.common import chw_from_hwc, hwc_from_chw

    r = np.random.default_rng(height * width)
    chw = torch.from_numpy(r.integers(0, 256, (3, height, width), dtype=np.uint8))
    hwc = np.asarray(F.to_pil_image(chw))  # PIL's RGB bytes
    assert np.array_equal(hwc_from_chw(chw.numpy()), hwc) and hwc_from_chw(chw.numpy()).flags.c_contiguous
    assert np.array_equal(hwc_from_chw(chw.numpy(), reverse=True), cv2.cvtColor(hwc, cv2.COLOR_RGB2BGR))
    view = F.pil_to_tensor(PIL.Image.fromarray(hwc))  # torchvision's CHW view of HWC memory (v2.ToImage)
    assert np.array_equal(hwc_from_chw(view.numpy()), hwc)
    assert np.array_equal(hwc_from_chw(view.numpy(), reverse=True), cv2.cvtColor(hwc, cv2.COLOR_RGB2BGR))
    wide = torch.from_numpy(np.repeat(chw.numpy(), 2, axis=2))[:, :, ::2]  # strided planes
    assert np.array_equal(hwc_from_chw(wide.numpy()), hwc)
    expected = F.pil_to_tensor(PIL.Image.fromarray(hwc)).numpy()
    out = torch.empty((3, height, width), dtype=torch.uint8)
    assert chw_from_hwc(hwc, out.numpy()) is not None and np.array_equal(out.numpy(), expected)
    bgr = cv2.cvtColor(hwc, cv2.COLOR_RGB2BGR)
    assert np.array_equal(chw_from_hwc(bgr, reverse=True), expected)
    strided = np.ascontiguousarray(np.repeat(hwc, 2, axis=1))[:, ::2]  # a non-contiguous view of the same pixels
    assert np.array_equal(chw_from_hwc(strided), expected)


def _coco_masks(seed: int, n: int, height: int, width: int) -> np.ndarray:
    r = np.random.default_rng(seed)
    masks = np.zeros((n, height, width), bool)
    for i in range(n):
        kind = i % 4
        if kind == 0:
            masks[i] = r.random((height, width)) < 0.3  # scattered pixels
        elif kind == 1:
            y, x = r.integers(0, height), r.integers(0, width)
            masks[i, y:y + int(r.integers(1, 20)), x:x + int(r.integers(1, 20))] = True
        elif kind == 2:
            masks[i, -1, -1] = True  # one corner pixel
        # kind 3: empty
    return masks


@pytest.mark.parametrize("seed,n,height,width", [(0, 0, 8, 9), (1, 4, 1, 1), (2, 8, 37, 53), (3, 6, 120, 64)])
def test_mask_areas_boxes_and_copies_match_pycocotools(seed, n, height, width):
    from pycocotools import mask as coco

    from xpaste.integrations.common import as_bool_masks, copy_mask, mask_areas, mask_boxes

    masks = _coco_masks(seed, n, height, width)
    rles = [coco.encode(np.asfortranarray(m.astype(np.uint8))) for m in masks]
    areas = np.array([coco.area(rle) for rle in rles], np.int64).reshape(n)
    xywh = np.array([coco.toBbox(rle) for rle in rles], np.float64).reshape(n, 4)
    xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
    for form in (masks, masks.astype(np.uint8), masks.astype(np.uint8) * 255, np.asfortranarray(masks)):
        assert np.array_equal(mask_areas(form), areas)
        boxes, nonempty = mask_boxes(form)
        assert np.array_equal(nonempty, areas > 0)
        assert np.array_equal(boxes[nonempty], xyxy[nonempty].astype(np.float32))
        assert np.array_equal(as_bool_masks(form), masks)
    grown = xyxy + np.array([-3, -2, 4, 1]) * (areas > 0)[:, None]  # any enclosing box, also past the image
    assert np.array_equal(mask_areas(masks, grown), areas)
    ones = masks.astype(np.uint8)
    assert n == 0 or np.shares_memory(as_bool_masks(ones), ones)  # 0/1 bytes: a view, no copy
    for rle, m in zip(rles, masks):
        decoded = coco.decode(rle)  # Fortran order, as pycocotools returns it
        out = np.ones((height, width), bool)
        copy_mask(decoded, out)
        assert np.array_equal(out, m) and np.array_equal(out, decoded.astype(bool))


def test_uint8_masks_of_any_nonzero_value_paste_alike_and_come_back_0_1():
    image, target = synthetic(n=4, seed=3)
    outputs = []
    for scale in (1, 255):
        t = dict(target, masks=tv_tensors.Mask(target["masks"] * scale), area=torch.tensor([5.0, 6.0, 7.0, 8.0]))
        outputs.append(transform(num_paste=6, seed=4)(image, t))
    (img_a, out_a), (img_b, out_b) = outputs
    assert torch.equal(img_a, img_b)
    for key in ("boxes", "masks", "labels", "pasted", "area"):
        assert torch.equal(out_a[key], out_b[key]), key
    assert out_a["masks"].dtype == torch.uint8 and int(out_a["masks"].max()) == 1
    # area: pycocotools' area of each output mask wherever the paste changed or added it
    from pycocotools import mask as coco

    assert bool(out_a["pasted"].any())
    inputs = target["masks"].numpy()
    for j in range(len(out_a["labels"])):
        m = np.asfortranarray(out_a["masks"][j].numpy())
        true_area = float(coco.area(coco.encode(m)))
        if out_a["pasted"][j] or float(out_a["area"][j]) not in (5.0, 6.0, 7.0, 8.0):
            assert float(out_a["area"][j]) == true_area
        else:  # an original keeps its annotated area only when no paste touched its mask
            assert any(np.array_equal(m, x) for x in inputs)
