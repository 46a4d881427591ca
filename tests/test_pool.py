"""The on-disk instance pool: format, dedup, atomic append, lazy loading, sampling, importers."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from conftest import make_cutout
from PIL import Image

from xpaste.errors import XPasteError
from xpaste.pool.importers import import_xpaste, pool_summary
from xpaste.pool.sampler import CategoryIndex, sample_rows
from xpaste.pool.store import InstancePool

CATS = [{"id": 3, "name": "cat/with slash"}, {"id": 7, "name": "ünïcode .. name"}]


def test_create_add_reopen_dedup(tmp_path, rng):
    a, b = make_cutout(rng, 20, 30), make_cutout(rng, 11, 9)
    padded = np.zeros((40, 50, 4), np.uint8)
    padded[5:25, 10:40] = a
    with InstancePool.create(tmp_path / "p", CATS, config={"why": "test"}) as pool:
        id_a = pool.add(padded, 3, source="gt", clip_score=25.5, my_score=0.7)
        assert pool.add(a, 3) is None  # same pixels after cropping -> same content hash
        id_b = pool.add(b, 7, source="generated", prompt="a photo of a single ünïcode")
    pool = InstancePool.open(tmp_path / "p")
    assert len(pool) == 2 and pool.counts() == {3: 1, 7: 1}
    assert np.array_equal(pool.rgba(0), a) and np.array_equal(pool.rgba(1), b)
    assert list(pool.instance_ids) == [id_a, id_b]
    records = pool.records().to_pylist()
    assert records[0]["my_score"] == 0.7 and records[0]["clip_score"] == 25.5
    assert records[1]["prompt"] == "a photo of a single ünïcode" and records[1]["my_score"] is None
    assert (tmp_path / "p" / records[0]["path"]).is_file()
    header = json.loads((tmp_path / "p" / "pool.json").read_text())
    assert header["format"] == "xpaste-pool" and header["config"] == {"why": "test"}
    # appending writes a new shard and keeps deduplicating against old rows
    with InstancePool.create(tmp_path / "p", CATS, exist_ok=True) as pool:
        assert pool.add(b, 7) is None
        pool.add(make_cutout(rng, 5, 5), 7)
    assert len(InstancePool.open(tmp_path / "p")) == 3
    assert len(list((tmp_path / "p" / "index").glob("part-*.parquet"))) == 2


def test_errors_are_clear(tmp_path, rng):
    with pytest.raises(XPasteError, match="no pool.json"):
        InstancePool.open(tmp_path)
    pool = InstancePool.create(tmp_path / "p", CATS)
    with pytest.raises(XPasteError, match="unknown category id 99"):
        pool.add(make_cutout(rng, 5, 5), 99)
    with pytest.raises(ValueError, match="empty alpha"):
        pool.add(np.zeros((4, 4, 4), np.uint8), 3)
    pool.add(make_cutout(rng, 6, 6), 3)
    pool.close()
    with pytest.raises(XPasteError, match="already exists"):
        InstancePool.create(tmp_path / "p", CATS)
    # a deleted instance file is reported with its path when its pixels are needed
    reopened = InstancePool.open(tmp_path / "p")
    (tmp_path / "p" / reopened.paths[0]).unlink()
    with pytest.raises(XPasteError, match="missing"):
        reopened.rgba(0)
    with pytest.raises(RuntimeError, match="read-only"):
        reopened.add(make_cutout(rng, 6, 6), 3)


def test_lazy_cache_is_bounded_and_pickles_empty(tmp_path, rng):
    with InstancePool.create(tmp_path / "p", CATS) as pool:
        for _ in range(10):
            pool.add(make_cutout(rng, 20, 20), 3)
    pool = InstancePool.open(tmp_path / "p", cache_bytes=3 * 20 * 20 * 4)
    for i in range(10):
        pool.rgba(i)
    assert len(pool._cache.items) == 3 and pool._cache.bytes <= 3 * 1600
    clone = pickle.loads(pickle.dumps(pool))
    assert len(clone._cache.items) == 0 and np.array_equal(clone.rgba(4), pool.rgba(4))
    with pytest.raises(ValueError):
        pool.rgba(0)[0, 0, 0] = 1  # cached arrays are read-only: a caller cannot corrupt the cache


def test_from_arrays_crops_and_validates(rng):
    a = np.zeros((10, 10, 4), np.uint8)
    a[2:5, 3:9] = 200
    pool = InstancePool.from_arrays([a], [1])
    assert pool.rgba(0).shape == (3, 6, 4) and pool.widths[0] == 6 and pool.heights[0] == 3
    with pytest.raises(ValueError, match="empty alpha"):
        InstancePool.from_arrays([np.zeros((3, 3, 4), np.uint8)], [1])
    with pytest.raises(ValueError, match="RGBA"):
        InstancePool.from_arrays([np.zeros((3, 3, 3), np.uint8)], [1])


def test_sampling_modes_follow_their_distributions():
    cats = np.array([1] * 90 + [2] * 9 + [3] * 1)
    index = CategoryIndex.build(cats)
    rng = np.random.default_rng(0)
    n = 30000
    balanced = np.bincount(cats[sample_rows(index, rng, n, "balanced")], minlength=4)[1:] / n
    assert np.allclose(balanced, 1 / 3, atol=0.02)
    uniform = np.bincount(cats[sample_rows(index, rng, n, "uniform")], minlength=4)[1:] / n
    assert np.allclose(uniform, [0.9, 0.09, 0.01], atol=0.02)
    present = cats[sample_rows(index, rng, 100, "present", present=np.array([3, 42]))]
    assert (present == 3).all()
    assert len(sample_rows(index, rng, 10, "present", present=np.array([42]))) == 0
    weighted = np.bincount(cats[sample_rows(index, rng, n, "weighted", weights={1: 1, 3: 3})], minlength=4)[1:] / n
    assert np.allclose(weighted, [0.25, 0, 0.75], atol=0.02)
    same = [sample_rows(index, np.random.default_rng(5), 50) for _ in range(2)]
    assert np.array_equal(*same)
    with pytest.raises(ValueError):
        sample_rows(index, rng, 5, "nonsense")


def test_import_xpaste_official_json(tmp_path, rng):
    root = tmp_path / "xp"
    (root / "images" / "a").mkdir(parents=True)
    cut = make_cutout(rng, 30, 20)
    cut[0:3, 0:3, 3] = 255  # a second, smaller component that the importer must drop
    Image.fromarray(cut).save(root / "images" / "a" / "0.png")
    rgb = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(root / "img.jpg")
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 2:10] = 255
    Image.fromarray(mask).save(root / "mask.png")
    (root / "broken.png").write_bytes(b"not a png")
    pool_json = root / "pool.json"
    pool_json.write_text(json.dumps({"0": ["*images/a/0.png", "broken.png"], "4": ["img.jpg|mask.png",
                                                                                   "../outside.png"]}))
    report = import_xpaste(pool_json, tmp_path / "pool", progress=False)
    assert report.added == 2 and len(report.skipped) == 2
    assert any("outside" in why for _, why in report.skipped)
    pool = InstancePool.open(tmp_path / "pool")
    assert pool.counts() == {1: 1, 5: 1}
    first = pool.rgba(int(pool.rows_of(1)[0]))
    assert first.shape[:2] == (30, 20) and first[0:3, 0:3, 3].max() == 0
    assert pool.rgba(int(pool.rows_of(5)[0])).shape == (8, 8, 4)
    rows = pool_summary(pool)
    assert [r["instances"] for r in rows] == [1, 1] and rows[0]["sources"] == "xpaste"
