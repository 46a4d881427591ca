"""Per-record checksums of on-disk pool cut-outs: damaged bytes that still decode are a CutoutError (reported
once, never drawn again), never a silently different paste; pools written before the checksum still read."""
from __future__ import annotations

import logging
import zlib

import numpy as np
import pyarrow.parquet as pq
import pytest

from xpaste.pool.codec import decode_raw
from xpaste.pool.store import CutoutError, InstancePool
from xpaste.pool.writer import PoolWriter

CATS = [{"id": 1, "name": "cup"}, {"id": 2, "name": "cat"}]
CODECS = ("lz4_raw", "zstd", "raw")


def _inputs(seed: int, n: int = 6) -> list[np.ndarray]:
    """Photo-like cut-outs (noise on a gradient, full alpha) of a few KiB to ~50 KiB compressed."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = 40 + 17 * i, 60 + 23 * i
        base = np.linspace(0, 200, w, dtype=np.float32)[None, :, None] + rng.normal(0, 20, (h, w, 3))
        rgba = np.empty((h, w, 4), np.uint8)
        rgba[..., :3] = np.clip(base, 0, 255).astype(np.uint8)
        rgba[..., 3] = 255
        out.append(rgba)
    return out


def _write(root, arrays, codec="lz4_raw"):
    with PoolWriter.create(root, CATS, codec=codec) as w:
        for i, a in enumerate(arrays):
            w.add(a, 1 + i % 2, crop=False)
    return root


def _record(root, row):
    return InstancePool.open(root).records().to_pylist()[row]


def _garble(root, row, how, rng):
    """Change the stored bytes of one row (past its 8-byte size header, which is checked separately)."""
    rec = _record(root, row)
    shard = root / rec["path"]
    data = bytearray(shard.read_bytes())
    start, n = rec["offset"] + 8, rec["nbytes"] - 8
    if how == "random200":
        at = start + int(rng.integers(0, n - 200))
        data[at : at + 200] = rng.integers(0, 256, 200, dtype=np.uint8).tobytes()
    elif how == "zeros300":
        at = start + int(rng.integers(0, n - 300))
        data[at : at + 300] = bytes(300)
    elif how == "bitflip":
        at = start + int(rng.integers(0, n))
        data[at] ^= 1 << int(rng.integers(0, 8))
    elif how == "truncate":
        del data[rec["offset"] + rec["nbytes"] - 1 :]
    else:
        raise ValueError(how)
    shard.write_bytes(bytes(data))
    return rec


def _drop_checksums(root):
    """Rewrite the index as a pool written before checksums existed (no crc32 column)."""
    for part in (root / "index").glob("part-*.parquet"):
        table = pq.read_table(part)
        pq.write_table(table.drop(["crc32"]), part)


def test_writer_stores_the_crc32_of_each_stored_record(tmp_path):
    root = _write(tmp_path / "p", _inputs(0))
    data = (root / "data" / "shard-000000.bin").read_bytes()
    for rec in InstancePool.open(root).records().to_pylist():
        assert rec["crc32"] == zlib.crc32(data[rec["offset"] : rec["offset"] + rec["nbytes"]])


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("how", ["random200", "zeros300", "bitflip", "truncate"])
def test_garbled_record_is_a_cutout_error_reported_once(tmp_path, caplog, codec, how):
    arrays = _inputs(1)
    bad = len(arrays) - 1  # the last record: truncating the shard cuts only it
    root = _write(tmp_path / "p", arrays, codec)
    pool = InstancePool.open(root)  # damaged under an open pool (a truncated shard is refused on open)
    _garble(root, bad, how, np.random.default_rng(7))
    with caplog.at_level(logging.WARNING, logger="xpaste.pool"):
        messages = []
        for _ in range(3):
            with pytest.raises(CutoutError) as info:
                pool.rgba(bad)
            messages.append(info.value.message)
    assert len(set(messages)) == 1 and ("damaged" in messages[0] or "truncated" in messages[0])
    assert sum("skipped pool row" in r.getMessage() for r in caplog.records) == 1
    assert pool.bad_rows == {bad}
    for row, expected in enumerate(arrays[:bad]):  # untouched rows read exactly as written
        assert np.array_equal(pool.rgba(row), expected)
    draws = np.concatenate([pool.sample(np.random.default_rng(s), 40, "uniform") for s in range(10)])
    assert bad not in set(draws.tolist())


def test_raw_codec_damage_would_decode_silently_without_the_checksum(tmp_path):
    """The oracle that the checksum is what catches it: the damaged bytes still decode to the right shape."""
    arrays = _inputs(2)
    root = _write(tmp_path / "p", arrays, "raw")
    rec = _garble(root, 2, "zeros300", np.random.default_rng(3))
    blob = (root / rec["path"]).read_bytes()[rec["offset"] : rec["offset"] + rec["nbytes"]]
    silently = decode_raw(blob, rec["height"], rec["width"], "raw", "x")
    assert silently.shape == arrays[2].shape and not np.array_equal(silently, arrays[2])
    with pytest.raises(CutoutError, match="checksum"):
        InstancePool.open(root).rgba(2)


@pytest.mark.parametrize("codec", CODECS)
def test_pool_without_checksums_still_opens_and_reads_unchecked(tmp_path, codec):
    arrays = _inputs(3)
    root = _write(tmp_path / "p", arrays, codec)
    _drop_checksums(root)
    pool = InstancePool.open(root)
    assert "crc32" not in pool.records().column_names
    for row, expected in enumerate(arrays):
        assert np.array_equal(pool.rgba(row), expected)


def test_appending_to_an_old_pool_checks_the_new_rows_and_merges(tmp_path):
    arrays = _inputs(4, n=8)
    root = _write(tmp_path / "p", arrays[:4], "raw")
    _drop_checksums(root)
    with PoolWriter.open(root) as w:
        for a in arrays[4:]:
            w.add(a, 1, crop=False)
        w.compact()  # old rows (no column) and new rows in one part: nulls for the old ones
    crcs = InstancePool.open(root).records().column("crc32").to_pylist()
    assert crcs[:4] == [None] * 4 and all(isinstance(c, int) for c in crcs[4:])
    pool = InstancePool.open(root)
    for row, expected in enumerate(arrays):
        assert np.array_equal(pool.rgba(row), expected)
    _garble(root, 1, "zeros300", np.random.default_rng(0))  # old row: not checked, reads changed pixels
    _garble(root, 6, "zeros300", np.random.default_rng(0))  # new row: checked
    pool = InstancePool.open(root)
    assert not np.array_equal(pool.rgba(1), arrays[1])
    with pytest.raises(CutoutError, match="checksum"):
        pool.rgba(6)


def test_migrate_writes_checksums(tmp_path):
    from xpaste.pool.tools import migrate

    arrays = _inputs(5)
    old = _write(tmp_path / "old", arrays, "raw")
    _drop_checksums(old)
    report = migrate(old, tmp_path / "new")
    assert report.written == len(arrays)
    job = report.job_report()  # the same outcome as every job's JobReport
    assert (job.job, job.out, job.failures) == ("migrate", str(tmp_path / "new"), [])
    assert job.counts == {"rows": len(arrays), "written": len(arrays), "duplicates": 0} and job.seconds > 0
    new = InstancePool.open(tmp_path / "new")
    data = {p: (tmp_path / "new" / p).read_bytes() for p in set(new.paths.tolist())}
    for row, rec in enumerate(new.records().to_pylist()):
        assert rec["crc32"] == zlib.crc32(data[rec["path"]][rec["offset"] : rec["offset"] + rec["nbytes"]])
        assert np.array_equal(new.rgba(row), arrays[row])


def test_checksum_survives_pickling_the_pool(tmp_path):
    """DataLoader workers get a pickled pool: they check too."""
    import pickle

    arrays = _inputs(6)
    root = _write(tmp_path / "p", arrays, "raw")
    pool = pickle.loads(pickle.dumps(InstancePool.open(root)))
    _garble(root, 0, "bitflip", np.random.default_rng(1))
    with pytest.raises(CutoutError, match="checksum"):
        pool.rgba(0)
    assert np.array_equal(pool.rgba(1), arrays[1])


@pytest.mark.parametrize("how", ["random200", "zeros300", "bitflip"])
def test_augment_skips_a_garbled_cutout_once_and_keeps_every_image(tmp_path, capsys, how):
    import json

    from coco_fixtures import write_dataset

    from xpaste.cli import main

    ann, images = write_dataset(tmp_path / "d", n_images=3, size=(120, 160))
    pool = tmp_path / "pool"
    args = ["pool", "import-coco", str(ann), "--images", str(images), "--out", str(pool), "--min-area", "100"]
    assert main(args) == 0
    n = len(InstancePool.open(pool))
    sizes = InstancePool.open(pool).records().column("nbytes").to_pylist()
    bad = int(np.argmax(sizes))  # the largest record, so every kind of damage fits inside it
    _garble(pool, bad, how, np.random.default_rng(5))
    capsys.readouterr()
    code = main(["augment", "--dataset", str(ann), "--images", str(images), "--pool", str(pool), "--out",
                 str(tmp_path / "out"), "--num-paste", str(4 * n), "--seed", "1", "--sampling", "uniform"])
    captured = capsys.readouterr()
    err = captured.out + captured.err
    assert code == 0, err
    doc = json.loads((tmp_path / "out" / "annotations.json").read_text())
    assert len(doc["images"]) == 3
    log = json.loads((tmp_path / "out" / "augment_log.json").read_text())
    assert len(log["skipped_pastes"]) == 1 and f"row {bad}" in log["skipped_pastes"][0][0], log["skipped_pastes"]
    assert "damaged" in log["skipped_pastes"][0][1] and "1 pastes skipped" in err, err
    assert err.count(f"skipped pool row {bad}:") == 1  # the pool's report, once
