"""Global flags: --quiet (warnings and errors only, no progress bars), --verbose (every module's debug messages,
named by their logger), default (progress bars and info). Checked on the stderr of real subprocesses."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml
from coco_fixtures import write_dataset

XPASTE = [sys.executable, "-m", "xpaste"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data"), n_images=3)


def run(argv, env=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TQDM_")} | {"OMP_NUM_THREADS": "1"} | (env or {})
    return subprocess.run(XPASTE + argv, capture_output=True, text=True, env=env)


def test_quiet_default_verbose(dataset, tmp_path):
    ann, images = dataset
    argv = ["pool", "import-coco", str(ann), "--images", str(images), "--min-area", "100"]
    default = run(argv + ["--out", str(tmp_path / "p1")])
    quiet = run(["--quiet"] + argv + ["--out", str(tmp_path / "p2")])
    assert default.returncode == quiet.returncode == 0
    assert "import-coco" in default.stderr and "img/s" in default.stderr  # tqdm's progress bar
    assert quiet.stderr == ""
    assert quiet.stdout == default.stdout.replace("p1", "p2")  # results are still printed

    collection = tmp_path / "collection" / "cup"
    collection.mkdir(parents=True)
    for f in sorted(images.iterdir())[:2]:
        (collection / f.name).write_bytes(f.read_bytes())
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "run_dir": str(tmp_path / "run"), "categories": {"source": "cup"}, "generate": {"enabled": False},
        "retrieve": {"enabled": True, "folder": str(tmp_path / "collection"), "labelled": True},
        "segment": {"segmenters": ["grabcut"]}, "score": {"clip": None}}))
    verbose = run(["--verbose", "run", str(config)])
    assert verbose.returncode == 0, verbose.stderr[-500:]
    assert "xpaste: xpaste.stages.run: == segment" in verbose.stderr
    assert "xpaste: xpaste.stages.run: segment: " in verbose.stderr  # the debug summary of each stage
    plain = run(["run", str(config)])
    assert "xpaste: == segment" in plain.stderr and "xpaste.stages.run:" not in plain.stderr
    assert "xpaste: " not in run(["-q", "run", str(config)]).stderr
