"""A damaged pool is never read as empty, and an empty pool is never pasted silently.

Damage (a lost manifest, a listed index part gone, a data shard gone or cut short, an index part cut short, the
whole index gone) is refused when the pool is opened, in one line naming what is missing and a command that
repairs it, through the Python API and the CLI; `xpaste pool repair` restores the same instances (ids and
pixels byte-identical). An empty pool, or one with no category of the dataset, is refused by augment and
CopyPaste; an import that adds nothing exits 2 saying why; an augment run that pastes nothing warns.
"""
from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
from coco_fixtures import write_dataset
from conftest import make_cutout

import xpaste.pool.writer as writer_module
from xpaste.cli import main
from xpaste.errors import XPasteError
from xpaste.paste.transform import CopyPaste
from xpaste.pool.store import InstancePool
from xpaste.pool.writer import PoolWriter


def _snapshot(root: Path) -> dict[str, np.ndarray]:
    pool = InstancePool.open(root, cache_bytes=0)
    return {str(i): np.array(pool.rgba(r)) for r, i in enumerate(pool.instance_ids)}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A dataset, and a pool for it in 3 index parts and several data shards (rows of every category)."""
    root = tmp_path_factory.mktemp("damage")
    ann, images = write_dataset(root / "data", n_images=4, size=(120, 160))
    cats = json.loads(ann.read_text())["categories"]
    rng = np.random.default_rng(3)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(writer_module, "SHARD_BYTES", 3000)
        with PoolWriter.create(root / "pool", cats) as w:
            for i in range(12):
                w.add(make_cutout(rng, 18 + i, 22 + i, "blob"), cats[i % len(cats)]["id"], source="test", rank=i)
                if i % 4 == 3:
                    w.flush()
    pool = root / "pool"
    assert len(list((pool / "index").glob("part-*.parquet"))) == 3
    assert len(list((pool / "data").glob("shard-*.bin"))) >= 3
    return root, ann, images, pool, _snapshot(pool)


def _copy(base, tmp_path) -> Path:
    pool = tmp_path / "pool"
    shutil.copytree(base[3], pool)
    return pool


def _truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def manifest_deleted(pool):
    (pool / "index" / "manifest.json").unlink()
    return "index manifest is missing", "manifest.json", ""


def listed_part_missing(pool):
    (pool / "index" / "part-000001.parquet").unlink()
    return "index part part-000001.parquet listed in manifest.json is missing", "part-000001.parquet", "--drop-damaged"


def shard_deleted(pool):
    (pool / "data" / "shard-000001.bin").unlink()
    return "data shard data/shard-000001.bin is missing", "shard-000001.bin", "--drop-damaged"


def shard_truncated(pool):
    last = max((pool / "data").glob("shard-*.bin"))
    _truncate(last, -7)
    return f"data shard data/{last.name} is truncated", last.name, "--drop-damaged"


def index_part_truncated(pool):
    part = pool / "index" / "part-000002.parquet"
    _truncate(part, part.stat().st_size // 2)
    return "unreadable index part index/part-000002.parquet", "part-000002.parquet", "--drop-damaged"


def index_folder_deleted(pool):
    shutil.rmtree(pool / "index")
    return "the pool index is missing", "manifest.json", None  # nothing to rebuild from: restore or rebuild


DAMAGE = [manifest_deleted, listed_part_missing, shard_deleted, shard_truncated, index_part_truncated,
          index_folder_deleted]


def _error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("xpaste: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _hint_command(text: str) -> list[str]:
    """The `xpaste ...` command named in an error's hint, as argv for `main`."""
    words = shlex.split(text[text.index("xpaste pool repair"):].rstrip(")"))
    return words[1:]


@pytest.mark.parametrize("damage", DAMAGE, ids=[d.__name__ for d in DAMAGE])
def test_damage_is_one_line_naming_the_missing_file(damage, base, tmp_path, capsys):
    pool = _copy(base, tmp_path)
    message, name, repair_flag = damage(pool)
    with pytest.raises(XPasteError) as e:  # the Python API
        InstancePool.open(pool)
    text = str(e.value)
    assert message in text and name in text and "\n" not in text, text
    if repair_flag is not None:
        assert f"xpaste pool repair {pool}" in text and repair_flag in text
    assert main(["pool", "info", str(pool)]) == 2  # the CLI: pool info
    line = _error_line(capsys.readouterr().err)
    assert message in line and str(pool) in line
    _, ann, images = base[:3]
    out = tmp_path / "out"
    assert main(["augment", "--dataset", str(ann), "--images", str(images), "--pool", str(pool), "--out", str(out),
                 "--num-paste", "2"]) == 2  # the CLI: augment refuses before writing anything
    line = _error_line(capsys.readouterr().err)
    assert message in line and str(pool) in line
    assert not (out / "annotations.json").exists()
    with pytest.raises(XPasteError, match="damaged|missing|unreadable"):  # nor is it appended to
        PoolWriter.open(pool).close()


def test_repair_of_a_lost_manifest_restores_the_same_instances(base, tmp_path, capsys):
    pool = _copy(base, tmp_path)
    manifest_deleted(pool)
    with pytest.raises(XPasteError) as e:
        InstancePool.open(pool)
    assert main(_hint_command(str(e.value))) == 0  # the hint is a command that runs
    assert "manifest rebuilt: 12 instances" in capsys.readouterr().out
    snap = _snapshot(pool)
    assert list(snap) == list(base[4])  # same ids, same order
    assert all(np.array_equal(snap[i], base[4][i]) for i in snap)  # same pixels
    assert main(["pool", "repair", str(pool)]) == 0  # a pool that opens: left as it is
    assert "nothing to repair" in capsys.readouterr().out


@pytest.mark.parametrize("damage", [listed_part_missing, shard_deleted, shard_truncated, index_part_truncated],
                         ids=lambda d: d.__name__)
def test_repair_keeps_the_intact_rows_only_when_asked(damage, base, tmp_path, capsys):
    pool = _copy(base, tmp_path)
    damage(pool)
    assert main(["pool", "repair", str(pool)]) == 2  # rows would be lost: refused, naming the flag
    line = _error_line(capsys.readouterr().err)
    assert "damaged" in line and "--drop-damaged" in line
    with pytest.raises(XPasteError):
        InstancePool.open(pool)  # nothing was written
    with pytest.raises(XPasteError) as e:
        InstancePool.open(pool)
    assert main(_hint_command(str(e.value))) == 0
    assert "damaged items dropped" in capsys.readouterr().out
    snap = _snapshot(pool)
    assert 0 < len(snap) < len(base[4]) and set(snap) < set(base[4])
    assert all(np.array_equal(snap[i], base[4][i]) for i in snap)
    order = list(base[4])
    assert [order.index(i) for i in snap] == sorted(order.index(i) for i in snap)  # row order kept


def test_repair_drops_rows_repeated_by_an_interrupted_compaction(base, tmp_path, capsys):
    """compact() writes the merged part, the manifest, then unlinks the old parts: killed before the unlinks and
    then the manifest lost, every row exists twice; repair keeps each once, in order."""
    pool = _copy(base, tmp_path)
    old = {p.name: p.read_bytes() for p in (pool / "index").glob("part-*.parquet")}
    with PoolWriter.open(pool) as w:
        w.compact()
    for name, data in old.items():
        (pool / "index" / name).write_bytes(data)
    manifest_deleted(pool)
    assert main(["pool", "repair", str(pool)]) == 0
    assert "12 repeated rows dropped" in capsys.readouterr().out
    snap = _snapshot(pool)
    assert list(snap) == list(base[4]) and all(np.array_equal(snap[i], base[4][i]) for i in snap)


def test_repair_refuses_a_version_1_pool_and_no_pool(tmp_path, capsys):
    from test_pool_format import write_v1_pool

    write_v1_pool(tmp_path / "v1", [make_cutout(np.random.default_rng(0), 9, 9)], [3])
    assert len(InstancePool.open(tmp_path / "v1")) == 1  # version 1 still opens
    assert main(["pool", "repair", str(tmp_path / "v1")]) == 2
    assert "version 1" in _error_line(capsys.readouterr().err)
    assert main(["pool", "repair", str(tmp_path / "nothing")]) == 2
    assert "no pool.json" in _error_line(capsys.readouterr().err)


def test_writer_crash_leftovers_still_ignored(base, tmp_path):
    """A write killed between its first index part and its first manifest: pool.json says `incomplete`, the
    unlisted part is ignored (the pool reads as empty, and says it is incomplete), and the write resumes."""
    cats = [{"id": 1, "name": "cup"}]
    root = tmp_path / "p"
    w = PoolWriter.create(root, cats)
    w.add(make_cutout(np.random.default_rng(0), 10, 12), 1)
    w.flush()
    (root / "index" / "manifest.json").unlink()  # as if killed before the manifest was written
    w._release()  # killed: the lock goes, `incomplete` stays
    pool = InstancePool.open(root)
    assert len(pool) == 0 and pool.incomplete
    with pytest.raises(XPasteError, match="did not finish"):
        CopyPaste(pool, scale_prior={})
    with PoolWriter.create(root, cats) as w:  # the same command again resumes the write
        w.add(make_cutout(np.random.default_rng(0), 10, 12), 1)
    assert len(InstancePool.open(root)) == 1


# ----------------------------------------------------------------------------- empty pools
def test_augment_refuses_an_empty_pool(base, tmp_path, capsys):
    _, ann, images = base[:3]
    cats = json.loads(ann.read_text())["categories"]
    PoolWriter.create(tmp_path / "empty", cats).close()
    out = tmp_path / "out"
    assert main(["augment", "--dataset", str(ann), "--images", str(images), "--pool", str(tmp_path / "empty"),
                 "--out", str(out)]) == 2
    line = _error_line(capsys.readouterr().err)
    assert "no instances to paste" in line and str(tmp_path / "empty") in line and "import-coco" in line
    assert not (out / "annotations.json").exists()
    assert main(["pool", "info", str(tmp_path / "empty")]) == 0
    assert "WARNING: this pool is empty" in capsys.readouterr().err
    with pytest.raises(XPasteError, match="no instances to paste"):
        CopyPaste(InstancePool.open(tmp_path / "empty"), scale_prior={})
    with pytest.raises(XPasteError, match="no instances to paste"):
        CopyPaste(InstancePool.from_arrays([], [], {1: "cup"}), scale_prior={})


def test_augment_refuses_a_pool_of_other_categories(base, tmp_path, capsys):
    _, ann, images = base[:3]
    for name, cats in [("other_ids", [{"id": 99, "name": "zebra"}]), ("other_names", [{"id": 1, "name": "zebra"}])]:
        with PoolWriter.create(tmp_path / name, cats) as w:
            w.add(make_cutout(np.random.default_rng(0), 20, 20), cats[0]["id"])
        assert main(["augment", "--dataset", str(ann), "--images", str(images), "--pool", str(tmp_path / name),
                     "--out", str(tmp_path / f"out_{name}")]) == 2
        line = _error_line(capsys.readouterr().err)
        assert str(tmp_path / name) in line and ("does not define" in line or "differ" in line), line


def test_augment_that_pastes_nothing_warns(base, tmp_path, capsys):
    _, ann, images, pool = base[:4]
    assert main(["augment", "--dataset", str(ann), "--images", str(images), "--pool", str(pool),
                 "--out", str(tmp_path / "out"), "--num-paste", "3", "--min-size-px", "100000"]) == 0
    err = capsys.readouterr().err
    assert "WARNING: 0 instances pasted into the 4 images written" in err
    assert main(["augment", "--dataset", str(ann), "--images", str(images), "--pool", str(pool),
                 "--out", str(tmp_path / "zero"), "--num-paste", "0"]) == 0  # none asked for: no warning
    assert "WARNING" not in capsys.readouterr().err


# ----------------------------------------------------------------------------- imports that add nothing
def test_import_of_a_box_only_json_exits_2(base, tmp_path, capsys):
    _, ann, images = base[:3]
    doc = json.loads(ann.read_text())
    for a in doc["annotations"]:
        a.pop("segmentation", None)
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps(doc))
    out = tmp_path / "pool"
    assert main(["pool", "import-coco", str(boxes), "--images", str(images), "--out", str(out)]) == 2
    line = _error_line(capsys.readouterr().err)
    assert "nothing imported" in line and "no_mask" in line and "box-only" in line and str(boxes) in line
    assert not (out / "pool.json").exists()  # no empty pool left behind


def test_import_with_every_instance_too_small_exits_2(base, tmp_path, capsys):
    _, ann, images = base[:3]
    out = tmp_path / "pool"
    assert main(["pool", "import-coco", str(ann), "--images", str(images), "--out", str(out),
                 "--min-area", "1000000"]) == 2
    line = _error_line(capsys.readouterr().err)
    assert "nothing imported" in line and "--min-area 1000000" in line and "lower --min-area" in line
    assert not (out / "pool.json").exists()


def test_import_xpaste_of_an_empty_json_exits_2(tmp_path, capsys):
    (tmp_path / "x.json").write_text("{}")
    assert main(["pool", "import-xpaste", str(tmp_path / "x.json"), "--out", str(tmp_path / "pool")]) == 2
    assert "nothing imported: the input lists no instances" in _error_line(capsys.readouterr().err)
    assert not (tmp_path / "pool" / "pool.json").exists()
