"""What the pool tells its user: a bad cut-out reported once, imports that import nothing refused, header
errors with a hint, category-name hints that name what exists, CLI hints that name CLI commands."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from coco_fixtures import write_dataset

from xpaste.cli import main
from xpaste.errors import XPasteError
from xpaste.pool.store import CutoutError, InstancePool
from xpaste.pool.writer import PoolWriter

CATS = [{"id": 1, "name": "cup"}, {"id": 2, "name": "cat/dog"}, {"id": 3, "name": "fire_hydrant"}]


def _cutout(seed: int, h: int = 24, w: int = 30) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rgba = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    return rgba


def _pool(root, n=4, cats=CATS):
    with PoolWriter.create(root, cats) as w:
        for i in range(n):
            w.add(_cutout(i), cats[i % len(cats)]["id"], crop=False)
    return root


def _zero_row(root, row):
    rec = InstancePool.open(root).records().to_pylist()[row]
    shard = root / rec["path"]
    data = bytearray(shard.read_bytes())
    data[rec["offset"] + 8 : rec["offset"] + rec["nbytes"]] = bytes(rec["nbytes"] - 8)
    shard.write_bytes(bytes(data))


# ------------------------------------------------------------------ 2. a bad row reported once
@pytest.mark.parametrize("repeats", [2, 3, 5])
def test_a_row_drawn_several_times_in_one_plan_is_listed_once(tmp_path, caplog, repeats):
    from xpaste.core.sample import Sample
    from xpaste.core.targets import Targets
    from xpaste.paste.functional import apply_plan
    from xpaste.paste.plan import PasteOp, PastePlan

    root = _pool(tmp_path / "p")
    _zero_row(root, 1)
    pool = InstancePool.open(root)
    ops = [PasteOp(1, 2, 20 + 5 * k, 20, 10, 10) for k in range(repeats)] + [PasteOp(0, 1, 40, 30, 12, 12)]
    plan = PastePlan(64, 64, tuple(ops))
    sample = Sample(np.zeros((64, 64, 3), np.uint8), Targets.empty(64, 64))
    with caplog.at_level(logging.WARNING, logger="xpaste.pool"):
        out = apply_plan(sample, plan, pool)
    assert [row for row, _ in out.meta["skipped_pastes"]] == [1]
    assert "damaged" in out.meta["skipped_pastes"][0][1]
    assert sum("skipped pool row" in r.getMessage() for r in caplog.records) == 1
    assert out.image.any()  # row 0 was pasted
    with pytest.raises(CutoutError) as again:  # a later read: the same message, not "found unusable earlier"
        pool.rgba(1)
    assert again.value.message == out.meta["skipped_pastes"][0][1]


# ------------------------------------------------------------------ 3. imports that import nothing
def _swap_sizes(json_path):
    doc = json.loads(json_path.read_text())
    for img in doc["images"]:  # the stored size of an EXIF-rotated photo: width and height swapped
        img["width"], img["height"] = img["height"], img["width"]
    json_path.write_text(json.dumps(doc))
    return doc


@pytest.mark.parametrize("n_images", [1, 3])
def test_import_coco_where_every_image_fails_exits_2_and_leaves_no_pool(tmp_path, capsys, n_images):
    ann, images = write_dataset(tmp_path / "d", n_images=n_images)
    doc = _swap_sizes(ann)
    out = tmp_path / "pool"
    code = main(["pool", "import-coco", str(ann), "--images", str(images), "--out", str(out), "--min-area", "10"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("xpaste: error:")]
    assert code == 2 and len(lines) == 1, err
    assert f"{n_images} of {n_images} images failed" in lines[0] and doc["images"][0]["file_name"] in lines[0]
    assert "hint:" in lines[0] and "Traceback" not in err
    assert not out.exists()


def test_import_coco_into_an_existing_folder_removes_only_what_it_wrote(tmp_path, capsys):
    ann, images = write_dataset(tmp_path / "d", n_images=2)
    _swap_sizes(ann)
    out = tmp_path / "pool"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["pool", "import-coco", str(ann), "--images", str(images), "--out", str(out)]) == 2
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_import_coco_append_that_imports_nothing_keeps_the_pool(tmp_path, capsys):
    ann, images = write_dataset(tmp_path / "d", n_images=2)
    _swap_sizes(ann)
    out = _pool(tmp_path / "pool", cats=[{"id": 1, "name": "cup"}])
    before = [np.array(InstancePool.open(out).rgba(r)) for r in range(4)]
    assert main(["pool", "import-coco", str(ann), "--images", str(images), "--out", str(out), "--append"]) == 2
    pool = InstancePool.open(out)
    assert len(pool) == 4 and all(np.array_equal(pool.rgba(r), before[r]) for r in range(4))


def test_import_coco_with_some_good_images_still_succeeds(tmp_path, capsys):
    ann, images = write_dataset(tmp_path / "d", n_images=3)
    doc = json.loads(ann.read_text())
    img = doc["images"][0]
    img["width"], img["height"] = img["height"], img["width"]
    ann.write_text(json.dumps(doc))
    out = tmp_path / "pool"
    assert main(["pool", "import-coco", str(ann), "--images", str(images), "--out", str(out), "--min-area", "10"]) == 0
    assert len(InstancePool.open(out)) > 0


def test_import_xpaste_where_every_entry_fails_exits_2(tmp_path, capsys):
    listing = tmp_path / "x.json"
    listing.write_text(json.dumps({"0": ["missing_a.png", "missing_b.png"], "1": ["*missing_c.png"]}))
    out = tmp_path / "pool"
    code = main(["pool", "import-xpaste", str(listing), "--out", str(out)])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("xpaste: error:")]
    assert code == 2 and len(lines) == 1 and "3 of 3 cut-outs failed" in lines[0] and "missing_a.png" in lines[0]
    assert not out.exists()


def test_import_report_failure_fields():
    from xpaste.pool.importers import ImportReport

    report = ImportReport()
    report.fail("a.jpg", "too big")
    report.fail("b.jpg", "missing")
    assert report.failed == 2 and report.first_failure == ("a.jpg", "too big") and len(report.skipped) == 2
