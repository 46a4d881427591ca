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


def test_import_report_as_a_job_report():
    from xpaste.jobs import JobReport
    from xpaste.pool.importers import ImportReport

    report = ImportReport(added=3, duplicates=1, too_small=2, crowd=1, job="import-coco", out="p", seconds=1.25)
    report.fail("a.jpg", "too big")
    job = report.job_report()
    assert isinstance(job, JobReport) and (job.job, job.out, job.seconds) == ("import-coco", "p", 1.25)
    assert job.counts == {"added": 3, "duplicates": 1, "too small": 2, "crowd": 1}
    assert job.failures == [{"item": "a.jpg", "reason": "too big"}]
    assert job.summary() == "import-coco: 3 added, 1 duplicates, 2 too small, 1 crowd, 1 failed, 1.2 s -> p"
    assert report.summary() == "added 3, duplicates 1, too small 2, crowd 1, skipped 1"  # the CLI's line


def test_import_coco_report_names_its_job_and_pool(tmp_path):
    from xpaste.pool.importers import import_coco

    ann, images = write_dataset(tmp_path / "d", n_images=2)
    report = import_coco(ann, images, tmp_path / "pool", min_area=10, progress=False)
    job = report.job_report()
    assert (job.job, job.out) == ("import-coco", str(tmp_path / "pool")) and job.seconds > 0
    assert job.counts["added"] == report.added == len(InstancePool.open(tmp_path / "pool")) > 0


# ------------------------------------------------------------------ 4. header errors: typed, each with a hint
def _edit_header(root, edit):
    header = json.loads((root / "pool.json").read_text())
    header = edit(header) or header
    (root / "pool.json").write_text(json.dumps(header))


@pytest.mark.parametrize("edit, field", [
    (lambda h: h["categories"][0].update(synonyms="cup"), "categories[0].synonyms"),
    (lambda h: h["categories"][0].update(synonyms=["cup", 3]), "categories[0].synonyms"),
    (lambda h: h["categories"][1].update(frequency=7), "categories[1].frequency"),
    (lambda h: h["categories"][1].update(frequency="often"), "categories[1].frequency"),
    (lambda h: h["categories"][2].update(image_count=-1), "categories[2].image_count"),
    (lambda h: h["categories"][2].update(instance_count="9"), "categories[2].instance_count"),
    (lambda h: h["categories"][2].update({"def": ["x"]}), "categories[2].def"),
    (lambda h: h.update(format="other"), "format"),
    (lambda h: h.update(version="2"), "version"),
    (lambda h: h.update(codec=None), "codec"),
])
def test_header_category_fields_are_type_checked_with_a_hint(tmp_path, edit, field):
    root = _pool(tmp_path / "p")
    _edit_header(root, edit)
    for opener in (InstancePool.open, PoolWriter.open):
        with pytest.raises(XPasteError) as info:
            opener(root)
        assert f"'{field}'" in info.value.message and info.value.hint and "\n" not in str(info.value)


@pytest.mark.parametrize("text, words", [
    ("[]", "must be an object"), ('[{"format": "xpaste-pool"}]', "got list"), ('"pool"', "got str"),
    ("7", "got int"), ("null", "got null"), ("{not json", "malformed json"), ('{"version": 2}', "'format'"),
])
def test_every_header_error_has_a_hint(tmp_path, capsys, text, words):
    root = _pool(tmp_path / "p")
    (root / "pool.json").write_text(text)
    with pytest.raises(XPasteError) as info:
        InstancePool.open(root)
    assert words in info.value.message and info.value.hint
    assert main(["pool", "info", str(root)]) == 2
    err = capsys.readouterr().err
    assert "(hint:" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_lvis_category_fields_of_the_right_type_open(tmp_path):
    cats = [{"id": 1, "name": "cup", "synonyms": ["cup", "mug"], "frequency": "f", "def": "a cup",
             "synset": "cup.n.01", "image_count": 3, "instance_count": 4},
            {"id": 2, "name": "cat", "synonyms": [], "frequency": "", "definition": ""},
            {"id": 3, "name": "hydrant", "synonyms": None, "frequency": None}]
    root = _pool(tmp_path / "p", n=3, cats=cats)
    assert InstancePool.open(root).categories == {1: "cup", 2: "cat", 3: "hydrant"}


@pytest.mark.parametrize("bad", [{"frequency": 7}, {"synonyms": "cup"}, {"image_count": 1.5}])
def test_writer_refuses_categories_it_could_not_read_back(tmp_path, bad):
    root = tmp_path / "p"
    with pytest.raises(XPasteError, match="categories\\[1\\]") as info:
        PoolWriter.create(root, [{"id": 1, "name": "cup"}, {"id": 2, "name": "cat", **bad}])
    assert "dataset" in info.value.hint and not (root / "pool.json").exists()
    good = _pool(tmp_path / "q", cats=[{"id": 1, "name": "cup"}])
    with PoolWriter.open(good) as w, pytest.raises(XPasteError, match="categories\\[0\\]"):  # of those given
        w.add_categories([{"id": 2, "name": "cat", **bad}])
    assert InstancePool.open(good).categories == {1: "cup"}


# ------------------------------------------------------------------ 5. category names: hints and placeholders
def test_name_mismatch_hint_names_what_exists(tmp_path):
    from xpaste.pool.categories import match_categories

    pool = InstancePool.open(_pool(tmp_path / "p"))
    for dataset in ([{"id": 1, "name": "zebra"}, {"id": 2, "name": "car"}, {"id": 3, "name": "tree"}],
                    [{"id": 1, "name": "cup"}]):
        with pytest.raises(XPasteError) as info:
            match_categories(pool, dataset)
        hint = info.value.hint
        assert "--map-categories-by-name" not in hint and "by_name=True" in hint and "remap_categories" in hint
        assert "xpaste pool import-xpaste --dataset" in hint
    # what the hint says works: mapping by name gives the dataset's ids
    mapped = pool.remap_categories(match_categories(pool, [{"id": 7, "name": "Cup"}, {"id": 8, "name": "Cat/Dog"},
                                                           {"id": 9, "name": "fire hydrant"}], by_name=True))
    assert sorted(mapped.counts()) == [7, 8, 9]


def test_placeholder_names_warn_once_per_pool(tmp_path, caplog):
    from xpaste.pool.categories import match_categories

    cats = [{"id": 1, "name": "category_1"}, {"id": 2, "name": "2"}, {"id": 3, "name": "fire_hydrant"}]
    roots = [_pool(tmp_path / f"p{k}", cats=cats) for k in range(2)]
    dataset = [{"id": 1, "name": "person"}, {"id": 2, "name": "bicycle"}, {"id": 3, "name": "fire hydrant"}]
    with caplog.at_level(logging.WARNING, logger="xpaste.pool"):
        for _ in range(3):
            for root in roots:
                assert match_categories(InstancePool.open(root), dataset) == {1: 1, 2: 2, 3: 3}
    warnings = [r.getMessage() for r in caplog.records if "placeholder names" in r.getMessage()]
    assert len(warnings) == 2 and all("1, 2" in w and "could not be checked" in w for w in warnings)
    caplog.clear()
    named = _pool(tmp_path / "named")
    with caplog.at_level(logging.WARNING, logger="xpaste.pool"):
        match_categories(InstancePool.open(named), [{"id": c["id"], "name": c["name"]} for c in CATS])
    assert not [r for r in caplog.records if "placeholder" in r.getMessage()]


def test_import_xpaste_without_dataset_warns_and_augment_says_names_are_unchecked(tmp_path, capsys):
    from PIL import Image

    for k in range(2):
        Image.fromarray(_cutout(10 + k)).save(tmp_path / f"c{k}.png")
    listing = tmp_path / "x.json"
    listing.write_text(json.dumps({"0": ["*c0.png"], "2": ["*c1.png"]}))
    assert main(["pool", "import-xpaste", str(listing), "--out", str(tmp_path / "pool")]) == 0
    err = capsys.readouterr().err
    assert "category_N" in err and "--dataset" in err
    ann, images = write_dataset(tmp_path / "d", n_images=2)
    code = main(["augment", "--dataset", str(ann), "--images", str(images), "--pool", str(tmp_path / "pool"),
                 "--out", str(tmp_path / "out"), "--num-paste", "2", "--seed", "0"])
    err = capsys.readouterr().err
    assert code == 0 and err.count("could not be checked") == 1, err


# ------------------------------------------------------------------ 6. hints name CLI commands
def test_existing_pool_hint_names_the_cli_flag(tmp_path, capsys):
    ann, images = write_dataset(tmp_path / "d", n_images=2)
    out = tmp_path / "pool"
    args = ["pool", "import-coco", str(ann), "--images", str(images), "--out", str(out), "--min-area", "10"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 2
    line = [x for x in capsys.readouterr().err.splitlines() if x.startswith("xpaste: error:")][0]
    assert "--append" in line and "xpaste pool import-coco" in line and "pass exist_ok" not in line
    assert main(args + ["--append"]) == 0


def test_oversize_hint_does_not_name_a_missing_cli_option(tmp_path):
    root = _pool(tmp_path / "p")
    with pytest.raises(CutoutError) as info:
        InstancePool.open(root, max_cutout_pixels=10).rgba(0)
    assert "raise max_cutout_pixels" not in info.value.hint and "InstancePool.open" in info.value.hint
