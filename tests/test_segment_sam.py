"""SAM-family segmenters (sam, sam2, sam3: transformers) and every rembg session by name, offline.

Models: tiny random SamModel / Sam2Model / Sam3Model built from configs in `tiny_models` (never downloaded),
saved once per session into temp folders; a one-conv ONNX model placed where rembg looks for BiRefNet.
Oracles: transformers' own model and processor run by hand with the documented prompt (corner points / the
bare category name), the documented instance choice, and skimage's per-image min-max rescale (method.md,
Stage 2); rembg's own session list for the names; the real CLI on a run built offline (`retrieve --labelled`).
"""
from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
from tiny_models import (
    export_tiny_saliency_onnx,
    make_tiny_sam,
    make_tiny_sam2,
    make_tiny_sam3,
)

from xpaste.errors import XPasteError
from xpaste.segment import SEGMENTERS, Segmenter, build_segmenter, parse_spec

SIZES = [(48, 64), (70, 40)]  # (H, W): a batch of two different sizes
NAMES = ["baseball_bat", "cat"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_images(seed: int = 0) -> list[np.ndarray]:
    r = np.random.default_rng(seed)
    return [r.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in SIZES]


def rescale(x: np.ndarray) -> np.ndarray:
    from skimage import exposure

    return exposure.rescale_intensity(np.asarray(x, np.float64), in_range="image", out_range=(0.0, 255.0))


@pytest.fixture(scope="session")
def sam_folders(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("sam-family")
    return {"sam": make_tiny_sam(str(root / "sam")), "sam2": make_tiny_sam2(str(root / "sam2")),
            "sam3": make_tiny_sam3(str(root / "sam3"))}


@pytest.fixture(scope="session")
def tiny_birefnet() -> str:
    """A tiny model at $REMBG_HOME/models/birefnet-general/birefnet-general.onnx, where rembg looks."""
    from rembg.sessions.birefnet_general import BiRefNetSessionGeneral

    return export_tiny_saliency_onnx(os.path.join(BiRefNetSessionGeneral.model_dir(), "birefnet-general.onnx"))


# --- registry --------------------------------------------------------------------------------------------

def test_registry_names_and_specs():
    assert {"sam", "sam2", "sam3"} <= set(SEGMENTERS)
    assert parse_spec("sam3") == ("sam3", None)
    assert parse_spec("sam3:facebook/sam3") == ("sam3", "facebook/sam3")
    assert parse_spec("SAM2:/a/b:c") == ("sam2", "/a/b:c")


# --- each backend: one (H, W) uint8 soft mask per image, min-max normalised, deterministic -----------------

@pytest.mark.parametrize("kind, kwargs", [("sam", {}), ("sam2", {}), ("sam2", {"prompt": "box"}), ("sam3", {})])
def test_backend_masks_shape_range_and_determinism(sam_folders, kind, kwargs):
    folder = sam_folders[kind]
    seg = build_segmenter(f"{kind}:{folder}", device="cpu", **kwargs)
    assert isinstance(seg, Segmenter) and seg.name == f"{kind}:{os.path.basename(folder)}"
    images = random_images()
    masks = seg.segment(images, NAMES)
    assert len(masks) == len(images)
    for m, img in zip(masks, images):
        assert m.dtype == np.uint8 and m.shape == img.shape[:2]
        assert m.min() == 0 and m.max() == 255 and m.std() > 0  # a real map, min-max normalised per image
    assert all(np.array_equal(a, b) for a, b in zip(masks, seg.segment(images, NAMES)))
    # a fresh load, one image per forward pass: the same masks
    single = build_segmenter(f"{kind}:{folder}", device="cpu", batch_size=1, **kwargs).segment(images, NAMES)
    assert all(np.abs(a.astype(int) - b).max() <= 1 for a, b in zip(masks, single))


@pytest.mark.parametrize("kind", ["sam", "sam2"])
def test_sam_bg_is_corner_points_inverted(sam_folders, kind):
    """DiverGen's SAM-bg: the four corners as points of the background, SAM's best-rated mask (iou_scores),
    foreground = 1 - sigmoid(logit) at the image size, min-max rescaled per image."""
    import torch
    from transformers import Sam2Model, Sam2Processor, SamModel, SamProcessor

    model_cls, proc_cls = (SamModel, SamProcessor) if kind == "sam" else (Sam2Model, Sam2Processor)
    folder = sam_folders[kind]
    model, processor = model_cls.from_pretrained(folder).eval(), proc_cls.from_pretrained(folder)
    images = random_images(1)
    got = build_segmenter(f"{kind}:{folder}", device="cpu").segment(images, NAMES)
    boxed = build_segmenter(f"{kind}:{folder}", device="cpu", prompt="box").segment(images, NAMES)
    for img, mask, box_mask in zip(images, got, boxed):
        h, w = img.shape[:2]
        points = [[[[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1]]]]
        inputs = processor(images=[img], input_points=points, input_labels=[[[1, 1, 1, 1]]], return_tensors="pt")
        with torch.no_grad():
            out = model(**{k: v for k, v in inputs.items() if k != "original_sizes" and k != "reshaped_input_sizes"})
        best = int(out.iou_scores[0, 0].argmax())
        extra = [inputs["reshaped_input_sizes"]] if kind == "sam" else []
        logit = processor.post_process_masks(out.pred_masks[:, :, best : best + 1], inputs["original_sizes"], *extra,
                                             binarize=False)[0][0, 0]
        want = rescale(1.0 - torch.sigmoid(logit.double()).numpy())
        assert np.abs(mask - want).max() <= 1.0
        assert not np.array_equal(mask, box_mask)  # the prompt matters


def test_sam3_bare_name_highest_scoring_instance(sam_folders):
    """SAM 3: prompted with the bare category name (underscores as spaces), the query with the highest
    sigmoid(pred_logits) * sigmoid(presence_logits) kept, its sigmoid mask resized bilinearly, min-max rescaled."""
    import torch
    from transformers import Sam3Model, Sam3Processor

    folder = sam_folders["sam3"]
    model, processor = Sam3Model.from_pretrained(folder).eval(), Sam3Processor.from_pretrained(folder)
    seg = build_segmenter(f"sam3:{folder}", device="cpu")
    assert seg.prompt_for("baseball_bat") == "baseball bat"
    images = random_images(2)
    got = seg.segment(images, NAMES)

    def hand(img, text):
        inputs = processor(images=[img], text=[text], return_tensors="pt")
        with torch.no_grad():
            out = model(pixel_values=inputs["pixel_values"], input_ids=inputs["input_ids"],
                        attention_mask=inputs["attention_mask"])
        scores = out.pred_logits.sigmoid() * out.presence_logits.sigmoid()
        prob = out.pred_masks[0, int(scores[0].argmax())].sigmoid()
        up = torch.nn.functional.interpolate(prob[None, None], size=img.shape[:2], mode="bilinear",
                                             align_corners=False)
        return rescale(up[0, 0].double().numpy())

    for img, name, mask in zip(images, ["baseball bat", "cat"], got):
        assert np.abs(mask - hand(img, name)).max() <= 1.0
    # the text matters: CLIP's template gives another map, so the test above pins the bare name
    assert any(np.abs(m - hand(img, f"a photo of {n}")).max() > 1.0
               for img, n, m in zip(images, ["baseball bat", "cat"], got))
    with pytest.raises(ValueError, match="text-prompted"):
        seg.segment(images, None)


# --- loading: folders, hub ids offline, wrong folders --------------------------------------------------------

@pytest.mark.parametrize("kind, hub_id", [("sam", "facebook/sam-vit-huge"), ("sam2", "facebook/sam2.1-hiera-large"),
                                           ("sam3", "facebook/sam3")])
def test_hub_id_offline_fails_fast_in_one_line(monkeypatch, kind, hub_id):
    import importlib

    from xpaste import hub

    importlib.import_module("xpaste.segment.sam3" if kind == "sam3" else "xpaste.segment.sam")  # not timed
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.reset_probes()
    start = time.monotonic()
    with pytest.raises(XPasteError) as err:
        build_segmenter(kind, device="cpu")  # the default model, by hub id, is not cached
    assert time.monotonic() - start < 15
    message = str(err.value)
    assert "\n" not in message and repr(hub_id) in message and "HF_HUB_OFFLINE=1" in message
    assert f"--segmenter {kind}:/path/to/folder" in message
    with pytest.raises(XPasteError, match="not found"):
        build_segmenter(f"{kind}:/nonexistent/folder", device="cpu")


def test_folder_of_another_model_type_is_refused(sam_folders):
    with pytest.raises(XPasteError, match="could not load SAM 3 model"):
        build_segmenter(f"sam3:{sam_folders['sam2']}", device="cpu")


# --- rembg: every session by name ------------------------------------------------------------------------------

def test_every_local_rembg_session_is_reachable_and_fails_fast_without_its_file(monkeypatch):
    """Each name rembg lists that runs a local model is accepted by `rembg:<name>`; with its file absent and
    the network down it fails at once in one line naming the model (no download is attempted)."""
    from rembg.sessions import sessions

    from xpaste import hub
    from xpaste.segment.rembg_backend import REMOTE_SESSIONS, local_sessions

    names = local_sessions()
    assert {"birefnet-general", "birefnet-general-lite", "isnet-general-use", "u2net", "u2netp", "sam",
            "bria-rmbg"} <= set(names)
    assert set(names) | REMOTE_SESSIONS | {n for n in sessions if n.endswith("_custom")} == set(sessions)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.reset_probes()
    tried = 0
    for name in names:
        if os.path.exists(os.path.join(sessions[name].model_dir(), f"{name}.onnx")):
            continue  # placed by another test (u2net, birefnet-general): covered by the loading tests
        tried += 1
        start = time.monotonic()
        with pytest.raises(XPasteError) as err:
            build_segmenter(f"rembg:{name}")
        message = str(err.value)
        assert time.monotonic() - start < 15, name
        assert "\n" not in message and repr(name) in message, message
    assert tried >= len(names) - 2


def test_rembg_web_api_and_custom_sessions_are_refused_by_name():
    with pytest.raises(XPasteError, match="web API"):
        build_segmenter("rembg:withoutbg")
    with pytest.raises(XPasteError, match="web API"):
        build_segmenter("rembg:atlascloud")
    with pytest.raises(XPasteError, match="needs a model file") as err:
        build_segmenter("rembg:dis_custom")
    assert "rembg:/path/to/model.onnx" in str(err.value)


def test_rembg_birefnet_from_its_home(tiny_birefnet):
    seg = build_segmenter("rembg:birefnet-general")
    assert seg.name == "rembg:birefnet-general"
    images = random_images(3)
    masks = seg.segment(images, NAMES)
    for m, img in zip(masks, images):
        assert m.dtype == np.uint8 and m.shape == img.shape[:2] and m.min() == 0 and m.max() == 255
    assert all(np.array_equal(a, b) for a, b in zip(masks, seg.segment(images, NAMES)))


# --- the command line -----------------------------------------------------------------------------------------

def test_cli_segment_with_sam3_sam2_and_birefnet(sam_folders, tiny_birefnet, tmp_path):
    import pyarrow.parquet as pq
    from PIL import Image

    from xpaste.cli import main

    for k, category in enumerate(["cup", "baseball_bat"]):
        folder = tmp_path / "collection" / category
        folder.mkdir(parents=True)
        img = np.full((40 + 8 * k, 56, 3), 255, np.uint8)
        img[10:30, 14:40] = (200, 30, 30)
        Image.fromarray(img).save(folder / "a.png")
    run = tmp_path / "run"
    args = ["--run", str(run), "--device", "cpu"]
    assert main(["retrieve", *args, "--categories", "cup,baseball_bat", "--folder", str(tmp_path / "collection"),
                 "--labelled"]) == 0
    specs = [f"sam3:{sam_folders['sam3']}", f"sam2:{sam_folders['sam2']}", "rembg:birefnet-general"]
    flags = [x for spec in specs for x in ("--segmenter", spec)]
    assert main(["segment", *args, *flags]) == 0
    rows = [r for p in sorted((run / "segment").glob("shard-*.parquet")) for r in pq.read_table(p).to_pylist()]
    assert len(rows) == 2 * len(specs) and {r["segmenter"] for r in rows} == set(specs)
    for row in rows:
        mask = np.asarray(Image.open(run / row["mask_path"]))
        assert mask.dtype == np.uint8 and mask.shape in {(40, 56), (48, 56)}
        assert mask.min() == 0 and mask.max() == 255
    stage = json.loads((run / "segment" / "stage.json").read_text())
    assert stage["fingerprint"]["segmenters"] == specs
