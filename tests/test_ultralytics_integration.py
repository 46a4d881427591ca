"""Online pasting with the real ultralytics client, offline: local font, no sockets (export: test_yolo_export.py)."""
from __future__ import annotations

import importlib.util
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import yaml
from coco_fixtures import write_dataset
from conftest import make_cutout


def _install_font() -> bool:
    """ultralytics fetches Arial.ttf unless one is in its config dir: copy a local TTF there first."""
    spec = importlib.util.find_spec("matplotlib")
    candidates = []
    if spec and spec.origin:
        candidates.append(Path(spec.origin).parent / "mpl-data/fonts/ttf/DejaVuSans.ttf")
    candidates += sorted(Path("/usr/share/fonts").rglob("*.ttf")) if Path("/usr/share/fonts").is_dir() else []
    font = next((p for p in candidates if p.is_file()), None)
    if font is None:
        return False
    target = Path(os.environ["YOLO_CONFIG_DIR"]) / "Ultralytics"
    target.mkdir(parents=True, exist_ok=True)
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        if not (target / name).exists():
            shutil.copy(font, target / name)
    return True


if not _install_font():
    pytest.skip("no TTF font to give ultralytics offline", allow_module_level=True)
pytest.importorskip("ultralytics")

import torch  # noqa: E402
from ultralytics.utils.instance import Instances  # noqa: E402

from xpaste.integrations.ultralytics import XPasteYOLOTransform, xpaste_trainer  # noqa: E402
from xpaste.integrations.yolo_export import export_yolo_seg  # noqa: E402
from xpaste.pool.store import InstancePool  # noqa: E402

torch.set_num_threads(1)
NAMES = {1: "cup", 2: "cat/dog", 3: "fire_hydrant", 4: "ünï"}


@pytest.fixture
def no_network(monkeypatch):
    """Every outgoing connection fails and is recorded: ultralytics must not try to download anything."""
    attempts = []

    def refuse(self, address, *args, **kwargs):
        attempts.append(address)
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


def make_pool(n: int = 9) -> InstancePool:
    r = np.random.default_rng(3)
    arrays = [make_cutout(r, int(r.integers(14, 30)), int(r.integers(14, 30)), "blob" if i % 2 else "ellipse")
              for i in range(n)]
    return InstancePool.from_arrays(arrays, [1 + i % 3 for i in range(n)], NAMES)


# ----------------------------------------------------------------------------- transform on a labels dict
def labels_dict(h=96, w=128, normalized=True, fmt="xywh"):
    r = np.random.default_rng(0)
    segs = []
    for cx, cy, rad in [(30, 30, 12), (90, 60, 15)]:
        t = np.linspace(0, 2 * np.pi, 1000, endpoint=False)
        segs.append(np.stack([cx + rad * np.cos(t), cy + rad * np.sin(t)], 1).astype(np.float32))
    segs = np.stack(segs)
    boxes = np.concatenate([segs.min(1), segs.max(1)], 1)
    inst = Instances(boxes.copy(), segs.copy(), None, "xyxy", normalized=False)
    inst.convert_bbox(fmt)
    if normalized:
        inst.normalize(w, h)
    img = r.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return {"img": img, "cls": np.array([[0], [2]], np.float32), "instances": inst, "im_file": "x.jpg"}, boxes, segs


def test_transform_keeps_format_and_untouched_instances():
    labels, boxes, segs = labels_dict()
    img = labels["img"].copy()
    out = XPasteYOLOTransform(make_pool(), num_paste=0, seed=0)(labels)  # nothing pasted: identity
    assert np.array_equal(out["img"], img) and out["instances"].normalized
    assert out["instances"]._bboxes.format == "xywh" and out["cls"].tolist() == [[0], [2]]
    out["instances"].denormalize(128, 96)
    out["instances"].convert_bbox("xyxy")
    np.testing.assert_allclose(out["instances"].bboxes, boxes, atol=1e-4)
    np.testing.assert_allclose(out["instances"].segments, segs, atol=1e-4)


@pytest.mark.parametrize("normalized,fmt", [(True, "xywh"), (False, "xyxy")])
def test_transform_pastes_valid_instances(normalized, fmt):
    transform = XPasteYOLOTransform(make_pool(), names=["cup", "cat/dog", "fire_hydrant"], num_paste=6, seed=1)
    for seed in range(3):
        labels, _, _ = labels_dict(normalized=normalized, fmt=fmt)
        before = labels["img"].copy()
        out = transform(labels)
        inst = out["instances"]
        assert inst.normalized == normalized and inst._bboxes.format == fmt
        n = len(out["cls"])
        assert out["cls"].dtype == np.float32 and out["cls"].shape == (n, 1) and n > 2
        assert inst.segments.shape == (n, 1000, 2) and inst.bboxes.shape == (n, 4)
        assert set(out["cls"].ravel().tolist()) <= {0.0, 1.0, 2.0}
        inst.denormalize(128, 96)
        inst.convert_bbox("xyxy")
        b = inst.bboxes
        assert (b[:, 0] >= 0).all() and (b[:, 2] <= 128).all() and (b[:, 1] >= 0).all() and (b[:, 3] <= 96).all()
        assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
        assert (inst.segments >= 0).all() and (inst.segments[..., 0] <= 128).all()
        assert not np.array_equal(out["img"], before)
    assert transform.calls == 3 and transform.pasted > 0


def test_unmapped_pool_category_refused():
    with pytest.raises(ValueError, match="no YOLO class"):
        XPasteYOLOTransform(make_pool(), names=["cup"])


def test_copy_paste_built_by_the_common_rule(tmp_path):
    """`integrations.common.build_copy_paste`: a pool folder is opened, options beside a ready CopyPaste refused."""
    from xpaste.paste.transform import CopyPaste
    from xpaste.pool.writer import PoolWriter

    with pytest.raises(TypeError, match="not both"):
        XPasteYOLOTransform(CopyPaste(make_pool(), scale_prior={}), max_paste=3)
    with PoolWriter.create(tmp_path / "pool", [{"id": 1, "name": "cup"}]) as w:
        w.add(make_cutout(np.random.default_rng(0), 20, 20), 1)
    transform = XPasteYOLOTransform(tmp_path / "pool", names=["dog", "Cup"], scale_prior={}, max_paste=3)
    assert isinstance(transform.copy_paste.pool, InstancePool) and transform.copy_paste.max_paste == 3
    assert transform.class_map == {1: 1}  # "cup" names the class "Cup" (case ignored)


def test_install_into_mosaic_dataset_survives_close_mosaic(tmp_path, no_network):
    """install_xpaste on a dataset built the way the trainer builds it: mosaic on, then rebuilt without."""
    from ultralytics.cfg import get_cfg
    from ultralytics.data.build import build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset

    from xpaste.integrations.ultralytics import install_xpaste

    js, images = write_dataset(tmp_path / "coco", n_images=4)
    data = check_det_dataset(str(export_yolo_seg(js, images, tmp_path / "yolo")))
    cfg = get_cfg(overrides={"task": "segment", "imgsz": 160, "mosaic": 1.0})
    dataset = build_yolo_dataset(cfg, data["train"], 2, data, mode="train")
    transform = XPasteYOLOTransform(make_pool(), names=data["names"], num_paste=4, seed=0)
    install_xpaste(dataset, transform)
    item = dataset[0]
    assert transform.calls == 1 and item["img"].shape == (3, 160, 160)  # mosaic output, after Format
    assert item["masks"].shape[-2:] == (40, 40) and len(item["cls"]) == len(item["bboxes"]) > 0
    dataset.close_mosaic(hyp=cfg)
    assert any(t is transform for t in dataset.transforms.transforms)
    dataset[1]
    assert transform.calls == 2 and transform.pasted > 0
    val = build_yolo_dataset(cfg, data["val"], 2, data, mode="val")
    install_xpaste(val, transform)  # no augmentation, no paste
    assert not any(t is transform for t in val.transforms.transforms)


# ----------------------------------------------------------------------------- real client
SEEN: list[dict] = []  # what the transform produced during training (workers=0: same process)


class CheckedTransform(XPasteYOLOTransform):
    def __call__(self, labels):
        out = super().__call__(labels)
        inst = out["instances"]
        h, w = out["img"].shape[:2]
        norm = 1.0 if inst.normalized else np.array([w, h, w, h])
        b = inst.bboxes / norm
        SEEN.append({"n": len(out["cls"]), "format": inst._bboxes.format, "size": (h, w),
                     "cls_ok": bool(((out["cls"] >= 0) & (out["cls"] < 4)).all()),
                     "boxes_ok": bool(len(b) == 0 or ((b >= -1e-3).all() and (b[:, [0, 2]] <= w + 1e-3).all()
                                                      and (b[:, [1, 3]] <= h + 1e-3).all())),
                     "segments_ok": inst.segments.shape[0] == len(b)})
        return out


@pytest.mark.filterwarnings("ignore:`get_trial_id`:UserWarning")  # ultralytics' Ray Tune callback, ray installed
def test_yolo_seg_trains_with_online_pasting(tmp_path, no_network):
    from ultralytics import YOLO

    js, images = write_dataset(tmp_path / "coco", n_images=4)
    data_yaml = export_yolo_seg(js, images, tmp_path / "yolo")
    transform = CheckedTransform(make_pool(), names=yaml.safe_load(data_yaml.read_text())["names"],
                                 max_paste=5, seed=0)
    SEEN.clear()
    model = YOLO("yolo11n-seg.yaml")
    model.train(data=str(data_yaml), epochs=1, imgsz=160, batch=2, workers=0, plots=False, device="cpu",
                project=str(tmp_path / "runs"), name="xp", trainer=xpaste_trainer(transform), verbose=False)
    trainer = model.trainer
    assert (Path(trainer.save_dir) / "weights/last.pt").is_file()
    losses = trainer.tloss.values() if isinstance(trainer.tloss, dict) else trainer.tloss.reshape(-1)
    assert trainer.epoch == 0 and all(np.isfinite(float(v)) for v in losses)
    # close_mosaic rebuilt the pipeline for this 1-epoch run: the paste must still be in it.
    assert any(t is transform for t in trainer.train_loader.dataset.transforms.transforms)
    assert transform.calls == len(SEEN) >= 4 and transform.pasted > 0
    assert all(s["cls_ok"] and s["boxes_ok"] and s["segments_ok"] for s in SEEN), SEEN
    assert no_network == []


# ----------------------------------------------------------------------------- the scale prior by default
def test_trainer_measures_the_prior_from_the_training_labels(tmp_path, no_network):
    from prior_fixtures import (assert_follows_prior, planned_scales, prior_pool, record_plans, training_median,
                                write_small_object_coco)
    from pycocotools.coco import COCO

    js, images = write_small_object_coco(tmp_path / "coco")
    data_yaml = export_yolo_seg(js, images, tmp_path / "yolo")
    trainer = xpaste_trainer(prior_pool(), max_paste=20, seed=0)(overrides=dict(
        model="yolo11n-seg.yaml", data=str(data_yaml), imgsz=256, batch=2, workers=0, device="cpu", plots=False,
        epochs=1, project=str(tmp_path / "runs"), name="prior"))
    trainer.model = trainer.get_model(cfg="yolo11n-seg.yaml", verbose=False)  # what _setup_train does first
    dataset = trainer.build_dataset(trainer.data["train"], mode="train", batch=2)
    copy_paste = trainer.xpaste_transform.copy_paste
    coco = COCO(str(js))  # the oracle: per category sqrt(box area / image area) of the json, crowd left out
    for cid in (1, 2, 3):
        s = [np.sqrt(a["bbox"][2] * a["bbox"][3]) / 256 for a in coco.loadAnns(coco.getAnnIds(catIds=[cid]))
             if not a["iscrowd"]]
        # YOLO-seg keeps polygons only: boxes come back from them (within a pixel of the json's, ~7 %).
        assert copy_paste.scale_prior[cid][0] == pytest.approx(np.mean(s), rel=0.08)
    plans = record_plans(copy_paste)
    for _ in range(3):
        for i in range(len(dataset)):
            dataset[i]
    assert_follows_prior(planned_scales(plans), training_median(js))


def test_hand_built_transform_warns_once_without_a_prior(monkeypatch):
    import warnings

    import xpaste.paste.transform as transform_module
    from xpaste.paste.config import PasteConfigError

    monkeypatch.setattr(transform_module, "_WARNED", set())
    with pytest.warns(UserWarning, match="XPasteYOLOTransform"):
        XPasteYOLOTransform(make_pool(), num_paste=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        XPasteYOLOTransform(make_pool(), num_paste=1, scale_prior={1: (0.1, 0.01)})
    with pytest.raises(PasteConfigError, match="flip_prob"):
        XPasteYOLOTransform(make_pool(), scale_prior={}, flip_prob=2)
    with pytest.raises(PasteConfigError, match="max_paste"):  # at once, not when ultralytics builds the data
        xpaste_trainer(make_pool(), max_paste=0)


# ----------------------------------------------------------------------------- fast paths (same results)
def test_polygon_fill_equals_ultralytics_polygon2mask():
    """The transform fills each polygon straight into its mask: the pixels ultralytics' polygon2mask gives."""
    from ultralytics.data.utils import polygon2mask
    from ultralytics.utils.ops import resample_segments

    from xpaste.integrations.ultralytics import SEGMENT_POINTS, _fill_polygon

    rng = np.random.default_rng(5)
    for t in range(60):
        h, w = (int(v) for v in rng.integers(5, 80, 2))
        k = int(rng.integers(3, 12))
        poly = rng.uniform(-10, max(h, w) + 10, (k, 2)).astype(np.float32)  # partly outside the image too
        if t % 3 == 0:
            poly = resample_segments([poly], n=SEGMENT_POINTS)[0]  # as YOLODataset hands them over
        mask = np.zeros((h, w), bool)
        _fill_polygon(mask, poly)
        assert np.array_equal(mask, polygon2mask((h, w), [poly.reshape(-1)], color=1).astype(bool)), t


def test_mask_to_polygon_with_a_box_hint():
    """Given any box enclosing the mask (as the transform gives CopyPaste's tight boxes), the polygon is the
    one traced without it, and polygon2mask of it covers every mask pixel (exactly, for a one-piece mask)."""
    import cv2
    from ultralytics.data.utils import polygon2mask

    from xpaste.integrations.yolo_export import mask_to_polygon

    rng = np.random.default_rng(9)
    exact = 0
    for t in range(120):
        h, w = (int(v) for v in rng.integers(6, 70, 2))
        m = np.zeros((h, w), np.uint8)
        for _ in range(int(rng.integers(1, 4))):
            cv2.circle(m, (int(rng.integers(0, w)), int(rng.integers(0, h))), int(rng.integers(0, 15)), 1, -1)
        if t % 5 == 0:
            m = (rng.random((h, w)) < 0.3).astype(np.uint8)
        truth = m.astype(bool)
        x, y, bw, bh = cv2.boundingRect(m)
        grow = rng.integers(0, 6, 4)
        box = np.array([x - grow[0], y - grow[1], x + bw + grow[2], y + bh + grow[3]], np.float32)
        poly = mask_to_polygon(truth, box)
        if not truth.any():
            assert poly is None
            continue
        assert np.array_equal(poly, mask_to_polygon(truth))
        got = polygon2mask((h, w), [poly.reshape(-1)], color=1).astype(bool)
        assert not (truth & ~got).any(), t
        if cv2.connectedComponents(m, connectivity=8)[0] == 2:
            assert np.array_equal(got, truth), t
            exact += 1
    assert exact > 40
