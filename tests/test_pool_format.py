"""The packed pool format (version 2) and the old one (version 1): reading, migrating, exporting, compaction.

Version 1 pools are written here by hand with PIL and pyarrow (not by xpaste), and every pixel xpaste serves
is compared with what PIL reads from the same PNG.
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import make_cutout
from PIL import Image

from xpaste.errors import XPasteError
from xpaste.pool import writer as writer_module
from xpaste.pool.store import CutoutError, InstancePool
from xpaste.pool.writer import PoolWriter

CATS = [{"id": 3, "name": "cat/with slash"}, {"id": 7, "name": "ünïcode .. name"}]


def write_v1_pool(root, cutouts, category_ids, mode="RGBA"):
    """A version 1 pool as xpaste 0.1 wrote it: pool.json, index/part-000000.parquet, one PNG per row."""
    rows = []
    for i, (rgba, cid) in enumerate(zip(cutouts, category_ids)):
        rel = f"instances/{cid}/id{i:04d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgba, "RGBA").convert(mode).save(root / rel)
        rows.append({"instance_id": f"id{i:04d}", "category_id": cid, "category": "", "path": rel,
                     "width": rgba.shape[1], "height": rgba.shape[0], "source": "gt", "clip_score": 20.0 + i})
    (root / "index").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), root / "index" / "part-000000.parquet")
    (root / "pool.json").write_text(json.dumps({"format": "xpaste-pool", "version": 1, "categories": CATS,
                                                "config": {"old": True}}))
    return root


def pil_rgba(path):
    with Image.open(path) as im:
        return np.array(im.convert("RGBA"))


@pytest.fixture
def v1_pool(tmp_path, rng):
    cutouts = [make_cutout(rng, int(rng.integers(5, 40)), int(rng.integers(5, 40)), "blob") for _ in range(9)]
    return write_v1_pool(tmp_path / "old", cutouts, [3, 7, 3, 3, 7, 3, 7, 7, 3])


def test_version_1_pools_still_open_and_read_as_pil_does(v1_pool):
    pool = InstancePool.open(v1_pool)
    assert pool.version == 1 and len(pool) == 9 and pool.counts() == {3: 5, 7: 4}
    for row, rel in enumerate(pool.paths):
        assert np.array_equal(pool.rgba(row), pil_rgba(v1_pool / rel))
    assert list(pool.instance_ids) == [f"id{i:04d}" for i in range(9)]
    with pytest.raises(XPasteError, match="migrate"):  # appends go to the current format only
        PoolWriter.open(v1_pool)


def test_version_1_cutout_without_alpha_is_a_cutout_error(tmp_path, rng):
    """PNG optimisers write fully opaque cut-outs as RGB: the row is skipped, not the image."""
    cutouts = [make_cutout(rng, 12, 14) for _ in range(4)]
    root = write_v1_pool(tmp_path / "old", cutouts, [3, 3, 7, 7])
    Image.open(root / "instances/3/id0001.png").convert("RGB").save(root / "instances/3/id0001.png")
    pool = InstancePool.open(root)
    with pytest.raises(CutoutError, match="RGBA"):
        pool.rgba(1)
    assert pool.bad_rows == {1} and np.array_equal(pool.rgba(0), cutouts[0])
    assert 1 not in set(pool.sample(np.random.default_rng(0), 400, "uniform").tolist())


def test_version_1_index_path_outside_pool_is_refused(v1_pool):
    pool = InstancePool.open(v1_pool)
    pool.paths[0] = "../../etc/passwd"
    with pytest.raises(XPasteError, match="outside"):
        pool.rgba(0)


def test_migrate_keeps_rows_ids_pixels_and_columns(v1_pool, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "xpaste", "pool", "migrate", str(v1_pool), str(tmp_path / "new")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    old, new = InstancePool.open(v1_pool), InstancePool.open(tmp_path / "new")
    assert new.version == 2 and len(new) == len(old) and new.categories == old.categories
    assert np.array_equal(new.category_ids, old.category_ids)
    for row, rel in enumerate(old.paths):
        assert np.array_equal(new.rgba(row), pil_rgba(v1_pool / rel))
    # ids are content hashes of the pixels in the new pool; scores and sources are carried over
    records = new.records().to_pylist()
    assert [r["clip_score"] for r in records] == [20.0 + i for i in range(9)]
    assert {r["source"] for r in records} == {"gt"}
    assert not list((tmp_path / "new").rglob("*.png")) and len(list((tmp_path / "new" / "data").iterdir())) == 1
    again = subprocess.run([sys.executable, "-m", "xpaste", "pool", "migrate", str(v1_pool), str(tmp_path / "new")],
                           capture_output=True, text=True)
    assert again.returncode == 2 and "already exists" in again.stderr


@pytest.mark.parametrize("codec", ["lz4_raw", "zstd", "raw"])
def test_codecs_round_trip_exactly(tmp_path, rng, codec):
    cutouts = [make_cutout(rng, int(rng.integers(1, 60)), int(rng.integers(1, 60)), "blob") for _ in range(20)]
    cutouts.append(rng.integers(0, 256, (33, 17, 4), dtype=np.uint8) | np.uint8(1))  # noise, alpha > 0
    with PoolWriter.create(tmp_path / "p", CATS, codec=codec) as w:
        for i, c in enumerate(cutouts):
            w.add(c, CATS[i % 2]["id"], crop=False)
    pool = InstancePool.open(tmp_path / "p")
    assert pool.header["codec"] == codec
    for row, c in enumerate(cutouts):
        assert np.array_equal(pool.rgba(row), c)


def test_export_png_writes_files_pil_reads_back(tmp_path, rng):
    cutouts = [make_cutout(rng, 10 + i, 20, "blob") for i in range(6)]
    with PoolWriter.create(tmp_path / "p", CATS) as w:
        for i, c in enumerate(cutouts):
            w.add(c, CATS[i % 2]["id"])
    pool = InstancePool.open(tmp_path / "p")
    cmd = [sys.executable, "-m", "xpaste", "pool", "export-png", str(tmp_path / "p"), "--out", str(tmp_path / "png")]
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    files = sorted((tmp_path / "png").rglob("*.png"))
    assert len(files) == 6
    by_id = {iid: row for row, iid in enumerate(pool.instance_ids)}
    for f in files:
        row = by_id[f.stem]
        assert np.array_equal(pil_rgba(f), cutouts[row]) and f.parent.name.startswith(f"{pool.category_ids[row]}_")
    out = subprocess.run(cmd[:-1] + [str(tmp_path / "one"), "--category", "cat/with slash", "--limit", "2"],
                         capture_output=True, text=True)
    assert out.returncode == 0 and len(list((tmp_path / "one").rglob("*.png"))) == 2
    assert all(p.parent.name.startswith("3_") for p in (tmp_path / "one").rglob("*.png"))
    bad = subprocess.run(cmd[:-1] + [str(tmp_path / "x"), "--category", "dog"], capture_output=True, text=True)
    assert bad.returncode == 2 and "not in the pool" in bad.stderr


def test_shards_roll_over_and_parts_are_merged_on_close(tmp_path, rng, monkeypatch):
    monkeypatch.setattr(writer_module, "SHARD_BYTES", 6000)
    monkeypatch.setattr(writer_module, "MAX_PARTS", 3)
    cutouts = [make_cutout(rng, 20, 20 + i % 7, "blob") for i in range(40)]
    with PoolWriter.create(tmp_path / "p", CATS) as w:
        for i, c in enumerate(cutouts):
            w.add(c, CATS[i % 2]["id"], crop=False, rank=i)
            if i % 5 == 4:
                w.flush()
    root = tmp_path / "p"
    assert len(list((root / "data").glob("shard-*.bin"))) > 3
    manifest = json.loads((root / "index" / "manifest.json").read_text())
    assert len(manifest["parts"]) == 1 and sorted(p.name for p in (root / "index").glob("*.parquet")) == manifest["parts"]
    pool = InstancePool.open(root)
    assert [r["rank"] for r in pool.records().to_pylist()] == list(range(40))
    assert all(np.array_equal(pool.rgba(i), c) for i, c in enumerate(cutouts))
    assert all((root / p).is_file() for p in pool.paths)


def test_crash_leftovers_are_ignored_and_appends_continue(tmp_path, rng):
    """A killed writer leaves pixel bytes no row lists and a part the manifest does not list: both harmless."""
    cutouts = [make_cutout(rng, 15, 15 + i) for i in range(6)]
    with PoolWriter.create(tmp_path / "p", CATS) as w:
        for c in cutouts[:3]:
            w.add(c, 3)
    root = tmp_path / "p"
    with open(root / "data" / "shard-000000.bin", "ab") as f:
        f.write(b"half a cut-out from a killed run")
    (root / "index" / "part-000005.parquet").write_bytes(b"PAR1 torn")
    assert len(InstancePool.open(root)) == 3
    with PoolWriter.open(root) as w:
        for c in cutouts[3:]:
            w.add(c, 7)
    pool = InstancePool.open(root)
    assert len(pool) == 6 and all(np.array_equal(pool.rgba(i), c) for i, c in enumerate(cutouts))
    manifest = json.loads((root / "index" / "manifest.json").read_text())
    assert "part-000005.parquet" not in manifest["parts"]  # the torn part was never reused nor listed


def test_manifest_is_checked(tmp_path, rng):
    with PoolWriter.create(tmp_path / "p", CATS) as w:
        w.add(make_cutout(rng, 5, 5), 3)
    (tmp_path / "p" / "index" / "manifest.json").write_text(json.dumps({"parts": ["../../pool.json"]}))
    with pytest.raises(XPasteError, match="manifest"):
        InstancePool.open(tmp_path / "p")


def test_opening_many_rows_reads_few_files(tmp_path):
    """The index of 200k rows (as a 1M-row pool's, scaled down): one part after close, numeric columns only."""
    rows = 200_000
    root = tmp_path / "p"
    PoolWriter.create(root, CATS).close()
    table = pa.table({"instance_id": [f"{i:020x}" for i in range(rows)], "category_id": np.full(rows, 3),
                      "category": [""] * rows, "path": ["data/shard-000000.bin"] * rows,
                      "width": np.ones(rows, np.int64), "height": np.ones(rows, np.int64),
                      "shard": np.zeros(rows, np.int64), "offset": np.zeros(rows, np.int64),
                      "nbytes": np.full(rows, 12, np.int64)})
    (root / "index").mkdir()
    pq.write_table(table, root / "index" / "part-000000.parquet")
    (root / "index" / "manifest.json").write_text(json.dumps({"parts": ["part-000000.parquet"]}))
    (root / "data").mkdir()
    (root / "data" / "shard-000000.bin").write_bytes(bytes(12))  # the bytes the rows point at (sizes are checked)
    pool = InstancePool.open(root)
    assert len(pool) == rows and pool._storage.strings == {}  # ids not loaded until asked for
    assert pool.instance_ids[rows - 1] == f"{rows - 1:020x}"


def test_index_with_empty_numbers_is_refused(tmp_path, rng):
    with PoolWriter.create(tmp_path / "p", CATS) as w:
        w.add(make_cutout(rng, 5, 5), 3)
        w.add(make_cutout(rng, 6, 5), 7)
    part = next((tmp_path / "p" / "index").glob("part-*.parquet"))
    table = pq.read_table(part)
    offsets = pa.array([None, table.column("offset")[1].as_py()], pa.int64())
    pq.write_table(table.set_column(table.schema.get_field_index("offset"), "offset", offsets), part)
    with pytest.raises(XPasteError, match=r"\['offset'\] have empty values"):
        InstancePool.open(tmp_path / "p")


# ------------------------------------------------------------------ the layout's one home; reader never imports writer
def test_layout_names_round_trip_and_old_imports_still_work():
    from xpaste.pool import layout, store
    from xpaste.pool.header import HEADER

    assert layout.part_name(12) == "part-000012.parquet" and layout.PART_NAME.fullmatch(layout.part_name(12))
    assert layout.shard_name(3) == "data/shard-000003.bin"
    assert layout.file_number(layout.part_name(12)) == 12 and layout.file_number(layout.shard_name(3)) == 3
    for name in ("DATA_DIR", "INDEX_DIR", "MANIFEST", "HEADER", "CHECKSUM", "list_parts", "shard_name"):
        assert getattr(store, name) is getattr(layout, name), name  # users' `from xpaste.pool.store import ...`
    assert HEADER is layout.HEADER == "pool.json"


def test_writer_files_are_where_the_layout_says(tmp_path, rng):
    from xpaste.pool.layout import DATA_DIR, HEADER, INDEX_DIR, MANIFEST, list_parts, shard_name

    with PoolWriter.create(tmp_path / "p", CATS) as w:
        w.add(make_cutout(rng, 12, 9, "blob"), 3)
    root = tmp_path / "p"
    assert (root / HEADER).is_file() and (root / INDEX_DIR / MANIFEST).is_file()
    assert [p.name for p in list_parts(root, 2)] == ["part-000000.parquet"]
    assert [p.name for p in (root / DATA_DIR).iterdir()] == ["shard-000000.bin"]
    assert InstancePool.open(root).paths.tolist() == [shard_name(0)]


def test_store_never_imports_the_writer_yet_create_returns_one(tmp_path):
    import ast

    import xpaste.pool.store as store_module

    tree = ast.parse(open(store_module.__file__, encoding="utf-8").read())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert "xpaste.pool.writer" not in imported and "xpaste.pool" not in imported
    code = ("import sys; from xpaste.pool.store import InstancePool; "
            f"w = InstancePool.create({str(tmp_path / 'p')!r}, {{1: 'cup'}}); w.close(); "
            f"print(type(w).__name__, type(InstancePool.open({str(tmp_path / 'p')!r}, writable=True)).__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.split() == ["PoolWriter", "PoolWriter"], out.stderr
