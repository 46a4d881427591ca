"""Every ```python block of README.md and docs/*.md runs as written, and so does the README's command for the
pipeline without weights (examples/pipeline_offline.yaml).

Each block runs in a fresh namespace (it must define or import every name it uses), with the working folder a
temp dir holding tiny data under the names the snippets use: train.json + train_images/ (a 4-image COCO
dataset), pool/ (its instances), demo_out/ (what `make demo` writes for the offline pipeline: built here from
the same scikit-image photos, without the rest of the demo) and examples/. Blocks that need real model weights
or a GPU say so in a `# needs: ...` first line and are listed in SKIPPED with the reason; nothing else is
skipped.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

#: (file, a line of the block) -> why it cannot run here. Only real weights or a GPU are reasons.
SKIPPED = {
    ("README.md", 'YOLO("yolo11n-seg.pt")'): "needs the yolo11n-seg.pt weights (downloaded by ultralytics) and a "
                                             "real training run",
}


def blocks(language: str = "python") -> list[tuple[str, int, str]]:
    """(file name, first line, code) of every fenced block of `language` in the README and docs/."""
    out = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for m in re.finditer(rf"^```{language}\n(.*?)^```", text, re.S | re.M):
            out.append((path.name, text[: m.start()].count("\n") + 2, m.group(1)))
    return out


def skip_reason(name: str, code: str) -> str | None:
    return next((why for (file, marker), why in SKIPPED.items() if file == name and marker in code), None)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """The tiny data every snippet names (see the module docstring)."""
    from coco_fixtures import write_dataset

    from xpaste.demo import build_collection, build_demo_dataset
    from xpaste.pool.importers import import_coco

    ws = tmp_path_factory.mktemp("snippets")
    ann, images = write_dataset(ws / "data", n_images=4)
    shutil.copyfile(ann, ws / "train.json")
    shutil.copytree(images, ws / "train_images")
    import_coco(ws / "train.json", ws / "train_images", ws / "pool", min_area=100)
    dataset_json, demo_images = build_demo_dataset(ws / "demo_out" / "dataset")
    build_collection(dataset_json, demo_images, ws / "demo_out" / "collection")
    shutil.copytree(ROOT / "examples", ws / "examples", ignore=shutil.ignore_patterns("*.py"))
    (ws / ".venv").symlink_to(Path(sys.executable).parents[1])  # `.venv/bin/xpaste` as the README calls it
    return ws


def test_every_block_is_found_and_every_skip_is_listed():
    found = blocks()
    assert len(found) >= 10
    for name, line, code in found:
        needs = code.lstrip().startswith("# needs:")
        assert needs == (skip_reason(name, code) is not None), (name, line)
    assert sum(skip_reason(n, c) is not None for n, _, c in found) == len(SKIPPED)  # no stale entry


@pytest.mark.parametrize("name, line, code", blocks(), ids=[f"{n}:{line}" for n, line, _ in blocks()])
def test_python_block_runs_as_written(name, line, code, workspace, monkeypatch):
    why = skip_reason(name, code)
    if why:
        pytest.skip(why)
    if "detectron2" in code:
        pytest.importorskip("detectron2", reason="detectron2 is not installed (make install adds its wheel)")
    monkeypatch.chdir(workspace)
    namespace = {"__name__": f"snippet_{name}_{line}"}
    exec(compile(code, f"{name}:{line}", "exec"), namespace)  # noqa: S102 - the documentation's own code


def _offline_command() -> str:
    lines = [ln for _, _, code in blocks("bash") for ln in code.splitlines() if "pipeline_offline.yaml" in ln]
    assert len(lines) == 1, lines
    return lines[0]


def test_the_offline_pipeline_command_runs_as_written(workspace):
    """The README's command for the pipeline without weights, on the data `make demo` writes; then RUN/config.yaml
    holds every stage command's settings, in order, each document a loadable config."""
    from xpaste.stages.config import load_config

    command = _offline_command()
    assert command.startswith(".venv/bin/xpaste run examples/pipeline_offline.yaml")
    p = subprocess.run(["bash", "-c", command], cwd=workspace, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    run = workspace / "runs" / "offline"
    assert (run / "pool" / "pool.json").is_file() and (run / "augmented" / "annotations.json").is_file()
    text = (run / "config.yaml").read_text()
    headers = re.findall(r"^--- # (\d+): xpaste (\S+),", text, re.M)
    commands = [c for _, c in headers]
    assert commands[:3] == ["retrieve", "segment", "build-pool"], commands
    assert [int(n) for n, _ in headers] == list(range(1, len(headers) + 1))
    documents = [d for d in yaml.safe_load_all(text) if d is not None]
    assert len(documents) == len(headers)
    assert documents[0]["score"]["clip"] is None and documents[0]["retrieve"]["labelled"] is True
    assert load_config(run / "config.yaml").run_dir == "runs/offline"  # the last document
