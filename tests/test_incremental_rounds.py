"""Segment and score take in work that was only ADDED upstream (a planned round's candidates, an added segmenter)
as added work: only the new candidates are segmented, only the new masks scored, in shards after the earlier
ones (`xpaste.stages.additions`); `xpaste run --plan` then rebuilds build-pool alone.

Oracles: a run made from scratch (`--fresh`, or a clean copy) over every candidate gives the rows, masks,
decisions and pool (instance ids and bytes) the incremental run must give; the weightless segmenter and scorer
below count their calls, so the work done is known exactly; earlier shards are compared by sha256."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from xpaste.cli import main
from xpaste.errors import XPasteError
from xpaste.pipeline.shards import read_stage, write_shard
from xpaste.stages.candidates import candidate_row, candidate_schema

CALLS: list[tuple[str, int]] = []  # (segmenter argument, images) per segment call
SCORED: list[int] = []  # images per embed_images call
KILL = {"after": None}  # raise KeyboardInterrupt (a Ctrl-C) once this many more model calls were made


def _tick() -> None:
    if KILL["after"] is not None:
        if KILL["after"] == 0:
            KILL["after"] = None
            raise KeyboardInterrupt
        KILL["after"] -= 1


class CountingSegmenter:
    """Weightless and deterministic: foreground where one channel (picked by the argument) is > 100."""

    def __init__(self, arg: str = "a"):
        if arg == "broken":
            raise XPasteError("cannot load segmenter 'fake:broken'")
        self.arg = arg

    def segment(self, images, prompts):
        _tick()
        CALLS.append((self.arg, len(images)))
        channel = "abc".index(self.arg[0]) if self.arg[0] in "abc" else 0
        return [(image[..., channel] > 100).astype(np.float32) for image in images]


class CountingScorer:
    """A CLIP stand-in: a unit vector of the composite's channel statistics; texts hashed to unit vectors."""

    def __init__(self, model, pretrained=None, device=None, batch_size=32):
        self.model = model

    def embed_images(self, images):
        _tick()
        SCORED.append(len(images))
        out = np.stack([np.concatenate([im.reshape(-1, 3).mean(0), im.reshape(-1, 3).std(0)]) for im in images])
        return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)

    def embed_texts(self, texts):
        out = np.stack([np.frombuffer(hashlib.sha256(t.encode()).digest()[:6], np.uint8).astype(np.float32) + 1
                        for t in texts])
        return out / np.linalg.norm(out, axis=1, keepdims=True)


@pytest.fixture
def fake_segmenter(monkeypatch):
    import xpaste.segment as seg

    monkeypatch.setitem(seg.SEGMENTERS, "fake", "test_incremental_rounds:CountingSegmenter")
    monkeypatch.setitem(seg._EXTRAS, "fake", "segment")
    CALLS.clear(), SCORED.clear()
    KILL["after"] = None
    yield
    KILL["after"] = None


@pytest.fixture
def fakes(fake_segmenter, monkeypatch):
    from xpaste import score as backends

    monkeypatch.setitem(backends.SCORERS, "clip", "test_incremental_rounds:CountingScorer")


# ----------------------------------------------------------------------------------------- a synthetic run
def add_candidates(run: Path, shard: int, ids: list[str]) -> None:
    """Generate's shard `shard`: one candidate per id ('gen-<category>-...'), each a random 24x24 image seeded
    by its id (so a clean copy of the run has the same pixels)."""
    rows = []
    for cid in ids:
        cat = int(cid.split("-")[1])
        seed = int(hashlib.sha256(cid.encode()).hexdigest()[:8], 16)
        rel = f"images/{cid}.png"
        (run / "images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.random.default_rng(seed).integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(run / rel)
        rows.append(candidate_row(candidate_id=cid, kind="object", category_id=cat, category=["cup", "dog"][cat - 1],
                                  path=rel, source="generated", model="m", prompt="p", seed=seed, steps=1,
                                  guidance=1.0, width=24, height=24, url=""))
    write_shard(run / "generate", shard, rows, candidate_schema(), [])


FIRST = [["gen-1-000000", "gen-2-000000", "gen-1-000001"], ["gen-2-000001", "gen-1-000002"]]  # 5, 2 shards
ROUND = [["gen-1-p0a1b2c3d-000000", "gen-2-p0a1b2c3d-000000", "gen-2-p0a1b2c3d-000001"],
         ["gen-1-p0a1b2c3d-000001"]]  # 4 more, ids that sort between the first round's


def first_round(run: Path) -> None:
    for k, ids in enumerate(FIRST):
        add_candidates(run, k, ids)


def planned_round(run: Path, start: int = 2) -> None:
    for k, ids in enumerate(ROUND):
        add_candidates(run, start + k, ids)


def segment(run: Path, *specs: str, fresh: bool = False) -> int:
    argv = ["segment", "--run", str(run), "--set", "shard_size=2"]
    for spec in specs:
        argv += ["--segmenter", spec]
    return main(argv + (["--fresh"] if fresh else []))


def score(run: Path, fresh: bool = False) -> int:
    argv = ["score", "--run", str(run), "--clip", "fake", "--set", "shard_size=3"]
    return main(argv + (["--fresh"] if fresh else []))


def shard_sums(run: Path, stage: str) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((run / stage).glob("shard-*.parquet"))}


def record(run: Path, stage: str) -> dict:
    return json.loads((run / stage / "stage.json").read_text())


def key(row: dict) -> tuple:
    return row["candidate_id"], row["segmenter"]


def table(run: Path, stage: str) -> list[dict]:
    return sorted(read_stage(run / stage).to_pylist(), key=key)


def masks(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted((run / "masks").rglob("*.png"))}


def clean_copy(run: Path, dest: Path) -> Path:
    """The run's candidates alone (generate and its images, mtimes kept), to redo everything from scratch."""
    for name in ("generate", "images"):
        shutil.copytree(run / name, dest / name)
    return dest


def test_a_round_segments_and_scores_only_its_candidates(tmp_path, fakes, capsys):
    run = tmp_path / "run"
    first_round(run)
    assert segment(run, "fake:a", "fake:b") == 0
    assert sorted(CALLS) == [("a", 1), ("a", 2), ("a", 2), ("b", 1), ("b", 2), ("b", 2)]  # 5 images each
    assert score(run) == 0 and sum(SCORED) == 10
    seg_before, score_before = shard_sums(run, "segment"), shard_sums(run, "score")
    seg_record = record(run, "segment")
    masks_before = {k: (run / k).stat().st_mtime_ns for k in masks(run)}

    planned_round(run)  # generate appends shards 2 and 3: 4 more candidates
    CALLS.clear(), SCORED.clear()
    assert segment(run, "fake:a", "fake:b") == 0
    assert sum(n for _, n in CALLS) == 8 and {a for a, _ in CALLS} == {"a", "b"}  # the 4 new ones, not all 9
    seg_after = shard_sums(run, "segment")
    assert {k: seg_after[k] for k in seg_before} == seg_before and len(seg_after) == len(seg_before) + 2
    assert {k: (run / k).stat().st_mtime_ns for k in masks_before} == masks_before  # earlier masks untouched
    got = record(run, "segment")
    assert {k: v for k, v in got.items() if k != "added"} == seg_record  # the first part's record, as it was
    [added] = got["added"]
    assert added["items"] == 4 and added["upstream"]["generate"] != seg_record["upstream"]["generate"]
    new = [r["candidate_id"] for p in sorted((run / "segment").glob("shard-*.parquet"))[len(seg_before):]
           for r in pq.read_table(p).to_pylist()]
    assert sorted(set(new)) == sorted(i for ids in ROUND for i in ids)
    assert score(run) == 0 and sum(SCORED) == 8  # only the 8 new masks
    score_after = shard_sums(run, "score")
    assert {k: score_after[k] for k in score_before} == score_before and len(score_after) == len(score_before) + 3
    assert record(run, "score")["added"][0]["items"] == 8

    # rerun when done: nothing runs, nothing is written
    CALLS.clear(), SCORED.clear()
    stamps = {p: p.stat().st_mtime_ns for stage in ("segment", "score") for p in (run / stage).iterdir()}
    assert segment(run, "fake:a", "fake:b") == 0 and score(run) == 0
    assert CALLS == [] and SCORED == []
    assert {p: p.stat().st_mtime_ns for stage in ("segment", "score") for p in (run / stage).iterdir()} == stamps

    # the oracle: a run made from scratch over all 9 candidates
    clean = clean_copy(run, tmp_path / "clean")
    assert segment(clean, "fake:a", "fake:b") == 0 and score(clean) == 0
    assert table(run, "segment") == table(clean, "segment") and len(table(run, "segment")) == 18
    assert table(run, "score") == table(clean, "score")
    assert masks(run) == masks(clean)

    # then a segmenter added: it alone runs, on all 9; score scores its 9 masks only
    CALLS.clear(), SCORED.clear()
    assert segment(run, "fake:a", "fake:b", "fake:c") == 0
    assert {a for a, _ in CALLS} == {"c"} and sum(n for _, n in CALLS) == 9
    assert [a.get("segmenters") for a in record(run, "segment")["added"]] == [None, ["fake:c"]]
    assert score(run) == 0 and sum(SCORED) == 9
    assert segment(clean, "fake:a", "fake:b", "fake:c", fresh=True) == 0 and score(clean, fresh=True) == 0
    assert table(run, "segment") == table(clean, "segment") and table(run, "score") == table(clean, "score")
    assert "added" not in record(clean, "segment") and "added" not in record(clean, "score")


def test_a_round_and_a_segmenter_added_in_one_rerun(tmp_path, fakes):
    """Both at once: the new candidates run with the earlier segmenter, then the new segmenter on every one."""
    run = tmp_path / "run"
    first_round(run)
    assert segment(run, "fake:a") == 0 and score(run) == 0
    planned_round(run)
    CALLS.clear(), SCORED.clear()
    assert segment(run, "fake:a", "fake:b") == 0
    assert sum(n for a, n in CALLS if a == "a") == 4 and sum(n for a, n in CALLS if a == "b") == 9
    assert [sorted(a) for a in record(run, "segment")["added"]] == [["items", "items_digest", "upstream"],
                                                                   ["segmenters"]]
    assert score(run) == 0 and sum(SCORED) == 13
    clean = clean_copy(run, tmp_path / "clean")
    assert segment(clean, "fake:a", "fake:b") == 0 and score(clean) == 0
    assert table(run, "segment") == table(clean, "segment") and table(run, "score") == table(clean, "score")


def test_added_work_on_worker_processes(tmp_path, fakes):
    """The parts travel to forked workers (engine local, workers 2): the same outputs as a clean run."""
    run = tmp_path / "run"
    first_round(run)
    assert segment(run, "fake:a") == 0 and score(run) == 0
    before = {s: shard_sums(run, s) for s in ("segment", "score")}
    planned_round(run)
    assert main(["segment", "--run", str(run), "--set", "shard_size=2", "--segmenter", "fake:a", "--segmenter",
                 "fake:b", "--workers", "2"]) == 0
    assert main(["score", "--run", str(run), "--clip", "fake", "--set", "shard_size=3", "--workers", "2"]) == 0
    for s in ("segment", "score"):
        now = shard_sums(run, s)
        assert {k: now[k] for k in before[s]} == before[s]
    clean = clean_copy(run, tmp_path / "clean")
    assert segment(clean, "fake:a", "fake:b") == 0 and score(clean) == 0
    assert table(run, "segment") == table(clean, "segment") and table(run, "score") == table(clean, "score")


@pytest.mark.parametrize("stage,kill_after", [("segment", 0), ("segment", 1), ("score", 0), ("score", 1)])
def test_killed_mid_addition_a_rerun_finishes_it(tmp_path, fakes, stage, kill_after):
    """Ctrl-C during the added part (before its first shard, or after one): the rerun finishes exactly that work,
    the earlier shards stay byte for byte, and the outputs are a clean run's."""
    run = tmp_path / "run"
    first_round(run)
    assert segment(run, "fake:a", "fake:b") == 0 and score(run) == 0
    before = {s: shard_sums(run, s) for s in ("segment", "score")}
    planned_round(run)
    if stage == "score":
        assert segment(run, "fake:a", "fake:b") == 0
    KILL["after"] = kill_after * (2 if stage == "segment" else 1)  # segment: a and b per shard
    assert (segment(run, "fake:a", "fake:b") if stage == "segment" else score(run)) == 130
    written = shard_sums(run, stage)
    assert len(written) == len(before[stage]) + kill_after
    CALLS.clear(), SCORED.clear()
    assert segment(run, "fake:a", "fake:b") == 0 and score(run) == 0
    if stage == "segment":  # the 4 new candidates less the shard (2) written before the kill
        assert sum(n for _, n in CALLS) == 2 * (4 - 2 * kill_after) and sum(SCORED) == 8
    else:
        assert CALLS == [] and sum(SCORED) == 8 - 3 * kill_after
    after = {s: shard_sums(run, s) for s in ("segment", "score")}
    for s in ("segment", "score"):
        assert {k: after[s][k] for k in before[s]} == before[s]
    assert {k: after[stage][k] for k in written} == written  # the shard written before the kill, too
    clean = clean_copy(run, tmp_path / "clean")
    assert segment(clean, "fake:a", "fake:b") == 0 and score(clean) == 0
    assert table(run, "segment") == table(clean, "segment") and table(run, "score") == table(clean, "score")


def test_an_addition_that_wrote_nothing_binds_nothing(tmp_path, fakes):
    """Killed before the addition's first shard, then the upstream grew again: the rerun takes both rounds in as
    one part (its record is worked out again); an added segmenter that failed to load locks nothing."""
    run = tmp_path / "run"
    first_round(run)
    assert segment(run, "fake:a") == 0
    add_candidates(run, 2, ROUND[0])
    KILL["after"] = 0
    assert segment(run, "fake:a") == 130
    add_candidates(run, 3, ROUND[1])
    CALLS.clear()
    assert segment(run, "fake:a") == 0 and sum(n for _, n in CALLS) == 4
    assert [a["items"] for a in record(run, "segment")["added"]] == [4]
    assert segment(run, "fake:a", "fake:broken") == 2
    assert segment(run, "fake:a", "fake:c") == 0
    assert [a.get("segmenters") for a in record(run, "segment")["added"]] == [None, ["fake:c"]]


def _rewrite_image(run: Path) -> None:
    path = run / "images" / f"{FIRST[0][0]}.png"
    Image.fromarray(np.zeros((24, 24, 3), np.uint8)).save(path)


def _rewrite_row(run: Path) -> None:
    rows = pq.read_table(run / "generate" / "shard-000001.parquet").to_pylist()
    write_shard(run / "generate", 1, [{**r, "seed": r["seed"] + 1} for r in rows], candidate_schema(), [])


def _remove_shard(run: Path) -> None:
    (run / "generate" / "shard-000001.parquet").unlink()


def _redo_generate(run: Path) -> None:  # the same rows and pixels, written again (as generate --fresh does)
    for p in (run / "generate").glob("shard-*.parquet"):
        p.unlink()
    first_round(run)


@pytest.mark.parametrize("change", [_rewrite_image, _rewrite_row, _remove_shard, _redo_generate])
def test_a_changed_upstream_is_still_refused_in_one_line(tmp_path, fakes, capsys, change):
    """Anything but added shards: an earlier image or row rewritten, a shard removed, generate redone."""
    run = tmp_path / "run"
    first_round(run)
    assert segment(run, "fake:a") == 0 and score(run) == 0
    change(run)
    planned_round(run)  # with a round added too: still refused
    before = {s: shard_sums(run, s) for s in ("segment", "score")}
    capsys.readouterr()
    assert segment(run, "fake:a") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stage 'generate' changed" in err[0] and "--fresh" in err[0], err
    assert score(run) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stage 'generate' changed" in err[0] and "--fresh" in err[0], err
    assert {s: shard_sums(run, s) for s in ("segment", "score")} == before
    assert segment(run, "fake:a", fresh=True) == 0 and score(run, fresh=True) == 0
    assert len(table(run, "score")) == len(read_stage(run / "generate").to_pylist())


def test_score_refuses_a_segment_redone_and_other_settings(tmp_path, fakes, capsys):
    run = tmp_path / "run"
    first_round(run)
    assert segment(run, "fake:a") == 0 and score(run) == 0
    planned_round(run)
    assert segment(run, "fake:a", fresh=True) == 0  # segment redone over all: not an addition for score
    capsys.readouterr()
    assert score(run) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stage 'segment' changed" in err[0] and "--fresh" in err[0], err
    assert score(run, fresh=True) == 0
    # a setting of the scorer changed, with masks added: refused as a setting
    assert segment(run, "fake:a", "fake:b") == 0
    capsys.readouterr()
    assert main(["score", "--run", str(run), "--clip", "fake", "--set", "shard_size=4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "shard_size changed" in err[0], err
    # segment: a segmenter removed while candidates were added is refused as before
    add_candidates(run, 4, ["gen-1-pffffffff-000000"])
    assert segment(run, "fake:b") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "segmenters changed" in err[0] and "--fresh" in err[0], err


# ------------------------------------------------------------------------------------- xpaste run --plan
def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from tiny_models import build_tiny_sd, make_tiny_open_clip

    root = tmp_path_factory.mktemp("models")
    (root / "clip").mkdir()
    return {"sd": build_tiny_sd(root / "sd"), "clip": make_tiny_open_clip(root / "clip")}


def test_xpaste_run_with_a_plan_adds_work_and_equals_a_fresh_run(models, tmp_path, monkeypatch, fake_segmenter):
    """The real path: tiny SD, GrabCut and the weightless segmenter above (GrabCut leaves the tiny model's noise
    images empty; the other one does not, so the pool holds cut-outs), the tiny open_clip, build-pool. The
    round's images alone are segmented and scored; build-pool is rebuilt; the result is a run made from
    scratch over every candidate."""
    import yaml
    from coco_fixtures import write_dataset
    from test_plan_stages import write_plan

    from xpaste.pool.store import InstancePool
    from xpaste.segment.grabcut import GrabCutSegmenter
    from xpaste.stages.config import load_config
    from xpaste.stages.run import redo_after_round

    segmented: list[int] = []
    original = GrabCutSegmenter.segment
    monkeypatch.setattr(GrabCutSegmenter, "segment", lambda self, images, prompts=None:
                        segmented.append(len(images)) or original(self, images, prompts))
    ann, _ = write_dataset(tmp_path / "data", n_images=3)
    names = {c["id"]: c["name"] for c in json.loads(ann.read_text())["categories"]}
    plan = write_plan(tmp_path / "plan.json", {1: 2, 3: 1}, names)

    def config(run: Path) -> Path:
        path = run.parent / f"{run.name}.yaml"
        path.write_text(yaml.safe_dump({
            "run_dir": str(run), "shard_size": 2, "device": "cpu", "categories": {"source": str(ann)},
            "generate": {"models": [models["sd"]], "per_category": 2, "steps": 2, "height": 64, "width": 64,
                         "scheduler": "ddim"},
            "segment": {"segmenters": ["grabcut", "fake:a"]},
            "score": {"clip": f"local-dir:{models['clip']}", "pretrained": None, "batch_size": 4},
            "build_pool": {"d": 1000.0, "area_min": 0.0, "area_max": 1.0}}))
        return path

    run = tmp_path / "run"
    assert main(["run", str(config(run))]) == 0
    first = sum(segmented)
    assert first == sum(n for _, n in CALLS) == 2 * len(names)
    sums = {s: shard_sums(run, s) for s in ("generate", "segment", "score")}
    segmented.clear(), CALLS.clear()
    assert main(["run", str(config(run)), "--plan", str(plan)]) == 0
    assert sum(segmented) == sum(n for _, n in CALLS) == 3  # the round's images only (was: all, 3 + first)
    for s in ("generate", "segment", "score"):
        now = shard_sums(run, s)
        assert {k: now[k] for k in sums[s]} == sums[s] and len(now) > len(sums[s])
    assert record(run, "score")["added"][0]["items"] == 2 * 3
    cfg = load_config(config(run), overrides=[f"generate.plan={plan}"])
    assert not any(redo_after_round(cfg, name) for name in ("segment", "score", "build-pool"))  # nothing added
    # rerun: nothing runs, nothing is written (build-pool, one pass, writes its decisions and header again,
    # to the same bytes)
    def stamps() -> dict:
        return {p: p.stat().st_mtime_ns for name in ("generate", "images", "segment", "masks", "score")
                for p in (run / name).rglob("*") if p.is_file()}

    before, pool_before = stamps(), files(run / "pool")
    segmented.clear(), CALLS.clear()
    assert main(["run", str(config(run)), "--plan", str(plan)]) == 0 and segmented == [] and CALLS == []
    assert stamps() == before and files(run / "pool") == pool_before

    # the oracle: the same run from scratch over every candidate, in a copy holding only its candidates
    clean = tmp_path / "clean"
    clean_copy(run, clean)
    shutil.copy2(run / "categories.json", clean / "categories.json")
    segmented.clear()
    assert main(["run", str(config(clean)), "--plan", str(plan)]) == 0
    assert sum(segmented) == 2 * len(names) + 3 and shard_sums(clean, "generate") == shard_sums(run, "generate")
    assert table(run, "segment") == table(clean, "segment") and masks(run) == masks(clean)
    assert table(run, "score") == table(clean, "score")
    decisions = pq.read_table(run / "build_pool" / "decisions.parquet").to_pylist()
    assert len(decisions) == 2 * len(names) + 3 and sum(d["decision"] == "kept" for d in decisions) > 0
    assert (run / "build_pool" / "decisions.parquet").read_bytes() == \
        (clean / "build_pool" / "decisions.parquet").read_bytes()
    ids = sorted(r["instance_id"] for r in InstancePool.open(run / "pool").records().to_pylist())
    assert ids and ids == sorted(r["instance_id"] for r in InstancePool.open(clean / "pool").records().to_pylist())
    assert files(run / "pool") == files(clean / "pool")



def test_build_pool_stage_by_stage_is_rebuilt_after_added_work_only(tmp_path, fakes, capsys):
    """`xpaste build-pool` after segment and score took in a round: rebuilt over every candidate with no
    --fresh, to a clean build's decisions and pool; nothing added: resumed; another option: refused."""
    from xpaste.io import write_json_atomic
    from xpaste.stages.config import load_config
    from xpaste.stages.run import redo_after_round

    def build(run: Path, *extra: str) -> int:
        return main(["build-pool", "--run", str(run), "--d", "1000", "--area-min", "0", "--area-max", "1",
                     "--set", "score.clip=fake", *extra])

    run = tmp_path / "run"
    first_round(run)
    write_json_atomic(run / "categories.json", {"categories": [{"id": 1, "name": "cup"}, {"id": 2, "name": "dog"}]})
    assert segment(run, "fake:a") == 0 and score(run) == 0 and build(run) == 0
    planned_round(run)
    assert segment(run, "fake:a") == 0 and score(run) == 0
    settings = ["build_pool.d=1000", "build_pool.area_min=0", "build_pool.area_max=1", "score.clip=fake"]
    cfg = load_config(run / "config.yaml", overrides=settings)
    assert redo_after_round(cfg, "build-pool") and not redo_after_round(cfg, "segment")
    assert not redo_after_round(load_config(run / "config.yaml", overrides=[*settings, "build_pool.d=5"]),
                                "build-pool")  # another option: build-pool refuses it
    assert build(run) == 0  # no --fresh
    decisions = pq.read_table(run / "build_pool" / "decisions.parquet").to_pylist()
    assert len(decisions) == 9 and sum(d["decision"] == "kept" for d in decisions) > 5
    assert not redo_after_round(load_config(run / "config.yaml", overrides=settings), "build-pool")  # done
    pool = files(run / "pool")
    assert build(run) == 0 and files(run / "pool") == pool

    clean = clean_copy(run, tmp_path / "clean")
    shutil.copy2(run / "categories.json", clean / "categories.json")
    assert segment(clean, "fake:a") == 0 and score(clean) == 0 and build(clean) == 0
    assert (run / "build_pool" / "decisions.parquet").read_bytes() == \
        (clean / "build_pool" / "decisions.parquet").read_bytes()
    assert files(run / "pool") == files(clean / "pool")

    # work added and an option changed: refused as the changed option, in one line
    assert segment(run, "fake:a", "fake:b") == 0 and score(run) == 0
    capsys.readouterr()
    assert build(run, "--set", "build_pool.area_min=0.1") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "area_min changed" in err[0] and "--fresh" in err[0], err
    assert files(run / "pool") == pool
