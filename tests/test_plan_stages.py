"""The closed loop's next round: `xpaste generate | retrieve | run --plan PLAN` make the plan's count per category
as a round of their own, added to what the run already has (tiny random models built offline; nothing downloads).

Oracles: the plan files are written here with hand-picked counts, so the images each round must make are known;
earlier rounds' files are compared byte for byte and by mtime; seeds against `image_seed` computed here."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from coco_fixtures import write_dataset
from tiny_models import build_tiny_sd

from xpaste.cli import main
from xpaste.errors import XPasteError
from xpaste.generate.prompts import image_seed
from xpaste.plan import make_plan, plan_digest, plan_generate
from xpaste.pool.store import InstancePool
from xpaste.stages.generate import model_tag

CATS = "cup,dog,cat"  # ids 1, 2, 3
NAMES = {1: "cup", 2: "dog", 3: "cat"}


@pytest.fixture(scope="module")
def sd(tmp_path_factory) -> str:
    return build_tiny_sd(tmp_path_factory.mktemp("tiny_sd"))


def write_plan(path: Path, counts: dict[int, int], names: dict[int, str] = NAMES, budget: int | None = None) -> Path:
    """An `xpaste plan` json with the given generate counts (the fields `load_plan` reads, plus a rule)."""
    rows = [{"id": c, "name": names[c], "generate": int(counts.get(c, 0)), "paste_weight": 1.0} for c in names]
    plan = {"format": "xpaste-plan", "version": 1, "budget": sum(counts.values()) if budget is None else budget,
            "rule": {"name": "hand-written"}, "categories": rows}
    path.write_text(json.dumps(plan, indent=1))
    return path


def generate(run: Path, sd: str, *extra: str) -> int:
    return main(["generate", "--run", str(run), "--device", "cpu", "--categories", CATS, "--model", sd,
                 "--steps", "2", "--height", "64", "--width", "64", "--scheduler", "ddim", "--set", "shard_size=3",
                 *extra])


def rows(run: Path, stage: str = "generate") -> list[dict]:
    return [r for p in sorted((run / stage).glob("shard-*.parquet")) for r in pq.read_table(p).to_pylist()]


def per_category(rows_: list[dict]) -> dict[int, int]:
    return dict(Counter(r["category_id"] for r in rows_))


def snapshot(run: Path) -> dict[str, tuple[bytes, int]]:
    """Every shard table and generated image: (bytes, mtime_ns), to show a rerun touched nothing."""
    files = [*sorted((run / "generate").glob("shard-*.parquet")), *sorted((run / "images").rglob("*.png"))]
    return {str(p.relative_to(run)): (p.read_bytes(), p.stat().st_mtime_ns) for p in files}


# ---------------------------------------------------------------------------------------------------- generate
def test_a_plan_in_a_fresh_run_makes_its_counts_and_a_rerun_resumes(sd, tmp_path, capsys):
    plan = write_plan(tmp_path / "plan.json", {1: 3, 2: 0, 3: 1})
    run = tmp_path / "run"
    assert generate(run, sd, "--per-category", "5", "--plan", str(plan)) == 0
    got = rows(run)
    assert per_category(got) == {1: 3, 3: 1}  # the plan's counts, not per_category; 0: none
    digest = plan_digest(json.loads(plan.read_text()))
    tag = f"p{digest[:8]}"
    for r in got:
        i = int(r["candidate_id"].rsplit("-", 1)[1])
        assert r["candidate_id"] == f"gen-{model_tag(sd)}-{r['category_id']}-{tag}-{i:06d}"
        assert r["seed"] == image_seed(0, sd, r["category_id"], i, digest)  # deterministic ...
        assert r["seed"] != image_seed(0, sd, r["category_id"], i)  # ... and not an unplanned image's seed
        assert (run / r["path"]).is_file()
    assert len({r["seed"] for r in got}) == 4
    record = json.loads((run / "generate" / "stage.json").read_text())
    assert record["fingerprint"]["round"]["plan"] == digest and "per_category" not in record["fingerprint"]["generate"]
    before = snapshot(run)
    capsys.readouterr()
    assert generate(run, sd, "--plan", str(plan)) == 0  # the same plan again: nothing new
    assert "2 shards, 2 shards resumed" in capsys.readouterr().out
    assert snapshot(run) == before


def test_planned_rounds_add_to_a_run_and_never_touch_earlier_items(sd, tmp_path, capsys):
    run = tmp_path / "run"
    assert generate(run, sd, "--per-category", "2") == 0  # the round without a plan
    first = snapshot(run)
    assert per_category(rows(run)) == {1: 2, 2: 2, 3: 2}
    a = write_plan(tmp_path / "a.json", {1: 1, 2: 3})
    assert generate(run, sd, "--plan", str(a)) == 0
    assert per_category(rows(run)) == {1: 3, 2: 5, 3: 2}  # 2 each + the plan's counts
    after_a = snapshot(run)
    assert {k: v for k, v in after_a.items() if k in first} == first  # earlier items untouched
    capsys.readouterr()
    assert generate(run, sd, "--plan", str(a)) == 0 and snapshot(run) == after_a  # rerun: nothing new
    assert generate(run, sd, "--per-category", "2") == 0 and snapshot(run) == after_a  # the first round: done
    b = write_plan(tmp_path / "b.json", {3: 2}, budget=5)
    assert generate(run, sd, "--plan", str(b)) == 0
    got = rows(run)
    assert per_category(got) == {1: 3, 2: 5, 3: 4}
    assert {k: v for k, v in snapshot(run).items() if k in after_a} == after_a
    assert len({r["candidate_id"] for r in got}) == len({r["seed"] for r in got}) == len({r["path"] for r in got}) \
        == len(got) == 12
    record = json.loads((run / "generate" / "stage.json").read_text())
    assert [r["round"]["file"] for r in record["rounds"]] == [str(a), str(b)]
    assert record["fingerprint"]["generate"]["per_category"] == 2  # the first round's record is as it was
    # the same plan under another path (and other spacing) is the same round
    moved = tmp_path / "moved.json"
    moved.write_text(json.dumps(json.loads(a.read_text())))
    before = snapshot(run)
    assert generate(run, sd, "--plan", str(moved)) == 0 and snapshot(run) == before
    # the round without a plan keeps its size: another per_category is a changed setting
    capsys.readouterr()
    assert generate(run, sd, "--per-category", "3") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "generate.per_category changed" in err[0], err
    # settings hold for every round: a planned round with other steps is refused too
    assert generate(run, sd, "--plan", str(a), "--steps", "3") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "generate.steps changed" in err[0], err
    assert snapshot(run) == before


def test_a_changed_plan_file_follows_the_resume_rules(sd, tmp_path, capsys):
    """A plan file rewritten with other counts is another plan: once its round is done a new round is added;
    while the round is unfinished, the changed file is refused in one line (--fresh starts over)."""
    run = tmp_path / "run"
    plan = write_plan(tmp_path / "plan.json", {1: 2, 2: 2, 3: 2})  # 6 items, shards of 3
    assert generate(run, sd, "--plan", str(plan)) == 0
    write_plan(plan, {1: 1, 3: 3})  # the next round, written to the same path
    assert generate(run, sd, "--plan", str(plan)) == 0
    assert per_category(rows(run)) == {1: 3, 2: 2, 3: 5}
    # an unfinished round: its last shard (of 2) lost, as after a kill
    last = sorted((run / "generate").glob("shard-*.parquet"))[-1]
    last.unlink()
    write_plan(plan, {2: 4})
    capsys.readouterr()
    assert generate(run, sd, "--plan", str(plan)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is unfinished" in err[0] and "--fresh" in err[0], err
    assert not last.exists()
    assert generate(run, sd, "--plan", str(plan), "--fresh") == 0
    assert per_category(rows(run)) == {2: 4}  # every round redone: only this plan's


def test_a_round_that_wrote_nothing_binds_nothing(sd, tmp_path):
    """A later round killed before its first shard (e.g. its model did not load) is replaced by the next plan."""
    run = tmp_path / "run"
    assert generate(run, sd, "--per-category", "1") == 0  # shard 0
    a = write_plan(tmp_path / "a.json", {1: 1})
    assert generate(run, sd, "--plan", str(a)) == 0  # shard 1
    (run / "generate" / "shard-000001.parquet").unlink()  # as if killed before it was written
    b = write_plan(tmp_path / "b.json", {2: 2})
    assert generate(run, sd, "--plan", str(b)) == 0
    record = json.loads((run / "generate" / "stage.json").read_text())
    assert [r["round"]["file"] for r in record["rounds"]] == [str(b)]
    assert per_category(rows(run)) == {1: 1, 2: 3, 3: 1}


@pytest.mark.parametrize("case", ["unknown", "renamed", "missing", "not-a-plan"])
def test_a_plan_of_other_categories_is_refused_in_one_line(sd, tmp_path, capsys, case):
    plan = tmp_path / "plan.json"
    if case == "unknown":
        write_plan(plan, {1: 1, 9: 2}, {**NAMES, 9: "zebra"})
        words = "categories this run does not have (ids [9])"
    elif case == "renamed":
        write_plan(plan, {1: 1}, {1: "mug", 2: "dog", 3: "cat"})
        words = "names categories differently"
    elif case == "missing":
        write_plan(plan, {1: 1}, {1: "cup", 2: "dog"})
        words = "no row for 1 of this run's categories"
    else:
        plan.write_text(json.dumps({"categories": []}))
        words = "not an xpaste plan"
    run = tmp_path / "run"
    assert generate(run, sd, "--plan", str(plan)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(plan) in err[0] and words in err[0], err
    assert not run.exists()  # refused before anything was written, the categories included


def test_plan_generate_reads_counts_for_the_run():
    plan = {"format": "xpaste-plan", "version": 1, "budget": 4, "rule": {},
            "categories": [{"id": 1, "name": "Cup", "generate": 3, "paste_weight": 1.0},
                           {"id": 2, "name": "dog", "generate": 0, "paste_weight": 0.5},
                           {"id": 7, "name": "zebra", "generate": 0, "paste_weight": 0.1}]}
    assert plan_generate(plan, {1: "cup", 2: "dog"}) == {1: 3, 2: 0}  # names by the package's rule
    assert plan_generate(plan, [{"id": 2, "name": "dog"}, {"id": 1, "name": "cup"}]) == {2: 0, 1: 3}
    with pytest.raises(XPasteError, match=r"^p.json: the plan asks for 3 images of 1 categories"):
        plan_generate(plan, {2: "dog"}, where="p.json")
    assert plan_digest(plan) == plan_digest(json.loads(json.dumps(plan, indent=3)))
    assert plan_digest(plan) != plan_digest({**plan, "budget": 5})


# ---------------------------------------------------------------------------------------------------- run
def test_xpaste_run_with_a_plan(sd, tmp_path, capsys):
    ann, _ = write_dataset(tmp_path / "data", n_images=3)
    dataset = json.loads(ann.read_text())
    cats = [{"id": c["id"], "name": c["name"], "images": 1 + c["id"] % 2, "ap": 0.1 * c["id"], "pool": 0}
            for c in dataset["categories"]]
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(make_plan(cats, 3, budget=5)))
    counts = {c["id"]: c["generate"] for c in json.loads(plan.read_text())["categories"] if c["generate"]}
    run = tmp_path / "run"
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "run_dir": str(run), "shard_size": 2, "device": "cpu", "categories": {"source": str(ann)},
        "generate": {"models": [sd], "per_category": 1, "steps": 2, "height": 64, "width": 64, "scheduler": "ddim"},
        "segment": {"segmenters": ["grabcut"]}, "score": {"clip": None},
        "build_pool": {"d": 1000.0, "area_min": 0.0, "area_max": 1.0}}))
    assert main(["run", str(config)]) == 0  # the first round: 1 per category
    assert main(["run", str(config), "--plan", str(plan)]) == 0  # the next: the plan's counts on top
    got = per_category(rows(run))
    assert got == {c: 1 + counts.get(c, 0) for c in (1, 2, 3, 4)} and sum(got.values()) == 4 + 5
    ids = {r["candidate_id"] for r in rows(run)}
    # the later stages took the new images in (only the new ones segmented and scored; the pool rebuilt from all)
    assert {r["candidate_id"] for r in rows(run, "segment")} == ids
    assert set(pq.read_table(run / "build_pool" / "decisions.parquet").column("candidate_id").to_pylist()) == ids
    InstancePool.open(run / "pool")
    latest = list(yaml.safe_load_all((run / "config.yaml").read_text()))[-1]
    assert latest["generate"]["plan"] == str(plan) and latest["retrieve"]["plan"] is None  # retrieve: disabled
    before = snapshot(run)
    assert main(["run", str(run / "config.yaml")]) == 0 and snapshot(run) == before  # the latest settings: resumed
    capsys.readouterr()
    off = tmp_path / "off.yaml"
    off.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "r2"), "categories": {"source": "cup"},
                                   "generate": {"enabled": False}}))
    assert main(["run", str(off), "--plan", str(plan)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "neither generate nor retrieve is enabled" in err[0]
    assert not (tmp_path / "r2").exists()


# ---------------------------------------------------------------------------------------------------- retrieve
@pytest.fixture(scope="module")
def clip_model(tmp_path_factory):
    from tiny_models import make_tiny_open_clip

    return make_tiny_open_clip(tmp_path_factory.mktemp("clip"))


def _collection(folder: Path, n: int) -> Path:
    from test_pipeline_retrieve import disc_png

    folder.mkdir(parents=True)
    for i in range(n):
        (folder / f"img{i}.png").write_bytes(disc_png(i))
    return folder


def test_retrieve_with_a_plan_takes_the_next_best_images(clip_model, tmp_path, capsys):
    folder = _collection(tmp_path / "photos", 6)
    run = tmp_path / "run"
    base = ["retrieve", "--run", str(run), "--device", "cpu", "--categories", "cup,red ball", "--folder", str(folder),
            "--clip", f"local-dir:{clip_model}"]
    assert main([*base, "--per-category", "2"]) == 0
    first = rows(run, "retrieve")
    assert per_category(first) == {1: 2, 2: 2}
    plan = write_plan(tmp_path / "plan.json", {1: 3, 2: 0}, {1: "cup", 2: "red ball"})
    assert main([*base, "--plan", str(plan)]) == 0
    got = rows(run, "retrieve")
    assert per_category(got) == {1: 5, 2: 2}
    cups = [r for r in got if r["category_id"] == 1]
    assert len({r["url"] for r in cups}) == 5  # the next-best images: none the first round took
    new = [r for r in cups if r not in first]
    assert min(r["retrieval_score"] for r in cups if r in first) >= max(r["retrieval_score"] for r in new)
    before = [p.read_bytes() for p in sorted((run / "retrieve").glob("shard-*.parquet"))]
    capsys.readouterr()
    assert main([*base, "--plan", str(plan)]) == 0  # rerun: resumed, nothing new
    assert [p.read_bytes() for p in sorted((run / "retrieve").glob("shard-*.parquet"))] == before
    # a plan asking for more than the collection has left: at most what is left
    more = write_plan(tmp_path / "more.json", {1: 4}, {1: "cup", 2: "red ball"})
    assert main([*base, "--plan", str(more)]) == 0
    assert per_category(rows(run, "retrieve")) == {1: 6, 2: 2}


def test_retrieve_refuses_a_plan_for_a_labelled_folder(tmp_path, capsys):
    folder = tmp_path / "photos"
    _collection(folder / "cup", 2)
    plan = write_plan(tmp_path / "plan.json", {1: 1}, {1: "cup"})
    run = tmp_path / "run"
    assert main(["retrieve", "--run", str(run), "--categories", "cup", "--folder", str(folder), "--labelled",
                 "--plan", str(plan)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "labelled" in err[0] and "taken whole" in err[0] and str(plan) in err[0]
    assert not run.exists()
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"run_dir": str(run), "categories": {"source": "cup"},
                                      "generate": {"enabled": False},
                                      "retrieve": {"enabled": True, "folder": str(folder), "labelled": True}}))
    assert main(["run", str(config), "--plan", str(plan)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "taken whole" in err[0]
    assert not run.exists()


def test_retrieve_with_a_plan_from_a_knn_service_skips_what_the_run_has(tmp_path):
    import threading
    from http.server import ThreadingHTTPServer

    from test_pipeline_retrieve import _Handler  # answers 3 images and 1 missing url, whatever is asked

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    run = tmp_path / "run"
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/knn-service"
        base = ["retrieve", "--run", str(run), "--device", "cpu", "--categories", "cup", "--knn-url", url]
        assert main([*base, "--per-category", "2"]) == 0
        first = {r["url"] for r in rows(run, "retrieve")}
        assert len(first) == 2
        plan = write_plan(tmp_path / "plan.json", {1: 1}, {1: "cup"})
        assert main([*base, "--plan", str(plan)]) == 0
    finally:
        server.shutdown()
        server.server_close()
    assert _Handler.requests[-1]["num_images"] == 1 + 2  # the plan's count past the 2 the run holds
    got = rows(run, "retrieve")
    assert len(got) == 3 and len({r["url"] for r in got}) == 3 and first < {r["url"] for r in got}
