"""SIGKILL `augment` and `build-pool` at random points, many times: every file visible under its final name is
complete, and the finished rerun equals an uninterrupted run, with unique ids."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from coco_fixtures import write_dataset
from file_checks import assert_complete_files
from PIL import Image

from xpaste.cli import main
from xpaste.pool.store import InstancePool

KILLS = 4


def kill_when(cmd: list[str], ready, timeout: float = 60) -> bool:
    """Start `cmd`, SIGKILL it as soon as ready() is true; returns whether it was still running then."""
    proc = subprocess.Popen([sys.executable, "-m", "xpaste", *cmd], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=dict(os.environ))
    deadline = time.time() + timeout
    while proc.poll() is None and not ready() and time.time() < deadline:
        time.sleep(0.002)
    alive = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return alive


def digest(folder: Path, skip=("augment_log.json",)) -> dict[str, str]:
    """Every file's sha256 (internal shard tables included) but the log, which counts resumed work."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name not in skip}


def test_augment_killed_repeatedly_resumes_to_identical_output(tmp_path):
    augment_kill_cycle(tmp_path, KILLS, seed=0)


def augment_kill_cycle(tmp_path: Path, kills: int, seed: int) -> None:
    ann, images = write_dataset(tmp_path / "data", n_images=16, size=(240, 320))
    pool = tmp_path / "pool"
    assert main(["pool", "import-coco", str(ann), "--images", str(images), "--out", str(pool), "--min-area", "100"]) == 0
    args = ["augment", "--dataset", str(ann), "--images", str(images), "--pool", str(pool), "--copies", "3",
            "--seed", "5", "--max-paste", "10", "--blend", "gaussian"]
    assert main([*args, "--out", str(tmp_path / "reference")]) == 0
    expected = digest(tmp_path / "reference")

    out = tmp_path / "killed"
    rng = np.random.default_rng(seed)
    mid_run = 0
    for _ in range(kills):
        target = int(rng.integers(1, 47))
        images = out / "images"
        mid_run += kill_when([*args, "--out", str(out), "--workers", str(int(rng.integers(1, 3)))],
                             lambda: images.exists() and sum(1 for n in os.listdir(images)
                                                             if not n.startswith(".")) >= target)
        assert_complete_files(out)
        assert not (out / "annotations.json").exists() or json.loads((out / "annotations.json").read_text())
    assert mid_run >= min(2, kills), "the kills never landed in the middle of a run"
    assert main([*args, "--out", str(out)]) == 0
    assert digest(out) == expected
    doc = json.loads((out / "annotations.json").read_text())
    assert len({a["id"] for a in doc["annotations"]}) == len(doc["annotations"])


def fake_run(run: Path, n: int = 60) -> None:
    """A run folder as generate/segment/score leave it (synthetic images, masks, scores, embeddings)."""
    from xpaste.io import write_json_atomic
    from xpaste.stages.candidates import candidate_row, candidate_schema
    from xpaste.stages.score import ScoreStage
    from xpaste.stages.segment import SegmentStage
    from xpaste.pipeline.shards import write_shard

    rng = np.random.default_rng(1)
    write_json_atomic(run / "categories.json", {"categories": [{"id": 1, "name": "cup"}, {"id": 2, "name": "a/b"}]})
    cands, segs, scores = [], [], []
    yy, xx = np.mgrid[:64, :64]
    for i in range(n):
        cid, cat = f"gen-x-{i:04d}", 1 + i % 2
        img = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        mask = (((yy - 32) / rng.uniform(8, 30)) ** 2 + ((xx - 32) / rng.uniform(8, 30)) ** 2 < 1) * 255
        (run / "images").mkdir(parents=True, exist_ok=True)
        (run / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(run / "images" / f"{cid}.png")
        Image.fromarray(mask.astype(np.uint8)).save(run / "masks" / f"{cid}.png")
        cands.append(candidate_row(candidate_id=cid, kind="object", category_id=cat, category="cup", path=f"images/{cid}.png",
                                   source="generated", model="m", prompt="p", seed=i, steps=2, guidance=1.0,
                                   width=64, height=64, url=""))
        segs.append({"candidate_id": cid, "category_id": cat, "segmenter": "grabcut", "mask_path": f"masks/{cid}.png",
                     "area_frac": float((mask > 128).mean()), "components": 1})
        emb = rng.normal(size=8).astype(np.float32)
        scores.append({"candidate_id": cid, "category_id": cat, "segmenter": "grabcut",
                       "clip_score": float(rng.uniform(10, 30)), "embedding": (emb / np.linalg.norm(emb)).tolist()})
    write_shard(run / "generate", 0, cands, candidate_schema(), [])
    write_shard(run / "segment", 0, segs, SegmentStage.schema(None), [])
    write_shard(run / "score", 0, scores, ScoreStage.schema(None), [])


def pool_rows_flushed(pool: Path) -> int:
    """Rows a reader sees now (0 before the pool exists or while its header is being replaced)."""
    try:
        return len(InstancePool.open(pool))
    except Exception:  # noqa: BLE001 - polled while another process writes
        return 0


def pool_rows(pool: Path) -> list[tuple]:
    return [(r["instance_id"], r["category_id"], r["candidate_id"], r["clip_score"])
            for r in InstancePool.open(pool).records().to_pylist()]


def test_build_pool_killed_repeatedly_resumes_to_the_same_pool(tmp_path):
    build_pool_kill_cycle(tmp_path, KILLS, seed=2)


def build_pool_kill_cycle(tmp_path: Path, kills: int, seed: int) -> None:
    fake_run(tmp_path / "reference")
    args = ["--d", "1000", "--area-min", "0", "--area-max", "1", "--dedup", "0.999", "--set", "build_pool.flush_every=4"]
    assert main(["build-pool", "--run", str(tmp_path / "reference"), *args]) == 0
    expected = pool_rows(tmp_path / "reference" / "pool")
    assert len(expected) > 20

    run = tmp_path / "killed"
    fake_run(run)
    rng = np.random.default_rng(seed)
    mid_run, shards_seen = 0, 0
    for _ in range(kills):
        target = int(rng.integers(1, len(expected)))
        mid_run += kill_when(["build-pool", "--run", str(run), *args],
                             lambda: pool_rows_flushed(run / "pool") >= target)
        assert_complete_files(run / "pool")
        if (run / "pool" / "pool.json").exists():
            pool = InstancePool.open(run / "pool")  # every index row's pixels exist: they are written first
            assert all((run / "pool" / p).is_file() for p in pool.paths)
            assert all(pool.rgba(i).shape[2] == 4 for i in range(len(pool)))
            assert len(set(pool.instance_ids.tolist())) == len(pool)
            shards_seen = max(shards_seen, len(list((run / "pool" / "index").glob("*.parquet"))))
    assert mid_run >= min(2, kills), "the kills never landed in the middle of a run"
    assert shards_seen >= 1, "no kill happened after an index flush"
    assert main(["build-pool", "--run", str(run), *args]) == 0
    assert pool_rows(run / "pool") == expected  # same rows in the same order
    assert pa.Table.from_pylist([{"x": 1}])  # pyarrow still fine after kills (shared files untouched)
