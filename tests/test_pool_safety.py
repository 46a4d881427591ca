"""Bad pools contained: typed header, damaged or oversized cut-outs, names that disagree with the dataset,
a thread-safe cache, one writer at a time, and interrupted writes that say so (issues 12 and 14)."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading

import numpy as np
import pytest
from conftest import make_cutout

from xpaste.errors import XPasteError
from xpaste.pool.categories import match_categories
from xpaste.pool.store import CutoutError, InstancePool
from xpaste.pool.writer import PoolWriter

CATS = [{"id": 1, "name": "cup"}, {"id": 2, "name": "cat"}, {"id": 3, "name": "fire_hydrant"}]


def _pool(root, rng, n=12, size=(20, 30)):
    with PoolWriter.create(root, CATS) as w:
        for i in range(n):
            w.add(make_cutout(rng, size[0] + i, size[1]), 1 + i % 3)
    return root


# ------------------------------------------------------------------ header
@pytest.mark.parametrize("edit, field", [
    (lambda h: h.update(version="one"), "version"),
    (lambda h: h.update(version=None), "version"),
    (lambda h: h.update(version=True), "version"),
    (lambda h: h.update(categories="cup"), "categories"),
    (lambda h: h.update(categories={"1": "cup"}), "categories"),
    (lambda h: h["categories"][0].pop("name"), "categories[0].name"),
    (lambda h: h["categories"][1].update(name=7), "categories[1].name"),
    (lambda h: h["categories"][0].update(id="one"), "categories[0].id"),
    (lambda h: h["categories"][0].update(id=1.5), "categories[0].id"),
    (lambda h: h["categories"][2].update(id=1), "categories"),
    (lambda h: h["categories"].append("dog"), "categories[3]"),
    (lambda h: h.update(config=[1]), "config"),
    (lambda h: h.update(codec="gzip9"), "codec"),
    (lambda h: h.update(incomplete="yes"), "incomplete"),
])
def test_header_fields_are_type_checked(tmp_path, rng, edit, field):
    root = _pool(tmp_path / "p", rng, n=3)
    header = json.loads((root / "pool.json").read_text())
    edit(header)
    (root / "pool.json").write_text(json.dumps(header))
    with pytest.raises(XPasteError) as info:
        InstancePool.open(root)
    text = str(info.value)
    assert f"'{field}'" in text and "pool.json" in text and "\n" not in text
    with pytest.raises(XPasteError):  # the writer refuses the same header
        PoolWriter.open(root)


def test_header_newer_version_and_not_json(tmp_path, rng):
    root = _pool(tmp_path / "p", rng, n=2)
    header = json.loads((root / "pool.json").read_text())
    (root / "pool.json").write_text(json.dumps({**header, "version": 99}))
    with pytest.raises(XPasteError, match="newer than this xpaste"):
        InstancePool.open(root)
    (root / "pool.json").write_text("{not json")
    with pytest.raises(XPasteError, match="malformed json"):
        InstancePool.open(root)


def test_cli_reports_bad_header_in_one_line(tmp_path, rng):
    root = _pool(tmp_path / "p", rng, n=2)
    header = json.loads((root / "pool.json").read_text())
    header["categories"][0]["id"] = "one"
    (root / "pool.json").write_text(json.dumps(header))
    proc = subprocess.run([sys.executable, "-m", "xpaste", "pool", "info", str(root)], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "categories[0].id" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------ damaged cut-outs
def _damage(root, row, how):
    pool = InstancePool.open(root)
    record = pool.records().to_pylist()[row]
    shard = root / record["path"]
    data = bytearray(shard.read_bytes())
    if how == "garble":
        data[record["offset"] : record["offset"] + record["nbytes"]] = bytes(record["nbytes"])[:-1] + b"\x01"
        shard.write_bytes(bytes(data))
    elif how == "truncate":
        shard.write_bytes(bytes(data[: record["offset"] + record["nbytes"] // 2]))
    elif how == "delete":
        shard.unlink()


@pytest.mark.parametrize("how", ["garble", "truncate", "delete"])
def test_damaged_cutout_raises_once_is_remembered_and_never_sampled(tmp_path, rng, caplog, how):
    root = _pool(tmp_path / "p", rng)
    good = InstancePool.open(root)
    expected = [np.array(good.rgba(r)) for r in range(len(good))]
    last = len(good) - 1  # the last row: truncating cuts it (and nothing before it)
    pool = InstancePool.open(root)  # damaged under an open pool, as in a long run (on open it is refused:
    _damage(root, last, how)        # tests/test_pool_damage.py)
    with caplog.at_level(logging.WARNING, logger="xpaste.pool"):
        for _ in range(3):
            with pytest.raises(CutoutError):
                pool.rgba(last)
    assert pool.bad_rows == ({last} if how != "delete" else {last})
    assert sum("skipped pool row" in r.getMessage() for r in caplog.records) == 1
    assert isinstance(CutoutError("x"), XPasteError)
    if how != "delete":  # the other rows are untouched
        for r in range(last):
            assert np.array_equal(pool.rgba(r), expected[r])
        draws = np.concatenate([pool.sample(np.random.default_rng(s), 50, mode) for s in range(20)
                                for mode in ("uniform", "balanced")])
        assert last not in set(draws.tolist()) and len(set(draws.tolist())) == len(pool) - 1


def test_oversized_cutout_is_refused_by_the_pixel_limit(tmp_path, rng):
    root = _pool(tmp_path / "p", rng, n=3, size=(40, 50))  # 40x50 .. 42x50 px
    pool = InstancePool.open(root, max_cutout_pixels=41 * 50)
    assert pool.rgba(0).shape == (40, 50, 4) and pool.rgba(1).shape == (41, 50, 4)
    with pytest.raises(CutoutError, match="over the limit of 2050 pixels"):
        pool.rgba(2)
    assert pool.bad_rows == {2}


def test_cutouts_with_wrong_index_size_are_refused(tmp_path, rng):
    """A row whose recorded size disagrees with its bytes (e.g. an edited index) is a CutoutError."""
    import pyarrow.parquet as pq

    root = _pool(tmp_path / "p", rng, n=2)
    part = sorted((root / "index").glob("part-*.parquet"))[0]
    table = pq.read_table(part).to_pylist()
    table[0]["width"] += 1
    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist(table, schema=pq.read_schema(part)), part)
    with pytest.raises(CutoutError, match="the index says|damaged"):
        InstancePool.open(root).rgba(0)


# ------------------------------------------------------------------ cache under threads
@pytest.mark.parametrize("threads, cache_rows", [(8, 3), (16, 1), (4, 30)])
def test_cache_accounting_is_exact_under_threads(tmp_path, rng, threads, cache_rows):
    root = _pool(tmp_path / "p", rng, n=12)
    probe = InstancePool.open(root)
    truth = [np.array(probe.rgba(r)) for r in range(len(probe))]
    pool = InstancePool.open(root, cache_bytes=cache_rows * truth[0].nbytes)
    errors = []

    def work(seed):
        r = np.random.default_rng(seed)
        try:
            for _ in range(1500):
                row = int(r.integers(0, len(truth)))
                if not np.array_equal(pool.rgba(row), truth[row]):
                    errors.append(row)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    [t.start() for t in workers]
    [t.join() for t in workers]
    held = sum(v.nbytes for v in pool._cache.items.values())
    assert errors == [] and pool._cache.bytes == held <= pool._cache.max_bytes
    assert len(pool._cache.items) >= 1


# ------------------------------------------------------------------ one writer
def test_second_writer_is_refused_and_nothing_is_lost(tmp_path, rng):
    root = _pool(tmp_path / "p", rng, n=4)
    first = PoolWriter.open(root)
    first.add(make_cutout(rng, 9, 9), 1)
    with pytest.raises(XPasteError, match="another xpaste process is writing this pool"):
        PoolWriter.open(root)
    with pytest.raises(XPasteError, match="another xpaste process"):
        InstancePool.create(root, CATS, exist_ok=True)
    # the same from another process (what two `import-coco --append` do)
    code = ("import sys; from xpaste.pool.writer import PoolWriter\n"
            "try:\n    PoolWriter.open(sys.argv[1])\nexcept Exception as e:\n    print(type(e).__name__, e); sys.exit(2)")
    proc = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True)
    assert proc.returncode == 2 and "XPasteError" in proc.stdout and "another xpaste process" in proc.stdout
    first.close()
    with PoolWriter.open(root) as second:  # released on close
        second.add(make_cutout(rng, 10, 10), 2)
    assert len(InstancePool.open(root)) == 6


def test_interrupted_write_is_marked_and_the_same_command_resumes(tmp_path, rng):
    cutouts = [make_cutout(rng, 10 + i, 12) for i in range(10)]
    config = {"import": "test", "source": "x"}
    with pytest.raises(KeyboardInterrupt):
        with InstancePool.create(tmp_path / "p", CATS, config=config) as w:
            for i, c in enumerate(cutouts[:6]):
                w.add(c, 1)
                if i == 2:
                    w.flush()
            raise KeyboardInterrupt
    partial = InstancePool.open(tmp_path / "p")
    assert partial.incomplete is not None and len(partial) == 6  # pending rows were flushed on the way out
    assert all(np.array_equal(partial.rgba(i), cutouts[i]) for i in range(6))
    info = subprocess.run([sys.executable, "-m", "xpaste", "pool", "info", str(tmp_path / "p")],
                          capture_output=True, text=True)
    assert info.returncode == 0 and "incomplete" in info.stdout.lower()
    with pytest.raises(XPasteError, match="already exists"):  # another job is not mixed in
        InstancePool.create(tmp_path / "p", CATS, config={"import": "other"})
    with InstancePool.create(tmp_path / "p", CATS, config=config) as w:  # same job: resumes
        added = [w.add(c, 1) for c in cutouts]
    assert sum(a is not None for a in added) == 4
    done = InstancePool.open(tmp_path / "p")
    assert done.incomplete is None and len(done) == 10
    assert all(np.array_equal(done.rgba(i), cutouts[i]) for i in range(10))


# ------------------------------------------------------------------ names
class _FakePool:
    def __init__(self, cats, counts):
        self.header = {"categories": cats}
        self.categories = {c["id"]: c["name"] for c in cats}
        self._counts = counts
        self.root = "POOL"

    def counts(self):
        return self._counts


COCO_LIKE = [{"id": 1, "name": "cup"}, {"id": 2, "name": "cat"}, {"id": 3, "name": "fire hydrant"}]


def test_names_that_disagree_for_the_same_ids_are_refused_in_one_line():
    pool = _FakePool(COCO_LIKE, {1: 5, 3: 2})
    other = [{"id": 1, "name": "zebra"}, {"id": 2, "name": "car"}, {"id": 3, "name": "tree"}]
    with pytest.raises(XPasteError) as info:
        match_categories(pool, other)
    text = str(info.value)
    assert "'cup' in the pool but 'zebra'" in text and "'fire hydrant' in the pool but 'tree'" in text
    assert "'cat'" not in text and "'car'" not in text  # category 2 has no pooled instance: not listed
    assert "by_name=True" in text and "--map-categories-by-name" not in text and "\n" not in text


@pytest.mark.parametrize("dataset", [
    [{"id": 1, "name": "Cup"}, {"id": 3, "name": "fire_hydrant"}],  # LVIS spelling, other case
    [{"id": 1, "name": "mug", "synonyms": ["mug", "cup"]}, {"id": 3, "name": "hydrant", "synonyms": ["fire-hydrant"]}],
    {1: "CUP", 3: "Fire  Hydrant", 9: "extra"},
])
def test_names_that_agree_map_by_id(dataset):
    assert match_categories(_FakePool(COCO_LIKE, {1: 5, 3: 2}), dataset) == {1: 1, 3: 3}


def test_missing_ids_and_placeholder_names():
    with pytest.raises(XPasteError, match=r"categories \[3\] that the dataset does not define"):
        match_categories(_FakePool(COCO_LIKE, {1: 5, 3: 2}), {1: "cup"})
    placeholders = _FakePool([{"id": 4, "name": "4"}, {"id": 5, "name": "category_5"}], {4: 1, 5: 1})
    assert match_categories(placeholders, {4: "dog", 5: "bus"}) == {4: 4, 5: 5}


def test_map_by_name_gives_dataset_ids_and_paste_uses_them(rng):
    lvis_like = [{"id": 10, "name": "aerosol_can"}, {"id": 41, "name": "cup", "synonyms": ["cup"]},
                 {"id": 77, "name": "hydrant", "synonyms": ["fire_hydrant", "hydrant"]}]
    pool = InstancePool.from_arrays([make_cutout(rng, 20, 20) for _ in range(6)], [1, 2, 3, 1, 2, 3], COCO_LIKE)
    mapping = match_categories(pool, lvis_like, by_name=True)
    assert mapping == {1: 41, 3: 77}  # 'cat' has no LVIS-like match here: left out
    view = pool.remap_categories(mapping, {c["id"]: c["name"] for c in lvis_like})
    assert view.counts() == {41: 2, 77: 2} and view.categories[77] == "hydrant"
    draws = view.sample(np.random.default_rng(0), 200, "uniform")
    assert set(view.category_ids[draws].tolist()) == {41, 77} and set((draws % 3).tolist()) == {0, 2}
    from conftest import make_sample

    from xpaste.paste.transform import CopyPaste

    out = CopyPaste(view, num_paste=6, scale_prior={})(make_sample(rng, 128, 160), np.random.default_rng(1))
    pasted = out.targets.labels[np.asarray(out.targets.extra["pasted"], bool)]
    assert len(pasted) > 0 and set(pasted.tolist()) <= {41, 77}
    ambiguous = [{"id": 5, "name": "cup"}, {"id": 6, "name": "Cup"}]
    with pytest.raises(XPasteError, match="matches several dataset categories"):
        match_categories(pool, ambiguous, by_name=True)
    with pytest.raises(XPasteError, match="no pool category name matches"):
        match_categories(pool, {9: "tree"}, by_name=True)


def test_augment_refuses_a_pool_whose_names_disagree(tmp_path):
    """A pool imported from dataset A used on dataset B with the same ids for other things: one line, exit 2,
    nothing written; the same pool on A itself is accepted."""
    from coco_fixtures import write_dataset

    a_json, a_images = write_dataset(tmp_path / "a", n_images=2)
    b_json, b_images = write_dataset(tmp_path / "b", n_images=2, seed=1)
    doc = json.loads(b_json.read_text())
    for c, name in zip(doc["categories"], ["zebra", "car", "tree", "lamp"]):
        c["name"], c["synonyms"] = name, [name]
    b_json.write_text(json.dumps(doc))
    x = [sys.executable, "-m", "xpaste"]
    assert subprocess.run([*x, "pool", "import-coco", str(a_json), "--images", str(a_images), "--out",
                           str(tmp_path / "pool"), "--min-area", "100"], capture_output=True).returncode == 0
    bad = subprocess.run([*x, "augment", "--dataset", str(b_json), "--images", str(b_images), "--pool",
                          str(tmp_path / "pool"), "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    line = bad.stderr.strip().splitlines()[-1]
    assert "in the pool but 'zebra' in the dataset" in line and not (tmp_path / "out" / "annotations.json").exists()
    ok = subprocess.run([*x, "augment", "--dataset", str(a_json), "--images", str(a_images), "--pool",
                         str(tmp_path / "pool"), "--out", str(tmp_path / "ok")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
