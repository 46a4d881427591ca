"""The instance-generation pipeline end to end through the real CLI, with tiny random models built offline:
categories -> generate -> segment (GrabCut, CLIPSeg, rembg) -> score (open_clip) -> build-pool -> augment,
and a SIGKILL in the middle of `xpaste run` that resumes to the same pool."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from coco_fixtures import write_dataset
from tiny_models import make_tiny_open_clip
from tiny_models import export_tiny_u2net, make_tiny_clipseg
from tiny_models import build_tiny_sd

from xpaste.cli import main
from xpaste.pool.store import InstancePool


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    for sub in ("sd", "clip", "clipseg"):
        (root / sub).mkdir()
    build_tiny_sd(root / "sd")
    return {"sd": str(root / "sd"), "clip": make_tiny_open_clip(root / "clip"),
            "clipseg": make_tiny_clipseg(str(root / "clipseg")),
            "u2net": export_tiny_u2net(str(root / "u2net_tiny.onnx"))}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data"), n_images=3)


def write_config(path: Path, run_dir: Path, models: dict, dataset_json: Path, **extra) -> Path:
    import yaml

    config = {
        "run_dir": str(run_dir), "shard_size": 2, "device": "cpu",
        "categories": {"source": str(dataset_json), "select": ["cup", "cat/dog", "ünï"]},
        "generate": {"models": [models["sd"]], "per_category": 3, "seed": 3, "steps": 2, "height": 64,
                     "width": 64, "batch_size": 2, "scheduler": "ddim",
                     "templates": ["a photo of a single {name}", "a {name}, {definition}"]},
        "segment": {"segmenters": ["grabcut", f"clipseg:{models['clipseg']}", f"rembg:{models['u2net']}"]},
        "score": {"clip": f"local-dir:{models['clip']}", "pretrained": None, "batch_size": 4},
        "build_pool": {"d": 1000.0, "area_min": 0.0, "area_max": 1.0, "dedup": 0.999},
    }
    for key, value in extra.items():
        config[key].update(value) if isinstance(value, dict) else config.__setitem__(key, value)
    path.write_text(yaml.safe_dump(config, allow_unicode=True))
    return path


def pool_state(pool_dir: Path) -> list[tuple]:
    table = InstancePool.open(pool_dir).records().to_pylist()
    return [(r["instance_id"], r["category_id"], r["prompt"], r["seed"], r["segmenter"], round(r["clip_score"], 4),
             r["candidate_id"]) for r in table]


def test_stage_by_stage_cli_then_augment(models, dataset, tmp_path):
    ann, images = dataset
    run = tmp_path / "run"
    base = ["--run", str(run), "--device", "cpu"]
    assert main(["generate", *base, "--categories", str(ann), "--model", models["sd"], "--per-category", "2",
                 "--steps", "2", "--height", "64", "--width", "64", "--scheduler", "ddim",
                 "--set", "categories.select=[cup, ünï]", "--set", "shard_size=3"]) == 0
    candidates = sorted((run / "images" / "generated").rglob("*.png"))
    assert len(candidates) == 4
    assert main(["segment", *base, "--segmenter", "grabcut", "--segmenter", f"rembg:{models['u2net']}",
                 "--set", "shard_size=3"]) == 0
    assert main(["score", *base, "--clip", f"local-dir:{models['clip']}", "--set", "shard_size=3"]) == 0
    assert main(["build-pool", *base, "--d", "1000", "--area-min", "0", "--area-max", "1"]) == 0
    pool = InstancePool.open(run / "pool")
    assert 0 < len(pool) <= 4 and set(pool.counts()) <= {1, 4}
    records = pool.records().to_pylist()
    assert all(r["source"] == "generated" and r["model"] == models["sd"] and r["prompt"].startswith("a photo of")
               and r["seed"] >= 0 and r["segmenter"] in ("grabcut", f"rembg:{models['u2net']}") for r in records)
    decisions = __import__("pyarrow.parquet", fromlist=["x"]).read_table(run / "build_pool" / "decisions.parquet")
    assert decisions.num_rows == 4
    # the generated pool feeds the core augment
    out = tmp_path / "aug"
    assert main(["augment", "--dataset", str(ann), "--images", str(images), "--pool", str(run / "pool"),
                 "--out", str(out), "--num-paste", "3", "--seed", "1"]) == 0
    doc = json.loads((out / "annotations.json").read_text())
    assert any(a["pasted"] for a in doc["annotations"])
    # a second invocation resumes: nothing to redo, same pool
    before = pool_state(run / "pool")
    assert main(["segment", *base, "--segmenter", "grabcut", "--segmenter", f"rembg:{models['u2net']}",
                 "--set", "shard_size=3"]) == 0
    assert main(["build-pool", *base, "--d", "1000", "--area-min", "0", "--area-max", "1"]) == 0
    assert pool_state(run / "pool") == before
    # resuming with other settings is refused with a one-line error
    assert main(["segment", *base, "--segmenter", "grabcut", "--set", "shard_size=3"]) == 2


def test_kill_and_resume_gives_the_same_pool(models, dataset, tmp_path):
    ann, _ = dataset
    reference = write_config(tmp_path / "ref.yaml", tmp_path / "ref_run", models, ann)
    assert main(["run", str(reference)]) == 0
    expected = pool_state(tmp_path / "ref_run" / "pool")
    assert len(expected) > 0

    run_dir = tmp_path / "killed_run"
    config = write_config(tmp_path / "killed.yaml", run_dir, models, ann)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "xpaste", "run", str(config)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = run_dir / "segment" / "shard-000001.parquet"
    deadline = time.time() + 240
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert target.exists(), "the run never reached the segment stage"
    assert not (run_dir / "pool").exists(), "the run finished before it was killed"
    assert main(["run", str(config)]) == 0
    assert pool_state(run_dir / "pool") == expected
    for p in run_dir.rglob("*"):
        assert not p.name.endswith(".tmp"), f"temp file left visible: {p}"


def test_unknown_config_key_and_missing_categories(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("generate:\n  per_categroy: 3\n")
    assert main(["run", str(bad)]) == 2
    assert "per_categroy" in capsys.readouterr().err
    assert main(["segment", "--run", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "no candidate images" in err and "Traceback" not in err


def test_run_pipeline_python_api_equals_xpaste_run(tmp_path):
    """`run_pipeline(PipelineConfig)` (what the demo calls) and `xpaste run CONFIG` build the same pool; the run's
    recorded config.yaml loads back to the same config; the report's counts are the pool's."""
    import shutil

    import yaml

    from xpaste.data.coco import load_coco
    from xpaste.pipeline import JobReport, PipelineConfig, load_config, run_pipeline

    ann, images = write_dataset(tmp_path / "data", n_images=4, size=(120, 160))
    ds = load_coco(ann)
    for a in ds.annotations[:6]:
        img = next(i for i in ds.images if i["id"] == a["image_id"])
        folder = tmp_path / "collection" / ("cup" if a["category_id"] == 1 else "fire_hydrant")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(images / img["file_name"], folder / f"{a['id']}.png")
    raw = {"run_dir": str(tmp_path / "api"), "shard_size": 2, "categories": {"source": "cup,fire_hydrant"},
           "generate": {"enabled": False}, "retrieve": {"enabled": True, "folder": str(tmp_path / "collection"),
                                                        "labelled": True},
           "segment": {"segmenters": ["grabcut"]}, "score": {"clip": None},
           "build_pool": {"area_min": 0.0, "area_max": 1.0},
           "augment": {"enabled": True, "dataset": str(ann), "images": str(images), "copies": 2,
                       "paste": {"blend": "alpha", "num_paste": 2}}}
    report = run_pipeline(PipelineConfig.from_dict(raw))
    assert isinstance(report, JobReport)
    assert [p.job for p in report.parts] == ["retrieve", "segment", "build-pool", "augment"]
    pool = InstancePool.open(report.parts[2].out)
    assert report.parts[2].counts["added"] == len(pool) > 0
    assert report.out == str(tmp_path / "api" / "augmented") and report.counts["images written"] == 2 * 4
    assert load_config(tmp_path / "api" / "config.yaml") == PipelineConfig.from_dict(raw)

    cli_config = tmp_path / "cli.yaml"
    cli_config.write_text(yaml.safe_dump({**raw, "run_dir": str(tmp_path / "cli")}))
    assert main(["run", str(cli_config)]) == 0
    ids = lambda p: sorted(InstancePool.open(p).records().column("instance_id").to_pylist())  # noqa: E731
    assert ids(tmp_path / "cli" / "pool") == ids(report.parts[2].out)
    # the augment stage of the pipeline writes what `xpaste augment` writes with the same options
    assert main(["augment", "--dataset", str(ann), "--images", str(images), "--pool", str(tmp_path / "cli" / "pool"),
                 "--out", str(tmp_path / "aug"), "--copies", "2", "--blend", "alpha", "--num-paste", "2"]) == 0
    reference = (tmp_path / "aug" / "annotations.json").read_bytes()
    for folder in (tmp_path / "api" / "augmented", tmp_path / "cli" / "augmented"):
        # the json records the pool's path (info.xpaste.pool): the same bytes once that is the same
        assert (folder / "annotations.json").read_bytes().replace(b"/api/pool", b"/cli/pool") == reference
        names = sorted(p.name for p in (tmp_path / "aug" / "images").iterdir())
        assert names == sorted(p.name for p in (folder / "images").iterdir()) and len(names) == 8
        assert all((folder / "images" / n).read_bytes() == (tmp_path / "aug" / "images" / n).read_bytes()
                   for n in names)
