"""Segmenters: registry, GrabCut on a synthetic disc, tiny offline CLIPSeg and rembg models."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from xpaste.errors import XPasteError
from tiny_models import export_tiny_u2net, make_tiny_clipseg  # noqa: F401 - also used by other tests

from xpaste.segment import SEGMENTERS, Segmenter, binarize, build_segmenter, parse_spec

SIZES = [(48, 64), (70, 40)]  # (H, W): a batch of two different sizes


def disc_image(h: int = 96, w: int = 128, radius: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """A red disc on a plain grey-green background, plus its ground-truth mask."""
    yy, xx = np.mgrid[:h, :w]
    disc = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < radius**2
    img = np.empty((h, w, 3), np.uint8)
    img[:] = (90, 140, 100)
    img[disc] = (220, 30, 40)
    return img, disc


def random_images(seed: int = 0) -> list[np.ndarray]:
    r = np.random.default_rng(seed)
    return [r.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in SIZES]


def check_masks(masks, images):
    assert len(masks) == len(images)
    for m, img in zip(masks, images):
        assert m.dtype == np.uint8 and m.shape == img.shape[:2]


# --- registry --------------------------------------------------------------------------------------

def test_import_is_light():
    code = ("import sys, xpaste.segment, xpaste.score; "
            "bad = [m for m in ('torch', 'cv2', 'rembg', 'transformers', 'open_clip') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_parse_spec_and_unknown_name():
    assert parse_spec("rembg") == ("rembg", None)
    assert parse_spec("rembg:u2net") == ("rembg", "u2net")
    assert parse_spec("clipseg:/a/b:c") == ("clipseg", "/a/b:c")
    assert set(SEGMENTERS) == {"grabcut", "clipseg", "rembg", "sam", "sam2", "sam3"}
    with pytest.raises(XPasteError, match="unknown segmenter"):
        build_segmenter("nope")


def test_binarize_threshold():
    soft = np.array([[0, 128, 129, 255]], np.uint8)
    assert binarize(soft).tolist() == [[False, False, True, True]]


# --- GrabCut ---------------------------------------------------------------------------------------

def test_grabcut_recovers_disc():
    seg = build_segmenter("grabcut")
    assert isinstance(seg, Segmenter) and seg.name == "grabcut"
    img, disc = disc_image()
    (soft,) = seg.segment([img], ["ball"])
    assert soft.dtype == np.uint8 and soft.shape == disc.shape
    assert set(np.unique(soft)) == {0, 255}  # min-max normalised: a two-level map spans 0..255
    pred = binarize(soft)
    iou = (pred & disc).sum() / (pred | disc).sum()
    assert iou > 0.8


def test_grabcut_batch_downscale_and_spec():
    seg = build_segmenter("grabcut:3", max_side=64)  # 128-px image runs at 64 px, mask scaled back
    assert seg.iterations == 3
    img, disc = disc_image()
    masks = seg.segment([img, img[:40, :30]], ["a", "b"])
    assert [m.shape for m in masks] == [disc.shape, (40, 30)]
    pred = binarize(masks[0])
    assert (pred & disc).sum() / (pred | disc).sum() > 0.8


def test_grabcut_rejects_bad_input():
    seg = build_segmenter("grabcut")
    with pytest.raises(ValueError, match="uint8"):
        seg.segment([np.zeros((8, 8, 3), np.float32)], ["x"])
    with pytest.raises(ValueError, match="prompts"):
        seg.segment([np.zeros((8, 8, 3), np.uint8)], ["x", "y"])
    assert seg.segment([np.zeros((2, 2, 3), np.uint8)], ["x"])[0].shape == (2, 2)


# --- CLIPSeg ---------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def tiny_clipseg(tmp_path_factory) -> str:
    return make_tiny_clipseg(str(tmp_path_factory.mktemp("clipseg")))


def test_clipseg_tiny_batch(tiny_clipseg):
    seg = build_segmenter(f"clipseg:{tiny_clipseg}", device="cpu")
    assert seg.name.startswith("clipseg:")
    images = random_images()
    masks = seg.segment(images, ["baseball_bat", "cat"])
    check_masks(masks, images)
    assert all(m.std() > 0 for m in masks)  # a real (random) logit map, not a constant
    again = seg.segment(images, ["baseball_bat", "cat"])
    assert all(np.array_equal(a, b) for a, b in zip(masks, again))
    # batch_size=1 path and a batch split across passes give the same masks
    one_by_one = build_segmenter(f"clipseg:{tiny_clipseg}", device="cpu", batch_size=1)
    single = one_by_one.segment(images, ["baseball_bat", "cat"])
    assert all(np.abs(a.astype(int) - b).max() <= 1 for a, b in zip(masks, single))


def test_clipseg_prompted_a_photo_of_name_and_min_max_normalised(tiny_clipseg):
    """Reference: transformers' own processor and model run by hand with `a photo of {name}`, sigmoid, resized
    to the image, then rescaled per image to 0..255 by skimage (method.md, Stage 2)."""
    import cv2
    import torch
    from skimage import exposure
    from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

    seg = build_segmenter(f"clipseg:{tiny_clipseg}", device="cpu", batch_size=1)
    processor = CLIPSegProcessor.from_pretrained(tiny_clipseg)
    model = CLIPSegForImageSegmentation.from_pretrained(tiny_clipseg).eval()
    images = random_images(3)
    names = ["baseball_bat", "cat"]
    got = seg.segment(images, names)

    def hand(img, text):
        with torch.no_grad():
            logits = model(**processor(text=[text], images=[img], padding=True, return_tensors="pt")).logits
        prob = torch.sigmoid(logits.reshape(logits.shape[-2:]).float()).numpy()
        prob = cv2.resize(prob, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR)
        return exposure.rescale_intensity(prob.astype(np.float64), in_range="image", out_range=(0.0, 255.0))

    for img, name, mask in zip(images, ["baseball bat", "cat"], got):
        assert mask.min() == 0 and mask.max() == 255
        assert np.abs(mask - hand(img, f"a photo of {name}")).max() <= 1.0
    # the prompt matters: the bare name gives another map, so the test above pins the template
    assert any(np.abs(m - hand(img, n)).max() > 1.0 for img, n, m in zip(images, ["baseball bat", "cat"], got))


def test_clipseg_missing_model_names_it():
    with pytest.raises(XPasteError, match="xpaste-nonexistent/clipseg") as err:
        build_segmenter("clipseg:xpaste-nonexistent/clipseg")
    assert "clipseg:/path/to/folder" in str(err.value)
    with pytest.raises(XPasteError, match="not found"):
        build_segmenter("clipseg:/nonexistent/folder")


# --- rembg -----------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def tiny_u2net(tmp_path_factory) -> str:
    """A tiny model at $REMBG_HOME/models/u2net/u2net.onnx (where rembg looks) plus one outside it."""
    from rembg.sessions.u2net import U2netSession

    # model_dir() honours REMBG_HOME (set by conftest) and a U2NET_HOME that would override it
    export_tiny_u2net(os.path.join(U2netSession.model_dir(), "u2net.onnx"))
    return export_tiny_u2net(str(tmp_path_factory.mktemp("onnx") / "my_model.onnx"))


def test_rembg_named_model(tiny_u2net):
    seg = build_segmenter("rembg:u2net")
    assert seg.name == "rembg:u2net"
    images = random_images()
    masks = seg.segment(images, ["x", "y"])
    check_masks(masks, images)
    assert all(m.min() == 0 and m.max() == 255 for m in masks)  # min-max normalised per image (Stage 2)


def test_rembg_local_file_outside_home(tiny_u2net):
    seg = build_segmenter(f"rembg:{tiny_u2net}")
    assert seg.name == "rembg:my_model"
    images = random_images(1)
    check_masks(seg.segment(images, ["x", "y"]), images)
    named = build_segmenter("rembg:u2net").segment(images, ["x", "y"])
    # same weights (same seed) through the custom session give (almost) the same matte
    custom = seg.segment(images, ["x", "y"])
    assert all(np.abs(a.astype(int) - b).max() <= 1 for a, b in zip(named, custom))
    build_segmenter(f"rembg:{tiny_u2net}")  # the link into REMBG_HOME is reused


def test_rembg_missing_model_names_it(monkeypatch):
    import pooch
    import requests

    def offline(*args, **kwargs):  # what pooch raises without network; never download in tests
        raise requests.exceptions.ConnectionError("Failed to resolve 'github.com'")

    monkeypatch.setattr(pooch, "retrieve", offline)
    with pytest.raises(XPasteError, match="u2netp") as err:
        build_segmenter("rembg:u2netp")  # not in REMBG_HOME, so rembg tries to download it
    assert os.path.join("models", "u2netp", "u2netp.onnx") in str(err.value)
    with pytest.raises(XPasteError, match="not found"):
        build_segmenter("rembg:/nonexistent/model.onnx")
    with pytest.raises(XPasteError, match="unknown rembg model"):
        build_segmenter("rembg:not-a-model")


# --- the segment stage enforces the contract for any backend ----------------------------------------

class RawSegmenter:
    """A third-party backend that returns its raw output: logits for one image, a dim 0..100 matte for another."""

    name = "raw"

    def __init__(self):
        self.outputs = []

    def segment(self, images, prompts):
        r = np.random.default_rng(len(self.outputs))
        out = [r.normal(size=img.shape[:2]) * 4 if k % 2 == 0 else r.integers(0, 101, img.shape[:2]).astype(np.uint8)
               for k, img in enumerate(images)]
        self.outputs.extend(out)
        return out


def test_segment_stage_normalises_every_backend_per_image(tmp_path):
    """What the stage stores is skimage's per-image rescale of the raw output to 0..255, and its area is the
    fraction of that map > 128 (method.md, Stage 2)."""
    from PIL import Image
    from skimage import exposure

    from xpaste.stages.segment import SegmentStage

    images = random_images(4) + random_images(5)
    items = []
    for k, img in enumerate(images):
        (tmp_path / "images").mkdir(exist_ok=True)
        Image.fromarray(img).save(tmp_path / "images" / f"{k}.png")
        items.append({"candidate_id": f"c{k}", "category_id": 1, "category": "cup", "path": f"images/{k}.png"})
    stage = SegmentStage(tmp_path, {"segment": {"segmenters": ["raw"], "batch_size": 4}, "shard_size": 8})
    raw = RawSegmenter()
    stage._segmenters = [("raw", raw)]
    rows, skipped = stage.process(items)
    assert not skipped and len(rows) == len(images) == len(raw.outputs)
    for row, out in zip(rows, raw.outputs):
        stored = np.asarray(Image.open(tmp_path / row["mask_path"]))
        want = exposure.rescale_intensity(out.astype(np.float64), in_range="image", out_range=(0.0, 255.0))
        assert stored.dtype == np.uint8 and np.abs(stored - want).max() <= 0.5 + 1e-9
        assert row["area_frac"] == pytest.approx(float((np.rint(want) > 128).mean()))


def test_build_segmenter_passes_the_run_device_to_backends_that_take_one(monkeypatch):
    """The run's `device` key reaches torch backends (their constructor has `device`), not the others."""
    import xpaste.segment as seg_mod

    made = []

    class WithDevice:
        def __init__(self, model=None, device=None, batch_size=4):
            made.append(("with", model, device))

    class WithoutDevice:
        def __init__(self, iterations=5):
            made.append(("without", iterations))

    classes = {"sam": WithDevice, "grabcut": WithoutDevice}
    monkeypatch.setattr(seg_mod, "load_backend", lambda path, extra: classes["sam" if "sam" in path else "grabcut"])
    build_segmenter("sam:/some/folder", device="cuda:1")
    build_segmenter("sam", device=None)
    build_segmenter("grabcut:3", device="cuda:1")  # GrabCut takes no device: not passed, no TypeError
    assert made == [("with", "/some/folder", "cuda:1"), ("with", None, None), ("without", "3")]


def test_segment_stage_builds_segmenters_on_the_configured_device(monkeypatch):
    from xpaste.stages import segment as stage_mod

    seen = []
    monkeypatch.setattr(stage_mod, "build_segmenter", lambda spec, device=None: seen.append((spec, device)) or spec)
    stage = stage_mod.SegmentStage.__new__(stage_mod.SegmentStage)
    stage.config = {"device": "cpu", "segment": {"segmenters": ["grabcut", "clipseg"]}}
    stage._segmenters, stage._passes = None, None
    stage.setup()
    assert seen == [("grabcut", "cpu"), ("clipseg", "cpu")]
