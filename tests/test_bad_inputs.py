"""A corpus of broken inputs, generated here, driven through the real CLI.

Every case ends in one of two ways: a one-line error naming the offending file (exit 2, no traceback), or
the bad item is skipped and listed in the run log while the outputs stay valid (exit 0).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from coco_fixtures import write_dataset
from PIL import Image

from xpaste.cli import main
from xpaste.ops.masks import rle_decode, rle_encode, tight_box


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("base")
    ann, images = write_dataset(root, n_images=3)
    pool = root / "pool"
    assert main(["pool", "import-coco", str(ann), "--images", str(images), "--out", str(pool), "--min-area", "100"]) == 0
    return root, ann, images, pool


class Case:
    def __init__(self, tmp: Path, base):
        root, ann, images, pool = base
        self.images = tmp / "images"
        shutil.copytree(images, self.images)
        self.pool = tmp / "pool"
        shutil.copytree(pool, self.pool)
        self.doc = json.loads(ann.read_text())
        self.json = tmp / "dataset.json"
        self.out = tmp / "out"
        self.raw_json: bytes | None = None

    def image(self, i: int) -> Path:
        return self.images / self.doc["images"][i]["file_name"]

    def write(self) -> None:
        self.json.write_bytes(self.raw_json if self.raw_json is not None else json.dumps(self.doc).encode())


def _rgb(case: Case, i: int) -> np.ndarray:
    return np.array(Image.open(case.image(i)).convert("RGB"))


# ---- mutations: each edits the case in place -------------------------------------------------------------
def truncated_jpeg(c):
    data = c.image(0).read_bytes()
    c.image(0).write_bytes(data[: len(data) // 2])


def corrupt_png(c):
    c.image(1).write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(200)))


def zero_byte(c):
    c.image(0).write_bytes(b"")


def grayscale(c):
    Image.fromarray(_rgb(c, 0)[..., 0]).save(c.image(0), format="JPEG")


def cmyk(c):
    Image.fromarray(_rgb(c, 0)).convert("CMYK").save(c.image(0), format="JPEG")


def sixteen_bit(c):
    Image.fromarray((_rgb(c, 1)[..., 0].astype(np.uint16) * 257)).save(c.image(1), format="PNG")


def palette(c):
    Image.fromarray(_rgb(c, 1)).convert("P").save(c.image(1), format="PNG")


def exif_rotated(c):
    im = Image.fromarray(_rgb(c, 0))
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 CW" on display: the json's width/height describe the stored pixels instead
    im.save(c.image(0), format="JPEG", exif=exif)


def exif_rotated_displayed(c):
    im = Image.fromarray(np.rot90(_rgb(c, 0), 1))  # stored turned left; orientation 6 turns it back on display
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(c.image(0), format="JPEG", exif=exif)


def nan_in_image_record(c):
    c.doc["images"][0]["score"] = float("nan")  # json.dumps writes the token NaN


def infinity_in_category(c):
    c.doc["categories"][0]["weight"] = float("-inf")


def id_out_of_int64(c):
    c.doc["annotations"][0]["id"] = 2**63


def image_id_float(c):
    c.doc["images"][0]["id"] = 1.5


def size_mismatch(c):
    c.doc["images"][0]["width"] += 7


def malformed_json(c):
    c.raw_json = b'{"images": [1, 2'


def top_level_list(c):
    c.raw_json = b"[]"


def missing_annotations_key(c):
    del c.doc["annotations"]


def image_without_file_name(c):
    del c.doc["images"][1]["file_name"]


def zero_height(c):
    c.doc["images"][0]["height"] = 0


def rle_wrong_size(c):
    c.doc["annotations"][0]["segmentation"] = rle_encode(np.ones((5, 5), bool))


def short_polygon(c):
    c.doc["annotations"][0]["segmentation"] = [[1, 1, 5, 5]]


def polygon_outside(c):
    c.doc["annotations"][0]["segmentation"] = [[-50, -50, -40, -50, -45, -40]]


def missing_segmentation(c):
    del c.doc["annotations"][0]["segmentation"]


def zero_area_box(c):
    c.doc["annotations"][0]["bbox"] = [10, 10, 0, 0]


def negative_box(c):
    c.doc["annotations"][1]["bbox"] = [10, 10, -5, -3]


def unknown_category(c):
    c.doc["annotations"][0]["category_id"] = 999


def duplicate_image_ids(c):
    c.doc["images"][1]["id"] = c.doc["images"][0]["id"]


def duplicate_annotation_ids(c):
    c.doc["annotations"][1]["id"] = c.doc["annotations"][0]["id"]


def empty_dataset(c):
    c.doc["images"], c.doc["annotations"] = [], []


def file_name_escapes(c):
    c.doc["images"][0]["file_name"] = "../../../etc/passwd"


def file_name_absolute(c):
    c.doc["images"][0]["file_name"] = "/etc/hostname"


def file_missing(c):
    c.image(2).unlink()


def weird_category_names(c):
    for cat, name in zip(c.doc["categories"], ["a/b/../c", "nul\x00name", "ü" * 5000, "<script>'\"&"]):
        cat["name"] = name


def empty_pool(c):  # no index and no data: a pool with nothing in it (refused by augment, never pasted silently)
    shutil.rmtree(c.pool / "index")
    shutil.rmtree(c.pool / "data")


def pool_index_deleted(c):  # the index gone, the data left: a damaged pool, never read as an empty one
    shutil.rmtree(c.pool / "index")


def pool_files_deleted(c):
    for f in [*(c.pool / "instances").rglob("*.png"), *(c.pool / "data").glob("shard-*.bin")]:  # v1 / v2 pools
        f.unlink()


def pool_header_missing(c):
    (c.pool / "pool.json").unlink()


def pool_shard_corrupt(c):
    next((c.pool / "index").glob("*.parquet")).write_bytes(b"PAR1 garbage")


def pool_header_malformed(c):
    (c.pool / "pool.json").write_text("{not json")


# (name, mutation, expectation): ("error", text) or ("skip", text) or ("ok", None)
AUGMENT_CASES = [
    ("truncated_jpeg", truncated_jpeg, ("skip", "cannot decode")),
    ("corrupt_png", corrupt_png, ("skip", "cannot decode")),
    ("zero_byte", zero_byte, ("skip", "cannot decode")),
    ("grayscale", grayscale, ("ok", None)),
    ("cmyk", cmyk, ("ok", None)),
    ("sixteen_bit", sixteen_bit, ("ok", None)),
    ("palette", palette, ("ok", None)),
    ("exif_rotated", exif_rotated, ("skip", "as displayed")),
    ("exif_rotated_displayed", exif_rotated_displayed, ("ok", None)),
    ("nan_in_image_record", nan_in_image_record, ("error", "non-standard number NaN")),
    ("infinity_in_category", infinity_in_category, ("error", "non-standard number -Infinity")),
    ("id_out_of_int64", id_out_of_int64, ("error", "signed 64-bit")),
    ("image_id_float", image_id_float, ("error", "expected an integer")),
    ("size_mismatch", size_mismatch, ("skip", "dataset says")),
    ("malformed_json", malformed_json, ("error", "malformed json")),
    ("top_level_list", top_level_list, ("error", "expected an object")),
    ("missing_annotations_key", missing_annotations_key, ("error", "missing top-level key 'annotations'")),
    ("image_without_file_name", image_without_file_name, ("error", "has no 'file_name'")),
    ("zero_height", zero_height, ("error", "positive integer")),
    ("rle_wrong_size", rle_wrong_size, ("skip-annotation", "size")),
    ("short_polygon", short_polygon, ("skip-annotation", "polygon")),
    ("polygon_outside", polygon_outside, ("skip-annotation", "out_of_image")),
    ("missing_segmentation", missing_segmentation, ("error", "have no mask")),
    ("zero_area_box", zero_area_box, ("ok", None)),
    ("negative_box", negative_box, ("ok", None)),
    ("unknown_category", unknown_category, ("error", "unknown category id 999")),
    ("duplicate_image_ids", duplicate_image_ids, ("error", "duplicate image id")),
    ("duplicate_annotation_ids", duplicate_annotation_ids, ("error", "duplicate annotation id")),
    ("empty_dataset", empty_dataset, ("ok", None)),
    ("file_name_escapes", file_name_escapes, ("skip", "outside")),
    ("file_name_absolute", file_name_absolute, ("skip", "outside")),
    ("file_missing", file_missing, ("skip", "not found")),
    ("weird_category_names", weird_category_names, ("ok", None)),
    ("empty_pool", empty_pool, ("error", "no instances to paste")),
    ("pool_index_deleted", pool_index_deleted, ("error", "pool index is missing")),
    ("pool_files_deleted", pool_files_deleted, ("error", "data shard data/shard-000000.bin is missing")),
    ("pool_header_missing", pool_header_missing, ("error", "no pool.json")),
    ("pool_shard_corrupt", pool_shard_corrupt, ("error", "unreadable index part")),
    ("pool_header_malformed", pool_header_malformed, ("error", "malformed json")),
]


def check_output_valid(out: Path) -> dict:
    doc = json.loads((out / "annotations.json").read_text())
    ids = [a["id"] for a in doc["annotations"]]
    assert len(ids) == len(set(ids))
    images = {i["id"]: i for i in doc["images"]}
    for a in doc["annotations"]:
        mask = rle_decode(a["segmentation"])
        assert a["area"] == int(mask.sum()) > 0
        x1, y1, x2, y2 = tight_box(mask)
        assert a["bbox"] == [x1, y1, x2 - x1, y2 - y1] and a["image_id"] in images
    for img in doc["images"]:
        with Image.open(out / "images" / img["file_name"]) as im:
            assert im.size == (img["width"], img["height"]) and im.mode == "RGB"
    return doc


@pytest.mark.parametrize("name,mutate,expect", AUGMENT_CASES, ids=[c[0] for c in AUGMENT_CASES])
def test_augment_bad_input(name, mutate, expect, base, tmp_path, capsys):
    case = Case(tmp_path, base)
    mutate(case)
    case.write()
    code = main(["augment", "--dataset", str(case.json), "--images", str(case.images), "--pool", str(case.pool),
                 "--out", str(case.out), "--num-paste", "3", "--seed", "0"])
    captured = capsys.readouterr()
    kind, text = expect
    if kind == "error":
        assert code == 2, captured
        lines = [line for line in captured.err.splitlines() if line.startswith("xpaste: error:")]
        assert len(lines) == 1 and text in lines[0], captured.err
        assert "Traceback" not in captured.err
        assert str(case.json) in lines[0] or str(case.pool) in lines[0]
        assert not (case.out / "annotations.json").exists()
        return
    assert code == 0, captured
    doc = check_output_valid(case.out)
    log = json.loads((case.out / "augment_log.json").read_text())
    if kind == "skip":  # a failed image, or an unreadable cut-out skipped by the paste (the image is kept)
        assert any(text in why for _, why in log["failed_images"] + log["skipped_pastes"]), log
        assert text in captured.err
    elif kind == "skip-annotation":
        assert any(text in why for _, why in log["skipped_annotations"]), log
        reason = next(why for _, why in log["skipped_annotations"] if text in why).split(":")[0]
        assert log["skipped_annotations_by_reason"].get(reason, 0) >= 1, log
    else:
        assert not log["failed_images"]
        assert len(doc["images"]) == len(case.doc["images"])


STATS_CASES = [("malformed_json", malformed_json, "malformed json"), ("unknown_category", unknown_category, "999"),
               ("weird_category_names", weird_category_names, None), ("empty_dataset", empty_dataset, None),
               ("negative_box", negative_box, None)]


@pytest.mark.parametrize("name,mutate,error", STATS_CASES, ids=[c[0] for c in STATS_CASES])
def test_stats_bad_input(name, mutate, error, base, tmp_path, capsys):
    case = Case(tmp_path, base)
    mutate(case)
    case.write()
    code = main(["stats", str(case.json), "--out", str(tmp_path / "stats.json")])
    err = capsys.readouterr().err
    if error:
        assert code == 2 and error in err and str(case.json) in err and "Traceback" not in err
    else:
        assert code == 0 and json.loads((tmp_path / "stats.json").read_text())["format"] == "xpaste-stats"


def test_import_coco_skips_bad_images_and_annotations(base, tmp_path, capsys):
    case = Case(tmp_path, base)
    truncated_jpeg(case)  # image 0
    second = next(a for a in case.doc["annotations"] if a["image_id"] == case.doc["images"][1]["id"])
    second["segmentation"] = rle_encode(np.ones((5, 5), bool))
    weird_category_names(case)
    case.write()
    out = tmp_path / "newpool"
    assert main(["pool", "import-coco", str(case.json), "--images", str(case.images), "--out", str(out),
                 "--min-area", "100"]) == 0
    text = capsys.readouterr().out
    assert "cannot decode" in text and "size" in text
    from xpaste.pool.store import InstancePool

    pool = InstancePool.open(out)
    assert len(pool) > 0 and all(pool.rgba(i)[..., 3].any() for i in range(len(pool)))
    assert "ü" * 5000 in pool.categories.values()  # names are data, never paths
    assert all(p.parent.name.isdigit() for p in (out / "instances").rglob("*.png"))


def test_debug_flag_shows_the_traceback(base, tmp_path):
    case = Case(tmp_path, base)
    malformed_json(case)
    case.write()
    from xpaste.errors import XPasteError

    with pytest.raises(XPasteError):
        main(["--debug", "stats", str(case.json)])
