"""`xpaste pool import-coco` + `xpaste augment` end to end: validity, determinism, resume, bad images."""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import pytest
from coco_fixtures import write_dataset

from xpaste.cli import main
from xpaste.ops.masks import rle_decode, tight_box


def digest(folder: Path) -> dict[str, str]:
    """Every file's sha256, the internal shard tables included (they must match too)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    ann, images = write_dataset(root, n_images=5)
    pool = root / "pool"
    assert main(["pool", "import-coco", str(ann), "--images", str(images), "--out", str(pool),
                 "--min-area", "100"]) == 0
    return ann, images, pool


def run_augment(dataset, out, *extra):
    ann, images, pool = dataset
    return main(["augment", "--dataset", str(ann), "--images", str(images), "--pool", str(pool), "--out", str(out),
                 "--copies", "2", "--seed", "7", "--max-paste", "6", *extra])


def check_valid(out: Path, source: Path) -> dict:
    doc = json.loads((out / "annotations.json").read_text())
    src = json.loads(source.read_text())
    assert doc["categories"] == src["categories"] and doc["licenses"] == src["licenses"]
    ids = [a["id"] for a in doc["annotations"]]
    assert len(ids) == len(set(ids)) and len({i["id"] for i in doc["images"]}) == len(doc["images"])
    images = {i["id"]: i for i in doc["images"]}
    for a in doc["annotations"]:
        img = images[a["image_id"]]
        mask = rle_decode(a["segmentation"])
        assert mask.shape == (img["height"], img["width"])
        assert a["area"] == int(mask.sum()) > 0
        x1, y1, x2, y2 = tight_box(mask)
        assert a["bbox"] == [x1, y1, x2 - x1, y2 - y1]
        assert isinstance(a["pasted"], bool) and (("instance_id" in a) == a["pasted"])
        if a["pasted"]:
            assert a["category_id"] not in img["neg_category_ids"]
    for img in doc["images"]:
        assert (out / "images" / img["file_name"]).is_file()
        assert "not_exhaustive_category_ids" in img and "source_image_id" in img
    assert any(a["pasted"] for a in doc["annotations"]) and any(not a["pasted"] for a in doc["annotations"])
    assert any(a["iscrowd"] == 1 for a in doc["annotations"])  # crowd regions are preserved
    return doc


def test_augment_is_valid_and_loads_in_pycocotools_and_lvis(dataset, tmp_path):
    out = tmp_path / "out"
    assert run_augment(dataset, out) == 0
    doc = check_valid(out, dataset[0])
    assert len(doc["images"]) == 10

    from pycocotools.coco import COCO

    coco = COCO(str(out / "annotations.json"))
    assert len(coco.getAnnIds()) == len(doc["annotations"])
    for ann in coco.loadAnns(coco.getAnnIds()[:5]):
        assert coco.annToMask(ann).sum() == ann["area"]
    # the lvis package needs a numpy-2 shim (np.float was removed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from lvis import LVIS
    lvis_api = LVIS(str(out / "annotations.json"))
    assert len(lvis_api.get_ann_ids()) == len(doc["annotations"])


def test_same_seed_same_output_whatever_workers(dataset, tmp_path):
    assert run_augment(dataset, tmp_path / "w1", "--workers", "1") == 0
    assert run_augment(dataset, tmp_path / "w2", "--workers", "2") == 0
    assert digest(tmp_path / "w1") == digest(tmp_path / "w2")
    assert run_augment(dataset, tmp_path / "s8", "--seed", "8") == 0
    assert digest(tmp_path / "s8")["annotations.json"] != digest(tmp_path / "w1")["annotations.json"]


def test_resume_redoes_only_missing_work(dataset, tmp_path):
    out = tmp_path / "out"
    assert run_augment(dataset, out) == 0
    full = digest(out)
    # simulate a kill: the final json and some finished shards never happened; stray temp files remain
    (out / "annotations.json").unlink()
    shards = sorted((out / ".xpaste" / "augment").glob("shard-*.parquet"))
    assert len(shards) >= 1
    kept = shards[:1]
    for p in shards[1:]:
        p.unlink()
    (out / "images" / ".000000000009.jpg.123.tmp").write_bytes(b"partial")
    before = {p: p.stat().st_mtime_ns for p in kept}
    assert run_augment(dataset, out) == 0
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())  # finished shards were not redone
    resumed = digest(out)
    assert not (out / "images" / ".000000000009.jpg.123.tmp").exists()  # stale temp files are cleaned
    resumed.pop("augment_log.json"), full.pop("augment_log.json")  # the log counts resumed work
    assert resumed == full
    # a resume with different settings is refused instead of mixing two configurations
    assert run_augment(dataset, out, "--blend", "alpha") == 2


def test_bad_images_are_reported_and_skipped(dataset, tmp_path, capsys):
    ann, images, pool = dataset
    broken = tmp_path / "images"
    import shutil

    shutil.copytree(images, broken)
    (broken / "img_0.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (broken / "img_2.jpg").write_bytes(b"")
    out = tmp_path / "out"
    assert main(["augment", "--dataset", str(ann), "--images", str(broken), "--pool", str(pool), "--out", str(out),
                 "--seed", "1", "--blend", "gaussian"]) == 0
    log = json.loads((out / "augment_log.json").read_text())
    assert len(log["failed_images"]) == 2 and {f for f, _ in log["failed_images"]} == {"img_0.jpg", "img_2.jpg"}
    doc = json.loads((out / "annotations.json").read_text())
    assert len(doc["images"]) == 3
    assert "img_0.jpg" in capsys.readouterr().err


def test_unknown_pool_category_is_a_clear_error(dataset, tmp_path, capsys):
    ann, images, pool = dataset
    doc = json.loads(ann.read_text())
    doc["categories"] = [c for c in doc["categories"] if c["id"] != 1]
    doc["annotations"] = [a for a in doc["annotations"] if a["category_id"] != 1]
    other = tmp_path / "fewer.json"
    other.write_text(json.dumps(doc))
    code = main(["augment", "--dataset", str(other), "--images", str(images), "--pool", str(pool),
                 "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err
    assert "categories [1]" in err and "Traceback" not in err


def test_annotations_not_written_are_counted_by_reason(tmp_path, capsys):
    """Broken source annotations are skipped, each counted once (not once per copy) under its reason code,
    in the console summary and in augment_log.json; the counts come from the annotations broken here."""
    ann, images = write_dataset(tmp_path / "data", n_images=4)
    pool = tmp_path / "pool"
    assert main(["pool", "import-coco", str(ann), "--images", str(images), "--out", str(pool),
                 "--min-area", "100"]) == 0
    doc = json.loads(ann.read_text())
    broken = {"degenerate_polygon": [], "size_mismatch": []}
    for a in doc["annotations"][:2]:
        a["segmentation"] = [[1.0, 2.0, 3.0, 4.0]]  # two points: no polygon
        broken["degenerate_polygon"].append(a["id"])
    a = doc["annotations"][3]
    a["segmentation"] = {"size": [7, 9], "counts": [63]}
    broken["size_mismatch"].append(a["id"])
    ann.write_text(json.dumps(doc))
    capsys.readouterr()
    assert main(["augment", "--dataset", str(ann), "--images", str(images), "--pool", str(pool),
                 "--out", str(tmp_path / "out"), "--copies", "3"]) == 0
    out = capsys.readouterr().out
    assert "source annotations not written: 3 (degenerate_polygon: 2, size_mismatch: 1)" in out
    log = json.loads((tmp_path / "out" / "augment_log.json").read_text())
    assert log["skipped_annotations_by_reason"] == {k: len(v) for k, v in broken.items()}
    assert sorted(int(item.split("#")[1]) for item, _ in log["skipped_annotations"]) == sorted(
        broken["degenerate_polygon"] + broken["size_mismatch"])
    written = json.loads((tmp_path / "out" / "annotations.json").read_text())
    sources = {a.get("source_annotation_id") for a in written["annotations"]}
    assert not sources & set(broken["degenerate_polygon"] + broken["size_mismatch"])
