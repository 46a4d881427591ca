"""`xpaste masks-from-boxes`: box-only annotations get box-prompted masks; every annotation accounted for.

Oracles: (a) a test-only segmenter registered here (`OracleSegmenter`: the whole image for every box, nothing
for the category "ghost"), so each mask is the box's pixels, written out by hand below; pycocotools decodes
and measures every RLE; `pool import-coco` and `augment` read the output. (b) tiny random SAM / SAM 2 / SAM 3
(`tiny_models`, never downloaded) end to end, their box masks checked against transformers run by hand
(the prompt, SAM's single-mask output, logit > 0; SAM 3: score x IoU query choice, probability > 0.5).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xpaste import segment
from xpaste.cli import main
from xpaste.errors import XPasteError
from xpaste.stages import masks_from_boxes as mfb

H, W = 40, 60  # image 1 and 4; image 2 is 30 x 50


class OracleSegmenter:
    """Box prompts answered with the whole image (so the clipped mask is exactly the box's pixels), or with
    nothing for boxes of the category "ghost". `interrupt_at`: a file-less way to stop a run mid-way."""

    interrupt_at: int | None = None  # raise KeyboardInterrupt on the n-th image (counted per process)
    calls = 0

    def __init__(self, model: str | None = None, **kwargs):
        self.name = "oracle" if model is None else f"oracle:{model}"

    def segment(self, images, prompts):  # the Segmenter protocol (unused here)
        raise NotImplementedError

    def segment_boxes(self, images, boxes, prompts=None):
        out = []
        for img, b, names in zip(images, boxes, prompts):
            type(self).calls += 1
            if self.interrupt_at is not None and type(self).calls >= self.interrupt_at:
                raise KeyboardInterrupt
            masks = np.ones((len(b), *img.shape[:2]), bool)
            masks[[n == "ghost" for n in names]] = False
            out.append(masks)
        return out


@pytest.fixture(autouse=True)
def oracle(monkeypatch):
    monkeypatch.setitem(segment.SEGMENTERS, "oracle", f"{__name__}:OracleSegmenter")
    monkeypatch.setitem(segment._EXTRAS, "oracle", "segment")
    monkeypatch.setattr(OracleSegmenter, "interrupt_at", None)
    monkeypatch.setattr(OracleSegmenter, "calls", 0)


def box(x, y, w, h):
    return [x, y, w, h]


#: id -> (image id, category id, bbox, iscrowd, extra fields, the outcome: mask pixels (r0, r1, c0, c1) or the
#: empty reason or "kept"), written out by hand from the rule: the box clipped to the image, the pixels it touches.
CASES = {
    1: (1, 1, box(10, 5, 20, 10), 0, {}, (5, 15, 10, 30)),  # 200 px
    2: (1, 1, box(2.5, 3.2, 5.0, 6.1), 0, {}, (3, 10, 2, 8)),  # x 2.5..7.5 -> cols 2..7, y 3.2..9.3 -> rows 3..9
    3: (1, 1, box(30, 20, 10, 10), 1, {}, (20, 30, 30, 40)),  # crowd: segmented, iscrowd kept
    4: (1, 1, box(5, 5, 0, 7), 0, {}, "zero_area_box"),
    5: (1, 1, box(70, 10, 5, 5), 0, {}, "outside_image"),  # x >= W
    6: (1, 1, box(50, 30, 20, 20), 0, {}, (30, 40, 50, 60)),  # partly outside: clipped to the image
    7: (1, 1, box(40, 2, 15, 10), 0, {"segmentation": [[40, 2, 55, 2, 55, 12, 40, 12]], "area": 150.0}, "kept"),
    8: (1, 2, box(20, 20, 8, 8), 0, {}, "no_pixel_in_box"),  # the oracle finds no "ghost"
    9: (2, 1, None, 0, {"segmentation": []}, "no_box"),
    10: (2, 1, box(5, 5, 30, 20), 0, {"segmentation": {}}, (5, 25, 5, 35)),
    11: (3, 1, box(1, 1, 5, 5), 0, {}, "image_unreadable"),  # image 3 is not an image
    12: (2, 1, box(-5, -5, 10, 10), 0, {"mask_source": "empty", "mask_empty": "x"}, (0, 5, 0, 5)),  # a rerun's input
}
MADE = [k for k, v in CASES.items() if isinstance(v[5], tuple)]
EMPTY = {k: v[5] for k, v in CASES.items() if isinstance(v[5], str) and v[5] != "kept"}


@pytest.fixture
def data(tmp_path) -> tuple[Path, Path]:
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    sizes = {1: (H, W), 2: (30, 50), 3: (20, 20), 4: (H, W)}
    for i, (h, w) in sizes.items():
        if i == 3:
            (images / "3.png").write_bytes(b"not an image")
        else:
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(images / f"{i}.png")
    anns = []
    for ann_id, (image_id, cat, bbox, crowd, extra, _) in CASES.items():
        ann = {"id": ann_id, "image_id": image_id, "category_id": cat, "iscrowd": crowd, **extra}
        if bbox is not None:
            ann["bbox"] = bbox
            ann.setdefault("area", float(bbox[2] * bbox[3]))
        anns.append(ann)
    doc = {"info": {"description": "box-only"}, "licenses": [],
           "images": [{"id": i, "file_name": f"{i}.png", "height": h, "width": w} for i, (h, w) in sizes.items()],
           "annotations": anns, "categories": [{"id": 1, "name": "cup"}, {"id": 2, "name": "ghost"}]}
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps(doc))
    return path, images


def decode(seg: dict) -> np.ndarray:
    from pycocotools import mask as mask_utils

    rle = {"size": seg["size"], "counts": seg["counts"].encode("ascii")}
    mask = mask_utils.decode(rle).astype(bool)
    assert int(mask_utils.area(rle)) == int(mask.sum())
    return mask


def check_masks_inside_boxes(doc: dict) -> None:
    """Every made mask: valid RLE (pycocotools) at the image's size, area its pixel count, inside its box."""
    sizes = {i["id"]: (i["height"], i["width"]) for i in doc["images"]}
    for a in doc["annotations"]:
        if a.get("mask_source") not in (None, "empty"):
            mask = decode(a["segmentation"])
            h, w = sizes[a["image_id"]]
            assert mask.shape == (h, w) and a["area"] == int(mask.sum()) > 0
            x, y, bw, bh = a["bbox"]
            c0, r0 = max(int(np.floor(x)), 0), max(int(np.floor(y)), 0)
            c1, r1 = min(int(np.ceil(x + bw)), w), min(int(np.ceil(y + bh)), h)
            assert not mask[:r0].any() and not mask[r1:].any() and not mask[:, :c0].any() and not mask[:, c1:].any()


def run_cli(dataset, images, out, *extra) -> int:
    return main(["masks-from-boxes", "--dataset", str(dataset), "--images", str(images), "--out", str(out), *extra])


# --- (a) the oracle: every annotation accounted for, hand-written masks ----------------------------------------

def test_every_annotation_accounted_for_and_masks_are_the_hand_written_ones(data, tmp_path, capsys):
    dataset, images = data
    out = tmp_path / "masks.json"
    assert run_cli(dataset, images, out, "--segmenter", "oracle") == 0
    printed = capsys.readouterr()
    summary = printed.out.splitlines()[0]  # how many masks were made, how many came out empty, and why
    assert f": 12 annotations: {len(MADE)} masks made (1 of crowd boxes), {len(EMPTY)} empty (" in summary
    assert "no_pixel_in_box 1, zero_area_box 1, outside_image 1, no_box 1, image_unreadable 1" in summary
    assert "unreadable image 3.png" in printed.err
    doc = json.loads(out.read_text())
    src = json.loads(dataset.read_text())
    assert [a["id"] for a in doc["annotations"]] == [a["id"] for a in src["annotations"]]  # none dropped, in order
    assert {k: doc[k] for k in ("info", "licenses", "images", "categories")} == \
        {k: src[k] for k in ("info", "licenses", "images", "categories")}
    by_id = {a["id"]: a for a in doc["annotations"]}
    for ann_id, (image_id, _, bbox, crowd, _, outcome) in CASES.items():
        a = by_id[ann_id]
        assert a.get("bbox") == bbox and a["iscrowd"] == crowd  # the box is kept as it was
        if outcome == "kept":
            assert a == next(s for s in src["annotations"] if s["id"] == ann_id)
        elif isinstance(outcome, str):
            assert a["mask_source"] == "empty" and a["mask_empty"] == outcome
            assert not a.get("segmentation")  # never an invented mask
        else:
            r0, r1, c0, c1 = outcome
            h, w = (H, W) if image_id == 1 else (30, 50)
            want = np.zeros((h, w), bool)
            want[r0:r1, c0:c1] = True
            assert np.array_equal(decode(a["segmentation"]), want), ann_id
            assert a["area"] == (r1 - r0) * (c1 - c0) and a["mask_source"] == "oracle" and "mask_empty" not in a
    check_masks_inside_boxes(doc)

    report = mfb.masks_from_boxes(dataset, images, out, segmenter="oracle", progress=False)  # a rerun: all resumed
    assert report.images_resumed == report.images == 3
    assert report.annotations == 12 and report.made == len(MADE) and report.had_mask == 1 and report.made_crowd == 1
    assert report.empty_by_reason == {"no_pixel_in_box": 1, "zero_area_box": 1, "outside_image": 1, "no_box": 1,
                                      "image_unreadable": 1}
    assert report.clipped == 2 and sorted(report.empty_annotations) == sorted(EMPTY.items())
    assert report.made + report.empty + report.had_mask == report.annotations


def test_output_works_with_pool_import_coco_and_augment(data, tmp_path, capsys):
    dataset, images = data
    out, pool, aug = tmp_path / "masks.json", tmp_path / "pool", tmp_path / "aug"
    assert run_cli(dataset, images, out, "--segmenter", "oracle") == 0
    capsys.readouterr()
    assert main(["pool", "import-coco", "--dataset", str(out), "--images", str(images), "--out", str(pool),
                 "--min-area", "10"]) == 0
    printed = capsys.readouterr().out
    assert "added 6" in printed  # the 5 made non-crowd masks with a readable image, and the polygon
    assert printed.count("no_mask_found") == 4  # the empties of images 1 and 2 (image 3 is unreadable)

    # box-only input: augment refuses it, naming masks-from-boxes
    assert main(["augment", "--dataset", str(dataset), "--images", str(images), "--pool", str(pool),
                 "--out", str(aug)]) == 2
    err = capsys.readouterr().err
    assert "have no mask" in err and "xpaste masks-from-boxes" in err and len(err.strip().splitlines()) == 1
    assert not aug.exists()

    assert main(["augment", "--dataset", str(out), "--images", str(images), "--pool", str(pool), "--out", str(aug),
                 "--copies", "1", "--seed", "0"]) == 0
    log = json.loads((aug / "augment_log.json").read_text())
    assert log["skipped_annotations_by_reason"] == {"no_mask_found": 4}
    assert sorted(int(a.rsplit("#", 1)[1]) for a, _ in log["skipped_annotations"]) == [4, 5, 8, 9]
    assert [f for f, _ in log["failed_images"]] == ["3.png"]
    written = json.loads((aug / "annotations.json").read_text())
    originals = sorted(a["source_annotation_id"] for a in written["annotations"] if not a["pasted"])
    assert set(originals) <= {1, 2, 3, 6, 7, 10, 12} and {10, 12} <= set(originals)


def test_resume_after_a_kill_gives_the_same_bytes_and_changed_inputs_are_refused(data, tmp_path, monkeypatch):
    dataset, images = data
    whole, killed = tmp_path / "whole.json", tmp_path / "killed.json"
    mfb.masks_from_boxes(dataset, images, whole, segmenter="oracle", shard_size=1, workers=2, progress=False)
    monkeypatch.setattr(OracleSegmenter, "interrupt_at", 2)  # the second image segmented: one shard done
    with pytest.raises(KeyboardInterrupt):
        mfb.masks_from_boxes(dataset, images, killed, segmenter="oracle", shard_size=1, progress=False)
    assert not killed.exists() and len(list(mfb.work_dir_of(killed).rglob("shard-*.parquet"))) == 1
    monkeypatch.setattr(OracleSegmenter, "interrupt_at", None)
    report = mfb.masks_from_boxes(dataset, images, killed, segmenter="oracle", shard_size=1, progress=False)
    assert report.images_resumed == 1 and killed.read_bytes() == whole.read_bytes()

    with pytest.raises(XPasteError, match=r"the segmenter \(--segmenter\) changed"):
        mfb.masks_from_boxes(dataset, images, killed, segmenter="oracle:other", shard_size=1, progress=False)
    doc = json.loads(dataset.read_text())
    doc["annotations"][0]["bbox"] = [11, 5, 20, 10]
    dataset.write_text(json.dumps(doc))
    assert run_cli(dataset, images, killed, "--segmenter", "oracle") == 2  # refused, one line
    assert killed.read_bytes() == whole.read_bytes()  # left as it was
    assert run_cli(dataset, images, killed, "--segmenter", "oracle", "--fresh") == 0
    assert json.loads(killed.read_text())["annotations"][0]["area"] == 200
    assert killed.read_bytes() != whole.read_bytes()


@pytest.mark.parametrize("args, message", [
    (["--segmenter", "grabcut"], "cannot be prompted with boxes"),
    (["--segmenter", "nosuch"], "unknown segmenter"),
    (["--segmenter", "oracle", "--box-batch", "0"], "--box-batch"),
])
def test_bad_options_are_refused_before_anything_is_written(data, tmp_path, capsys, args, message):
    dataset, images = data
    out = tmp_path / "o" / "masks.json"
    assert run_cli(dataset, images, out, *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "o").exists()


def test_outputs_that_are_inputs_or_not_ours_are_refused(data, tmp_path, capsys):
    dataset, images = data
    assert run_cli(dataset, images, dataset, "--segmenter", "oracle") == 2  # --out is the dataset json
    assert run_cli(dataset, images, images / "m.json", "--segmenter", "oracle") == 2  # inside the images folder
    foreign = tmp_path / "foreign.json"
    foreign.write_text("{}")
    assert run_cli(dataset, images, foreign, "--segmenter", "oracle") == 2
    assert "not written by masks-from-boxes" in capsys.readouterr().err
    assert foreign.read_text() == "{}"
    assert run_cli(dataset, images, foreign, "--segmenter", "oracle", "--fresh") == 0


def test_the_stage_job_from_a_config(data, tmp_path):
    from xpaste.stages.config import load_config
    from xpaste.stages.run import run_stage_job

    dataset, images = data
    out = tmp_path / "masks.json"
    config = load_config(None, [f"masks_from_boxes.dataset={dataset}", f"masks_from_boxes.images={images}",
                                f"masks_from_boxes.out={out}", "masks_from_boxes.segmenter=oracle"])
    report = run_stage_job("masks-from-boxes", config, progress=False)
    assert report.job == "masks-from-boxes" and report.counts["masks made"] == len(MADE)
    assert report.counts["empty"] == len(EMPTY) == len(report.failures) and out.is_file()


def test_reported_empty_is_not_box_only_and_is_skipped_with_its_reason(tmp_path):
    from xpaste.data.coco import (
        AnnotationError,
        CocoDataset,
        check_masks_present,
        decode_annotation_mask,
    )

    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4], "mask_source": "empty",
             "mask_empty": "no_pixel_in_box"},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4]}]
    doc = {"images": [{"id": 1, "file_name": "a.png", "height": 8, "width": 8}], "annotations": anns,
           "categories": [{"id": 1, "name": "cup"}]}
    with pytest.raises(XPasteError, match="1 of 2 annotations have no mask.*annotation id 2"):
        check_masks_present(CocoDataset.from_json(doc))
    check_masks_present(CocoDataset.from_json({**doc, "annotations": anns[:1]}))  # only reported ones: accepted
    with pytest.raises(AnnotationError) as err:
        decode_annotation_mask(anns[0], 8, 8)
    assert err.value.reason == "no_mask_found" and "no_pixel_in_box" in str(err.value)


def test_box_rule_by_hand():
    assert mfb.prompt_box([10, 5, 20, 10], 40, 60) == ([10.0, 5.0, 30.0, 15.0], None, False)
    assert mfb.prompt_box([-5, -5, 10, 10], 40, 60) == ([0.0, 0.0, 5.0, 5.0], None, True)
    assert mfb.prompt_box([60, 0, 5, 5], 40, 60) == (None, "outside_image", False)  # touches the edge only
    assert mfb.prompt_box([1, 1, -2, 3], 40, 60)[1] == "zero_area_box"
    for bad in (None, [1, 2, 3], [1, 2, 3, float("nan")], [1, 2, True, 4], "1,2,3,4"):
        assert mfb.prompt_box(bad, 40, 60)[1] == "no_box"
    assert mfb.box_pixels([2.5, 3.2, 7.5, 9.3]) == (2, 3, 8, 10)


# --- (b) tiny random SAM / SAM 2 / SAM 3 end to end ----------------------------------------------------------

@pytest.fixture(scope="module")
def sam_folders(tmp_path_factory) -> dict[str, str]:
    import torch
    from tiny_models import make_tiny_sam, make_tiny_sam2, make_tiny_sam3

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("sam-boxes")
    return {"sam": make_tiny_sam(str(root / "sam")), "sam2": make_tiny_sam2(str(root / "sam2")),
            "sam3": make_tiny_sam3(str(root / "sam3"))}


def sam_by_hand(kind: str, folder: str, image: np.ndarray, boxes: list[list[float]]) -> np.ndarray:
    """transformers run by hand: every box prompted alone (one call each), single-mask output, logit > 0."""
    import torch
    from transformers import Sam2Model, Sam2Processor, SamModel, SamProcessor

    model_cls, proc_cls = (SamModel, SamProcessor) if kind == "sam" else (Sam2Model, Sam2Processor)
    model, processor = model_cls.from_pretrained(folder).eval(), proc_cls.from_pretrained(folder)
    out = []
    for b in boxes:
        inputs = processor(images=[image], input_boxes=[[b]], return_tensors="pt")
        with torch.no_grad():
            pred = model(pixel_values=inputs["pixel_values"], input_boxes=inputs["input_boxes"],
                         multimask_output=False).pred_masks
        extra = [inputs["reshaped_input_sizes"]] if kind == "sam" else []
        out.append(processor.post_process_masks(pred, inputs["original_sizes"], *extra)[0][0, 0].numpy())
    return np.stack(out)


@pytest.mark.parametrize("kind", ["sam", "sam2"])
def test_tiny_sam_end_to_end(sam_folders, data, tmp_path, capsys, kind):
    dataset, images = data
    folder = sam_folders[kind]
    out = tmp_path / "masks.json"
    assert run_cli(dataset, images, out, "--segmenter", f"{kind}:{folder}", "--device", "cpu",
                   "--box-batch", "2") == 0
    assert "masks made" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    by_id = {a["id"]: a for a in doc["annotations"]}
    assert sorted(by_id) == sorted(CASES)
    check_masks_inside_boxes(doc)
    # the annotations the segmenter sees: a mask that is the hand-run model's, clipped to the box, or empty
    image1 = np.array(Image.open(images / "1.png").convert("RGB"))
    ids = [k for k in MADE if CASES[k][0] == 1] + [8]
    boxes = [mfb.prompt_box(CASES[k][2], H, W)[0] for k in ids]
    for ann_id, b, want in zip(ids, boxes, sam_by_hand(kind, folder, image1, boxes)):
        a = by_id[ann_id]
        clipped = mfb.clip_to_box(want, b)
        if clipped.any():
            assert a["mask_source"] == f"{kind}:{kind}" and np.array_equal(decode(a["segmentation"]), clipped)
        else:
            assert a["mask_source"] == "empty" and a["mask_empty"] == "no_pixel_in_box"
    for ann_id, reason in EMPTY.items():  # decided before any model runs
        if reason not in ("no_pixel_in_box",):
            assert by_id[ann_id]["mask_empty"] == reason
    assert by_id[7] == next(a for a in json.loads(dataset.read_text())["annotations"] if a["id"] == 7)


def test_tiny_sam3_box_prompt_is_score_times_iou_query(sam_folders):
    import torch
    from transformers import Sam3Model, Sam3Processor

    folder = sam_folders["sam3"]
    seg = segment.build_segmenter(f"sam3:{folder}", device="cpu")
    assert isinstance(seg, segment.BoxSegmenter)
    image = np.random.default_rng(3).integers(0, 256, (H, W, 3), dtype=np.uint8)
    boxes = np.array([[10.0, 5.0, 30.0, 15.0], [0.0, 0.0, 60.0, 40.0]])
    got = seg.segment_boxes([image], [boxes], [["baseball_bat", "cup"]])[0]
    assert got.shape == (2, H, W) and got.dtype == bool
    assert np.array_equal(got, seg.segment_boxes([image], [boxes], [["baseball_bat", "cup"]])[0])
    model, processor = Sam3Model.from_pretrained(folder).eval(), Sam3Processor.from_pretrained(folder)
    for b, name, mask in zip(boxes, ["baseball bat", "cup"], got):
        inputs = processor(images=[image], text=[name], input_boxes=[[b.tolist()]], input_boxes_labels=[[1]],
                           return_tensors="pt")
        with torch.no_grad():
            o = model(**inputs)
        scores = (o.pred_logits.sigmoid() * o.presence_logits.sigmoid())[0].double()
        px = o.pred_boxes[0].double() * torch.tensor([W, H, W, H], dtype=torch.float64)
        ix = (torch.minimum(px[:, 2], torch.tensor(b[2])) - torch.maximum(px[:, 0], torch.tensor(b[0]))).clamp(min=0)
        iy = (torch.minimum(px[:, 3], torch.tensor(b[3])) - torch.maximum(px[:, 1], torch.tensor(b[1]))).clamp(min=0)
        union = (px[:, 2] - px[:, 0]).clamp(min=0) * (px[:, 3] - px[:, 1]).clamp(min=0) + \
            (b[2] - b[0]) * (b[3] - b[1]) - ix * iy
        q = int((scores * ix * iy / union).argmax())
        up = torch.nn.functional.interpolate(o.pred_masks[0, q].sigmoid()[None, None], size=(H, W), mode="bilinear",
                                             align_corners=False)[0, 0]
        assert np.array_equal(mask, (up > 0.5).numpy())
    with pytest.raises(ValueError, match="text-prompted"):
        seg.segment_boxes([image], [boxes])


def test_segment_boxes_is_the_optional_protocol_of_the_sam_family(sam_folders):
    from xpaste.segment.grabcut import GrabCutSegmenter

    assert not hasattr(GrabCutSegmenter, "segment_boxes")
    for kind in ("sam", "sam2"):
        seg = segment.build_segmenter(f"{kind}:{sam_folders[kind]}", device="cpu")
        assert isinstance(seg, segment.BoxSegmenter)
        image = np.zeros((H, W, 3), np.uint8)
        assert seg.segment_boxes([image], [np.zeros((0, 4))])[0].shape == (0, H, W)
        with pytest.raises(ValueError, match="one per image"):
            seg.segment_boxes([image], [])
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # nothing downloaded
