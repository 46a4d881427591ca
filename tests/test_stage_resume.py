"""What a stage's record binds, and when: a run that failed before its first shard (a model that does not load)
locks no setting; once a shard exists a changed setting is refused; the outputs of upstream stages are part of
the record (a stage rerun upstream is refused downstream, or redone with fresh); build-pool reruns follow the
same rules (refused in one line naming the change, `--fresh` rebuilds to exactly a clean build's pool)."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
from test_build_pool import config as bp_config
from test_build_pool import write_run

from xpaste.errors import XPasteError
from xpaste.pipeline.runner import Stage, run_stage
from xpaste.pipeline.shards import read_stage, write_shard


class Toy(Stage):
    """Items from config['n'] (or the rows of the upstream stage 'up') -> (x, x * k); setup fails when
    config['broken'] (a model that cannot be loaded)."""

    name = "toy"

    def schema(self):
        return pa.schema([("x", pa.int64()), ("y", pa.int64())])

    def fingerprint(self) -> dict:
        return {"k": self.config["k"], "model": self.config.get("model"), "shard_size": self.config["shard_size"]}

    def plan(self):
        if self.upstream:
            return [{"x": r["x"]} for r in read_stage(self.run_dir / "up").to_pylist()]
        return [{"x": i} for i in range(self.config["n"])]

    def prepare(self) -> None:
        if self.config.get("broken"):
            raise XPasteError(f"cannot load model {self.config.get('model')!r}")

    def process(self, items):
        return [{"x": it["x"], "y": it["x"] * self.config["k"]} for it in items], []


class Downstream(Toy):
    upstream = ("up",)


def toy(tmp: Path, cls=Toy, **config) -> Stage:
    return cls(tmp, {"n": 10, "k": 2, "shard_size": 3, **config})


def rows(stage: Stage) -> list[dict]:
    return read_stage(stage.stage_dir).to_pylist()


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("changed", [{"model": "other"}, {"k": 5}, {"n": 4}])
def test_a_stage_that_failed_before_its_first_shard_locks_nothing(tmp_path, workers, changed):
    with pytest.raises(XPasteError):
        run_stage(toy(tmp_path, model="missing", broken=True), progress=False, workers=workers)
    assert not list((tmp_path / "toy").glob("shard-*.parquet"))
    stage = toy(tmp_path, **{"model": "missing", **changed})  # the corrected command runs
    run_stage(stage, progress=False, workers=workers)
    k, n = stage.config["k"], stage.config["n"]
    assert rows(stage) == [{"x": i, "y": i * k} for i in range(n)]
    recorded = json.loads((stage.stage_dir / "stage.json").read_text())["fingerprint"]
    assert recorded == stage.fingerprint()
    # once shards exist, the settings bind: a change is refused, naming it
    with pytest.raises(XPasteError) as e:
        run_stage(toy(tmp_path, **{"model": "missing", **changed, "k": k + 1}), progress=False, workers=workers)
    assert "setting k changed" in e.value.message


def write_up(run: Path, values: list[int], seed: int = 0) -> None:
    """The upstream stage's rows (x, seed): like generate's, whose seed changes the images but not the work
    list of segment (candidate ids and paths)."""
    for old in (run / "up").glob("shard-*.parquet") if (run / "up").exists() else []:
        old.unlink()
    schema = pa.schema([("x", pa.int64()), ("seed", pa.int64())])
    for k in range(0, len(values), 4):
        write_shard(run / "up", k // 4, [{"x": v, "seed": seed} for v in values[k : k + 4]], schema, [])


@pytest.mark.parametrize("new_up,seed", [(list(range(8)), 1), ([0, 1, 2, 3, 4, 5, 6, 9], 0),
                                         ([0, 1, 2, 3, 4, 5, 6], 0), ([7, 1, 2, 3, 4, 5, 6, 8], 2)])
def test_upstream_outputs_are_part_of_the_record(tmp_path, new_up, seed):
    write_up(tmp_path, list(range(8)))
    run_stage(toy(tmp_path, Downstream), progress=False)
    write_up(tmp_path, list(range(8)))  # the upstream redone to the same outputs: resumes
    report = run_stage(toy(tmp_path, Downstream), progress=False)
    assert report.shards_resumed == report.shards == 3
    write_up(tmp_path, new_up, seed)  # redone to other outputs: refused, naming the upstream stage
    with pytest.raises(XPasteError) as e:
        run_stage(toy(tmp_path, Downstream), progress=False)
    assert "stage 'up' changed" in e.value.message and "\n" not in str(e.value)
    stage = toy(tmp_path, Downstream)
    run_stage(stage, progress=False, fresh=True)
    assert rows(stage) == [{"x": v, "y": 2 * v} for v in new_up]


def test_segment_and_score_record_their_upstream_stages():
    from xpaste.stages.score import ScoreStage
    from xpaste.stages.segment import SegmentStage

    assert set(SegmentStage.upstream) == {"generate", "retrieve"}
    assert set(ScoreStage.upstream) == {"generate", "retrieve", "segment"}


# --- build-pool reruns ---------------------------------------------------------------------------------

TABLE = [{"candidate": f"c{i:02d}", "category": 1 + i % 2, "segmenter": s, "score": 30.0 + i,
          "area": [0.03, 0.2, 0.6][i % 3]} for i in range(12) for s in ("s1",)]


def pool_rows(pool: Path) -> list[tuple]:
    from xpaste.pool.store import InstancePool

    records = InstancePool.open(pool).records().to_pylist()
    return sorted((r["instance_id"], r["candidate_id"]) for r in records)


def build_outputs(run: Path) -> tuple:
    import pyarrow.parquet as pq

    summary = json.loads((run / "build_pool" / "summary.json").read_text())
    summary.pop("seconds"), summary.pop("pool")
    header = json.loads((run / "pool" / "pool.json").read_text())
    decisions = pq.read_table(run / "build_pool" / "decisions.parquet").to_pylist()
    return pool_rows(run / "pool"), summary, header["config"]["build_pool"], decisions


@pytest.mark.parametrize("change,oracle_kept", [({"area_min": 0.5}, 4), ({"area_max": 0.1}, 4),
                                                ({"t": 100.0, "d": 5.0}, 6)])
def test_build_pool_rerun_with_other_options_is_refused_and_fresh_rebuilds(tmp_path, change, oracle_kept):
    from xpaste.stages.build_pool import build_pool

    base = {"d": 1000.0, "area_min": 0.02, "area_max": 1.0}
    write_run(tmp_path / "r", TABLE)
    write_run(tmp_path / "clean", TABLE)
    build_pool(tmp_path / "r", bp_config(tmp_path / "r", **base), progress=False)
    first = build_outputs(tmp_path / "r")
    assert first[1]["added"] == 12
    build_pool(tmp_path / "r", bp_config(tmp_path / "r", **base), progress=False)  # unchanged: a no-op
    assert build_outputs(tmp_path / "r") == first
    with pytest.raises(XPasteError) as e:
        build_pool(tmp_path / "r", bp_config(tmp_path / "r", **{**base, **change}), progress=False)
    key = sorted(change)[0]
    assert f"build_pool.{key} changed" in e.value.message and "\n" not in str(e.value)
    assert build_outputs(tmp_path / "r") == first  # nothing written
    build_pool(tmp_path / "r", bp_config(tmp_path / "r", **{**base, **change}), progress=False, fresh=True)
    # the oracle: a build from scratch with the new options in a clean copy of the run
    build_pool(tmp_path / "clean", bp_config(tmp_path / "clean", **{**base, **change}), progress=False)
    got, want = build_outputs(tmp_path / "r"), build_outputs(tmp_path / "clean")
    assert got == want
    assert got[1]["added"] == oracle_kept == len(got[0])
    assert got[2][key] == change[key]


def test_build_pool_refuses_after_an_upstream_stage_was_rerun(tmp_path):
    from xpaste.stages.build_pool import build_pool

    write_run(tmp_path, TABLE)
    cfg = bp_config(tmp_path, d=1000.0, area_min=0.0, area_max=1.0)
    build_pool(tmp_path, cfg, progress=False)
    rescored = [{**row, "score": row["score"] + 1.0} for row in TABLE]
    write_run(tmp_path, rescored)  # score (and the images) rewritten
    with pytest.raises(XPasteError) as e:
        build_pool(tmp_path, cfg, progress=False)
    assert "changed since this pool was built" in e.value.message and "stage '" in e.value.message
    build_pool(tmp_path, cfg, progress=False, fresh=True)
    scores = sorted(json.loads(json.dumps(r))["clip_score"] for r in
                    __import__("pyarrow.parquet", fromlist=["x"]).read_table(
                        tmp_path / "build_pool" / "decisions.parquet").to_pylist())
    assert scores == sorted(row["score"] for row in rescored)


def test_build_pool_cli_fresh_flag(tmp_path, capsys):
    from xpaste.cli import main

    write_run(tmp_path, TABLE)
    common = ["build-pool", "--run", str(tmp_path), "--d", "1000", "--area-max", "1.0"]
    assert main(common + ["--area-min", "0.02"]) == 0
    capsys.readouterr()
    assert main(common + ["--area-min", "0.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "area_min changed" in err[0] and "--fresh" in err[0]
    assert main(common + ["--area-min", "0.5", "--fresh"]) == 0
    summary = json.loads((tmp_path / "build_pool" / "summary.json").read_text())
    assert summary["added"] == 4 and len(pool_rows(tmp_path / "pool")) == 4
    header = json.loads((tmp_path / "pool" / "pool.json").read_text())
    assert header["config"]["build_pool"]["area_min"] == 0.5


@pytest.mark.parametrize("rerun", ["images", "rows"])
def test_segment_after_generate_was_redone_is_refused_then_fresh_redoes(tmp_path, capsys, rerun):
    """The real segment stage (GrabCut): generate redone after segment started, to other images under the same
    names (as with another model file) or to other rows, is refused in one line naming generate."""
    import numpy as np

    from xpaste.cli import main

    table = [{"candidate": f"c{i}", "category": 1 + i % 2, "segmenter": "s1", "score": 30.0, "area": 0.4}
             for i in range(3)]
    write_run(tmp_path, table, seed=1)
    args = ["segment", "--run", str(tmp_path), "--segmenter", "grabcut"]
    assert main(args) == 0
    first = read_stage(tmp_path / "segment").to_pylist()
    assert main(args) == 0  # unchanged: resumed
    assert read_stage(tmp_path / "segment").to_pylist() == first
    if rerun == "images":
        write_run(tmp_path, table, seed=2)  # the same candidate rows, other pixels
    else:
        import pyarrow.parquet as pq

        rows = pq.read_table(tmp_path / "generate" / "shard-000000.parquet")
        seeds = np.asarray(rows.column("seed").to_pylist()) + 1
        write_shard(tmp_path / "generate", 0, [{**r, "seed": int(s)} for r, s in zip(rows.to_pylist(), seeds)],
                    rows.schema, [])
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stage 'generate' changed" in err[0] and "--fresh" in err[0]
    assert main([*args, "--fresh"]) == 0
    assert [r["candidate_id"] for r in read_stage(tmp_path / "segment").to_pylist()] == ["c0", "c1", "c2"]


def test_build_pool_into_a_pool_it_did_not_start_is_refused(tmp_path):
    from xpaste.stages.build_pool import build_pool

    write_run(tmp_path / "a", TABLE)
    write_run(tmp_path / "b", TABLE)
    pool = tmp_path / "shared-pool"
    build_pool(tmp_path / "a", bp_config(tmp_path / "a", out=str(pool), area_min=0.5), progress=False)
    before = pool_rows(pool)
    with pytest.raises(XPasteError) as e:  # run b would mix its cut-outs into run a's pool
        build_pool(tmp_path / "b", bp_config(tmp_path / "b", out=str(pool), area_min=0.02), progress=False)
    assert "did not start" in e.value.message and pool_rows(pool) == before
    build_pool(tmp_path / "b", bp_config(tmp_path / "b", out=str(pool), area_min=0.02), progress=False, fresh=True)
    assert len(pool_rows(pool)) == 12


def test_a_segmenter_that_fails_to_load_locks_nothing(tmp_path, capsys):
    """`segment --segmenter rembg:<missing model>` fails; the corrected command is not refused."""
    from xpaste.cli import main

    import shutil

    write_run(tmp_path, TABLE[:3])
    shutil.rmtree(tmp_path / "segment")  # only the candidates: segment has not run
    missing = tmp_path / "no-such-model.onnx"
    assert main(["segment", "--run", str(tmp_path), "--segmenter", f"rembg:{missing}"]) == 2
    assert not list((tmp_path / "segment").glob("shard-*.parquet"))
    capsys.readouterr()
    assert main(["segment", "--run", str(tmp_path), "--segmenter", "grabcut"]) == 0
    rows = read_stage(tmp_path / "segment").to_pylist()
    assert [r["segmenter"] for r in rows] == ["grabcut"] * 3


def test_one_run_feeds_several_pools_each_with_its_own_record(tmp_path):
    from xpaste.stages.build_pool import build_pool

    write_run(tmp_path, TABLE)
    a, b = tmp_path / "pool-a", tmp_path / "pool-b"
    build_pool(tmp_path, bp_config(tmp_path, out=str(a), area_min=0.5), progress=False)
    build_pool(tmp_path, bp_config(tmp_path, out=str(b), area_min=0.02), progress=False)
    rows_a, rows_b = pool_rows(a), pool_rows(b)
    assert len(rows_a) == 4 and len(rows_b) == 12
    build_pool(tmp_path, bp_config(tmp_path, out=str(a), area_min=0.5), progress=False)  # its own record: resumes
    assert pool_rows(a) == rows_a
    with pytest.raises(XPasteError, match="area_min changed"):
        build_pool(tmp_path, bp_config(tmp_path, out=str(a), area_min=0.02), progress=False)
    assert pool_rows(a) == rows_a and pool_rows(b) == rows_b


# ------------------------------------------------------------------ adding a segmenter to a run
CALLS: list[tuple[str, int]] = []


class CountingSegmenter:
    """A segmenter without weights for the tests: a centred box whose size depends on its argument; every call
    is counted in CALLS as (argument, images). 'broken' fails to load."""

    def __init__(self, arg: str = "a"):
        if arg == "broken":
            raise XPasteError("cannot load segmenter 'fake:broken'")
        self.arg = arg

    def segment(self, images, prompts):
        import numpy as np

        CALLS.append((self.arg, len(images)))
        out = []
        for image in images:
            h, w = image.shape[:2]
            m = np.zeros((h, w), np.float32)
            k = 2 + "abcdef".index(self.arg[0]) if self.arg[0] in "abcdef" else 2
            m[h // (k + 1): h - h // (k + 1), w // (k + 1): w - w // (k + 1)] = 1.0
            out.append(m)
        return out


@pytest.fixture
def fake_segmenters(monkeypatch):
    import xpaste.segment as seg

    monkeypatch.setitem(seg.SEGMENTERS, "fake", "test_stage_resume:CountingSegmenter")
    monkeypatch.setitem(seg._EXTRAS, "fake", "segment")
    CALLS.clear()
    return CALLS


def _segment(run: Path, *specs: str, fresh: bool = False) -> int:
    from xpaste.cli import main

    argv = ["segment", "--run", str(run), "--set", "shard_size=2"]
    for spec in specs:
        argv += ["--segmenter", spec]
    return main(argv + (["--fresh"] if fresh else []))


def _shards(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run / "segment").glob("shard-*.parquet"))}


def test_an_added_segmenter_runs_alone_and_keeps_the_earlier_shards(tmp_path, fake_segmenters, capsys):
    """Adding a segmenter needs no --fresh: only the new one runs, on every candidate, in shards of its own; the
    earlier shards and masks stay byte for byte; the rows are those of a run made with both from the start."""
    import shutil

    write_run(tmp_path / "run", TABLE[:5])  # 5 candidates
    run = tmp_path / "run"
    shutil.rmtree(run / "segment")
    assert _segment(run, "fake:a") == 0
    assert fake_segmenters == [("a", 5)] or sum(n for _, n in fake_segmenters) == 5
    before = _shards(run)
    assert len(before) == 3
    fake_segmenters.clear()
    assert _segment(run, "fake:a") == 0 and fake_segmenters == []  # unchanged: resumed
    assert _segment(run, "fake:a", "fake:b") == 0  # added: only b runs, on every candidate
    assert {arg for arg, _ in fake_segmenters} == {"b"} and sum(n for _, n in fake_segmenters) == 5
    after = _shards(run)
    assert len(after) == 6 and {k: after[k] for k in before} == before
    record = json.loads((run / "segment" / "stage.json").read_text())
    assert record["fingerprint"]["segmenters"] == ["fake:a"] and record["added"] == [{"segmenters": ["fake:b"]}]
    fake_segmenters.clear()
    assert _segment(run, "fake:a", "fake:b") == 0 and fake_segmenters == []  # the extended run resumes
    extended = read_stage(run / "segment").to_pylist()
    assert [r["segmenter"] for r in extended] == ["fake:a"] * 5 + ["fake:b"] * 5

    # the same rows as a run made with both segmenters from the start (whose record has no "added")
    write_run(tmp_path / "both", TABLE[:5])
    shutil.rmtree(tmp_path / "both" / "segment")
    assert _segment(tmp_path / "both", "fake:a", "fake:b") == 0
    key = lambda r: (r["candidate_id"], r["segmenter"])  # noqa: E731
    assert sorted(read_stage(tmp_path / "both" / "segment").to_pylist(), key=key) == sorted(extended, key=key)
    assert "added" not in json.loads((tmp_path / "both" / "segment" / "stage.json").read_text())
    assert [r["segmenter"] for r in read_stage(tmp_path / "both" / "segment").to_pylist()][:2] == ["fake:a", "fake:b"]


@pytest.mark.parametrize("specs", [["fake:b", "fake:a"], ["fake:a"], ["fake:b"], ["fake:a", "fake:c"]])
def test_a_removed_or_reordered_segmenter_is_still_refused(tmp_path, fake_segmenters, capsys, specs):
    import shutil

    write_run(tmp_path, TABLE[:3])
    shutil.rmtree(tmp_path / "segment")
    assert _segment(tmp_path, "fake:a", "fake:b") == 0
    before = _shards(tmp_path)
    capsys.readouterr()
    assert _segment(tmp_path, *specs) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "segmenters changed" in err[0] and "--fresh" in err[0], err
    assert _shards(tmp_path) == before
    assert _segment(tmp_path, *specs, fresh=True) == 0  # --fresh redoes it, as before
    assert [r["segmenter"] for r in read_stage(tmp_path / "segment").to_pylist()][: len(specs)] == specs


def test_an_added_segmenter_that_fails_to_load_locks_nothing(tmp_path, fake_segmenters, capsys):
    import shutil

    write_run(tmp_path, TABLE[:3])
    shutil.rmtree(tmp_path / "segment")
    assert _segment(tmp_path, "fake:a") == 0
    before = _shards(tmp_path)
    assert _segment(tmp_path, "fake:a", "fake:broken") == 2
    assert _shards(tmp_path) == before
    fake_segmenters.clear()
    assert _segment(tmp_path, "fake:a", "fake:c") == 0  # the corrected addition is not refused
    assert {arg for arg, _ in fake_segmenters} == {"c"}
    assert _segment(tmp_path, "fake:a", "fake:c", "fake:d") == 0  # a second addition
    assert [r["segmenter"] for r in read_stage(tmp_path / "segment").to_pylist()] == \
        ["fake:a"] * 3 + ["fake:c"] * 3 + ["fake:d"] * 3
