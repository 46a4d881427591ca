"""Datasets at load: no annotation lost silently, bad files refused in one line.

Masks are checked against pycocotools' own `COCO.annToMask` (the rasteriser every COCO tool uses); the
polygon-part rule is detectron2's (`load_coco_json` drops parts with an odd number or fewer than 6
coordinates), whose result pycocotools gives for the annotation without those parts.
"""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from xpaste.data.coco import (
    SKIP_REASONS,
    AnnotationError,
    check_masks_present,
    count_skipped_by_reason,
    decode_annotation_mask,
    load_coco,
    load_sample,
    read_json_finite,
    skip_reason,
)
from xpaste.errors import XPasteError

H, W = 30, 40


def _pycoco_mask(doc: dict, ann_id: int) -> np.ndarray:
    api = COCO()
    api.dataset = copy.deepcopy(doc)
    api.createIndex()
    return api.annToMask(api.anns[ann_id]).astype(bool)


def _doc(anns: list[dict]) -> dict:
    return {"images": [{"id": 1, "file_name": "a.png", "height": H, "width": W}],
            "categories": [{"id": 1, "name": "thing"}], "annotations": anns}


def _write(tmp_path, doc) -> tuple:
    (tmp_path / "im").mkdir(exist_ok=True)
    Image.fromarray(np.full((H, W, 3), 90, np.uint8)).save(tmp_path / "im" / "a.png")
    p = tmp_path / "d.json"
    p.write_text(json.dumps(doc))
    return load_coco(p), tmp_path / "im"


def _random_polygon(rng) -> list[float]:
    cx, cy = rng.uniform(5, W - 5), rng.uniform(5, H - 5)
    n = int(rng.integers(3, 8))
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    r = rng.uniform(2, 9, n)
    return [round(float(v), 2) for a, rr in zip(angles, r) for v in (cx + rr * np.cos(a), cy + rr * np.sin(a))]


# ------------------------------------------------------------------------------ multi-part polygons
@pytest.mark.parametrize("seed", range(8))
def test_multipart_polygon_keeps_valid_parts_like_pycocotools(seed):
    """Degenerate parts (2 points, 1 point) after valid ones: pycocotools draws no pixel for them."""
    rng = np.random.default_rng(seed)
    parts = [_random_polygon(rng), [3.0, 4.0, 9.0, 12.0], _random_polygon(rng), [7.0, 7.0]]
    ann = {"id": 5, "image_id": 1, "category_id": 1, "segmentation": parts}
    ours = decode_annotation_mask(ann, H, W)
    truth = _pycoco_mask(_doc([ann]), 5)  # the raw annotation, degenerate parts included
    assert truth.any()
    np.testing.assert_array_equal(ours, truth)


@pytest.mark.parametrize("seed", range(4))
def test_odd_or_leading_short_parts_dropped_as_detectron2_does(seed):
    """An odd-length part, or a 4-number first part (which pycocotools would read as a box), is left out."""
    rng = np.random.default_rng(100 + seed)
    good = [_random_polygon(rng), _random_polygon(rng)]
    for bad in ([[1.0, 1.0, 20.0, 1.0]] + good, good[:1] + [[5.0, 5.0, 25.0, 5.0, 25.0, 25.0, 5.0]] + good[1:]):
        ann = {"id": 9, "image_id": 1, "category_id": 1, "segmentation": bad}
        clean = {"id": 9, "image_id": 1, "category_id": 1, "segmentation": good}
        np.testing.assert_array_equal(decode_annotation_mask(ann, H, W), _pycoco_mask(_doc([clean]), 9))


def test_trimmed_parts_are_listed_and_the_annotation_kept(tmp_path):
    ann = {"id": 3, "image_id": 1, "category_id": 1, "segmentation": [[2, 2, 12, 2, 12, 12, 2, 12], [1, 1, 4, 4]]}
    ds, images = _write(tmp_path, _doc([ann]))
    s = load_sample(ds, 1, images)
    assert s.targets.extra["ann_id"].tolist() == [3] and s.meta["skipped_annotations"] == []
    assert len(s.meta["trimmed_annotations"]) == 1 and s.meta["trimmed_annotations"][0][0] == 3
    assert "degenerate_polygon" in s.meta["trimmed_annotations"][0][1]


# ------------------------------------------------------------------------------ reasons
REASON_CASES = [
    ("no_mask", {"bbox": [1, 1, 5, 5]}),
    ("no_mask", {"segmentation": [], "bbox": [1, 1, 5, 5]}),
    ("no_mask", {"segmentation": None}),
    ("no_mask", {"segmentation": {}}),
    ("degenerate_polygon", {"segmentation": [[1, 1, 5, 5]]}),
    ("degenerate_polygon", {"segmentation": [[1, 1, 5, 5, 7], [2, 2]]}),
    ("invalid_segmentation", {"segmentation": [[1, 1, 5, "x", 7, 7]]}),
    ("invalid_segmentation", {"segmentation": {"size": [H, W], "counts": [5, 7]}}),
    ("invalid_segmentation", {"segmentation": "polygon"}),
    ("size_mismatch", {"segmentation": {"size": [H + 1, W], "counts": [(H + 1) * W]}}),
    ("out_of_image", {"segmentation": [[50, 2, 60, 2, 60, 9]]}),
    ("out_of_image", {"segmentation": [[-9, -9, -2, -9, -2, -2]]}),
    ("empty_mask", {"segmentation": [[5, 5, 10, 5, 15, 5]]}),  # collinear: no area
    ("empty_mask", {"segmentation": {"size": [H, W], "counts": [H * W]}}),
]


def test_every_annotation_is_kept_or_skipped_with_its_reason(tmp_path):
    anns = [{"id": 100 + i, "image_id": 1, "category_id": 1, **fields} for i, (_, fields) in enumerate(REASON_CASES)]
    anns.append({"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[2, 2, 12, 2, 12, 12]]})
    ds, images = _write(tmp_path, _doc(anns))
    s = load_sample(ds, 1, images)
    skipped = dict(s.meta["skipped_annotations"])
    assert s.targets.extra["ann_id"].tolist() == [1]
    assert sorted(skipped) == [100 + i for i in range(len(REASON_CASES))]  # none lost silently
    for i, (reason, _) in enumerate(REASON_CASES):
        why = skipped[100 + i]
        assert why.startswith(f"{reason}: ") and skip_reason(why) == reason and str(100 + i) in why, why
    # pycocotools agrees that the skipped ones that it can rasterise have no pixel inside the image
    for i, (reason, fields) in enumerate(REASON_CASES):
        if reason in ("out_of_image", "empty_mask"):
            assert not _pycoco_mask(_doc(anns), 100 + i).any()
    counts = count_skipped_by_reason(s.meta["skipped_annotations"])
    assert counts == {"no_mask": 4, "degenerate_polygon": 2, "invalid_segmentation": 3, "size_mismatch": 1,
                      "out_of_image": 2, "empty_mask": 2}
    assert list(counts) == [r for r in SKIP_REASONS if r in counts]  # fixed order


def test_decode_raises_annotation_error_with_reason():
    with pytest.raises(AnnotationError) as info:
        decode_annotation_mask({"id": 7, "bbox": [0, 0, 2, 2]}, H, W)
    assert info.value.reason == "no_mask" and "7" in str(info.value) and isinstance(info.value, ValueError)


def test_count_skipped_by_reason_unknown_text_is_invalid():
    assert count_skipped_by_reason([(1, "no_mask: a"), (2, "something else"), (3, "no_mask: b")]) == \
        {"no_mask": 2, "invalid_segmentation": 1}
    assert count_skipped_by_reason([]) == {}


# ------------------------------------------------------------------------------ mask-less datasets
def test_check_masks_present_one_line(tmp_path):
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[2, 2, 12, 2, 12, 12]]},
            {"id": 2, "image_id": 1, "category_id": 1, "segmentation": [], "bbox": [1, 1, 4, 4]},
            {"id": 3, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4]}]
    ds, _ = _write(tmp_path, _doc(anns))
    with pytest.raises(XPasteError) as info:
        check_masks_present(ds)
    text = str(info.value)
    assert "2 of 3 annotations have no mask" in text and "annotation id 2" in text and "\n" not in text
    assert info.value.path == str(tmp_path / "d.json") and info.value.hint
    ds, _ = _write(tmp_path, _doc(anns[:1]))
    check_masks_present(ds)  # all masked: nothing raised


# ------------------------------------------------------------------------------ refused at load
@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("where", ["info", "image", "category", "annotation"])
def test_non_standard_numbers_refused_naming_file_token_and_line(tmp_path, token, where):
    doc = _doc([{"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[2, 2, 12, 2, 12, 12]]}])
    doc["info"] = {"year": 2024}
    target = {"info": doc["info"], "image": doc["images"][0], "category": doc["categories"][0],
              "annotation": doc["annotations"][0]}[where]
    target["extra"] = "__X__"
    text = json.dumps(doc, indent=1).replace('"__X__"', token)
    json.loads(text)  # Python's json itself accepts the token: the case is real
    p = tmp_path / "d.json"
    p.write_text(text)
    line = next(i for i, row in enumerate(text.splitlines(), 1) if token in row)
    with pytest.raises(XPasteError) as info:
        load_coco(p)
    assert info.value.message == f"the json contains the non-standard number {token} (line {line})"
    assert info.value.path == str(p)


def test_nan_inside_a_string_is_fine(tmp_path):
    doc = _doc([])
    doc["categories"][0]["name"] = "NaN"
    doc["info"] = {"note": ": NaN, Infinity"}
    p = tmp_path / "d.json"
    p.write_text(json.dumps(doc))
    assert load_coco(p).categories[0]["name"] == "NaN"
    assert read_json_finite(p)["info"]["note"] == ": NaN, Infinity"


@pytest.mark.parametrize("where, value, ok", [
    ("annotation", 2**63 - 1, True), ("annotation", -(2**63), True), ("annotation", 2**63, False),
    ("annotation", -(2**63) - 1, False), ("image", 2**63, False), ("image", 2**64 + 5, False),
    ("category", 2**63, False), ("image", 2**63 - 1, True), ("annotation", 10**30, False),
])
def test_ids_must_fit_int64(tmp_path, where, value, ok):
    doc = _doc([{"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[2, 2, 12, 2, 12, 12]]}])
    if where == "annotation":
        doc["annotations"][0]["id"] = value
    elif where == "image":
        doc["images"][0]["id"] = doc["annotations"][0]["image_id"] = value
    else:
        doc["categories"][0]["id"] = doc["annotations"][0]["category_id"] = value
    p = tmp_path / "d.json"
    p.write_text(json.dumps(doc))
    # numpy's int64 is the independent range: the values it holds load, the others are refused
    try:
        np.array([value], dtype=np.int64)
        fits = True
    except OverflowError:
        fits = False
    assert fits == ok
    if ok:
        assert len(load_coco(p).annotations) == 1
    else:
        with pytest.raises(XPasteError, match="signed 64-bit") as info:
            load_coco(p)
        assert info.value.path == str(p) and str(value) in info.value.message


@pytest.mark.parametrize("value", [1.0, "1", True, None])
def test_non_integer_ids_refused(tmp_path, value):
    doc = _doc([{"id": value, "image_id": 1, "category_id": 1, "segmentation": [[2, 2, 12, 2, 12, 12]]}])
    p = tmp_path / "d.json"
    p.write_text(json.dumps(doc))
    with pytest.raises(XPasteError, match="expected an integer"):
        load_coco(p)


def test_image_size_check_uses_the_displayed_size(tmp_path):
    """A stored 40x30 JPEG with orientation 6 is displayed 30x40: the json must say 30x40."""
    (tmp_path / "im").mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "im" / "a.png", exif=exif)
    doc = _doc([])
    doc["images"][0].update(height=W, width=H)
    p = tmp_path / "d.json"
    p.write_text(json.dumps(doc))
    assert load_sample(load_coco(p), 1, tmp_path / "im").image.shape == (W, H, 3)
    doc["images"][0].update(height=H, width=W)
    p.write_text(json.dumps(doc))
    with pytest.raises(XPasteError, match=f"{H}x{W} \\(WxH, as displayed\\) but the dataset says {W}x{H}"):
        load_sample(load_coco(p), 1, tmp_path / "im")


def test_rle_area_matches_pycocotools_for_kept_annotations(tmp_path):
    """The masks load_sample keeps are exactly pycocotools' (pixel count = mask.area of annToRLE)."""
    rng = np.random.default_rng(5)
    anns = [{"id": i + 1, "image_id": 1, "category_id": 1, "segmentation": [_random_polygon(rng)]} for i in range(6)]
    ds, images = _write(tmp_path, _doc(anns))
    s = load_sample(ds, 1, images)
    api = COCO()
    api.dataset = copy.deepcopy(_doc(anns))
    api.createIndex()
    for m, aid in zip(s.targets.masks, s.targets.extra["ann_id"]):
        assert int(m.sum()) == int(mask_utils.area(api.annToRLE(api.anns[int(aid)])))


def _compressed_counts_reference(counts: str) -> list[int]:
    """maskApi.c's rleFrString, transcribed character by character (the naive reference)."""
    out, p = [], 0
    while p < len(counts):
        x = k = 0
        more = True
        while more:
            c = ord(counts[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x -= 1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        out.append(x)
    return out


@pytest.mark.parametrize("seed", range(6))
def test_compressed_counts_equal_pycocotools_runs(seed):
    """The vectorised parser equals the transcription of maskApi.c and the runs pycocotools decodes."""
    from pycocotools import mask as mask_utils

    from xpaste.ops.masks import _compressed_counts

    r = np.random.default_rng(seed)
    h, w = int(r.integers(1, 300)), int(r.integers(1, 300))
    mask = np.asfortranarray(r.random((h, w)) < r.random() ** 3)
    mask[: int(r.integers(0, h)), : int(r.integers(0, w))] = True  # long runs as well as short ones
    counts = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode()
    runs = _compressed_counts(counts, 1)
    assert runs.tolist() == _compressed_counts_reference(counts)
    assert int(runs.sum()) == h * w
    decoded = np.repeat(np.arange(len(runs)) % 2 == 1, runs).reshape(w, h).T
    assert np.array_equal(decoded, mask)


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_every_json_the_package_reads_refuses_nonstandard_numbers(tmp_path, token):
    """Stats files and pool.json go through the same reader as datasets: one line naming file and line."""
    from xpaste.data.stats import resolve_scale_prior
    from xpaste.errors import XPasteError
    from xpaste.pool.store import InstancePool

    stats = tmp_path / "stats.json"
    stats.write_text('{"format": "xpaste-stats", "version": 1,\n "categories": [{"id": 1, "scale_mean": %s}]}' % token)
    with pytest.raises(XPasteError, match=f"non-standard number {token} \\(line 2\\)"):
        resolve_scale_prior(stats)
    pool = tmp_path / "pool"
    pool.mkdir()
    (pool / "pool.json").write_text('{"format": "xpaste-pool", "version": 2, "score": %s}' % token)
    with pytest.raises(XPasteError, match=token) as err:
        InstancePool.open(pool)
    assert "\n" not in str(err.value)
