"""augment's outcome when images fail or originals are hidden: every image failing is an error (exit 2, one line
naming the first failure, the failures still listed), a partial failure is not; originals dropped by the paste's
occlusion rule are counted (per source annotation per copy) in the summary and augment_log.json, checked
against the source and output jsons."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from coco_fixtures import write_dataset

from xpaste.cli import main


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    ann, images = write_dataset(root, n_images=4)
    pool = root / "pool"
    assert main(["pool", "import-coco", str(ann), "--images", str(images), "--out", str(pool),
                 "--min-area", "100"]) == 0
    return ann, images, pool


def augment(ann, images, pool, out, *extra) -> int:
    return main(["augment", "--dataset", str(ann), "--images", str(images), "--pool", str(pool), "--out", str(out),
                 *extra])


def break_all(kind: str, ann: Path, images: Path, tmp: Path) -> tuple[Path, Path]:
    """A copy of the dataset where every image fails: unreadable bytes, empty files, or a json that records
    another size than the files have (what EXIF-rotated photos give)."""
    import shutil

    doc = json.loads(ann.read_text())
    folder = tmp / "images"
    shutil.copytree(images, folder)
    for img in doc["images"]:
        if kind == "garbage":
            (folder / img["file_name"]).write_bytes(b"\xff\xd8\xff garbage")
        elif kind == "empty":
            (folder / img["file_name"]).write_bytes(b"")
        else:
            img["width"], img["height"] = img["height"] + 7, img["width"] + 3
    for a in doc["annotations"] if kind == "size" else []:
        a["segmentation"] = [[1.0, 1.0, 5.0, 1.0, 5.0, 5.0, 1.0, 5.0]]  # polygons: valid at any size
    path = tmp / "broken.json"
    path.write_text(json.dumps(doc))
    return path, folder


@pytest.mark.parametrize("kind", ["garbage", "empty", "size"])
def test_every_image_failing_is_an_error_naming_the_first(data, tmp_path, capsys, kind):
    ann, images, pool = data
    broken, folder = break_all(kind, ann, images, tmp_path)
    capsys.readouterr()
    out = tmp_path / "out"
    assert augment(broken, folder, pool, out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    names = [img["file_name"] for img in json.loads(broken.read_text())["images"]]
    errors = [line for line in err if "no image could be written" in line]
    assert len(errors) == 1 and f"({names[0]})" in errors[0] and "hint" in errors[0] and "Traceback" not in err
    assert all(any(f"skipped {n}" in line for line in err) for n in names)  # each failure still reported
    log = json.loads((out / "augment_log.json").read_text())
    assert [f for f, _ in log["failed_images"]] == names
    assert not (out / "annotations.json").exists()  # no empty dataset that looks like a result


def test_a_partial_failure_still_exits_zero(data, tmp_path):
    import shutil

    ann, images, pool = data
    folder = tmp_path / "images"
    shutil.copytree(images, folder)
    first = json.loads(ann.read_text())["images"][0]["file_name"]
    (folder / first).write_bytes(b"")
    assert augment(ann, folder, pool, tmp_path / "out") == 0
    doc = json.loads((tmp_path / "out" / "annotations.json").read_text())
    assert len(doc["images"]) == 3


@pytest.mark.parametrize("seed,copies", [(0, 2), (3, 1), (11, 3)])
def test_occluded_originals_are_counted_per_copy(data, tmp_path, capsys, seed, copies):
    ann, images, pool = data
    out = tmp_path / "out"
    capsys.readouterr()
    assert augment(ann, images, pool, out, "--copies", str(copies), "--seed", str(seed), "--max-paste", "20") == 0
    printed = capsys.readouterr().out
    source = json.loads(ann.read_text())
    written = json.loads((out / "annotations.json").read_text())
    # the oracle: per output image, its source image's annotations that do not appear among its originals
    by_image: dict[int, set] = {}
    for a in source["annotations"]:
        by_image.setdefault(a["image_id"], set()).add(a["id"])
    kept: dict[int, set] = {img["id"]: set() for img in written["images"]}
    for a in written["annotations"]:
        if not a["pasted"]:
            kept[a["image_id"]].add(a["source_annotation_id"])
    expected = sum(len(by_image.get(img["source_image_id"], set()) - kept[img["id"]]) for img in written["images"])
    log = json.loads((out / "augment_log.json").read_text())
    assert log["skipped_annotations_by_reason"] == {}  # no invalid annotation in this fixture: all are counted
    assert expected > 0  # with 20 pastes some original is hidden (else this test could not fail)
    assert log["occluded_annotations"] == {"count": expected, "counted": "per source annotation per copy",
                                           "reason": "occluded"}
    assert f"{expected} original annotations occluded by pasted objects" in printed
