"""`export-yolo --val-fraction` keeps every copy of one source image, and the source itself, on one side.

Checked from what the export wrote: the images ultralytics lists under images/train and images/val, each with the
label file ultralytics' own `img2label_paths` pairs it with, and the source fields `xpaste augment` wrote in the
json; never from xpaste's own split function.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from coco_fixtures import write_dataset

pytest.importorskip("ultralytics")

from typer.testing import CliRunner  # noqa: E402
from ultralytics.data.utils import IMG_FORMATS, img2label_paths  # noqa: E402

import xpaste.commands.export  # noqa: E402,F401  (registers export-yolo on the app)
from xpaste.commands.app import app  # noqa: E402
from xpaste.errors import XPasteError  # noqa: E402
from xpaste.integrations.yolo_export import MARKER, export_yolo_seg  # noqa: E402

COPIES = 3


def augmented(root: Path, n_images: int, copies: int = COPIES) -> tuple[Path, Path]:
    """The real `augment` output of a tiny dataset: (json, images folder)."""
    from xpaste.augment import augment_dataset
    from xpaste.pool.importers import import_coco

    js, images = write_dataset(root / "coco", n_images=n_images)
    import_coco(js, images, root / "pool", min_area=100, progress=False)
    augment_dataset(js, images, root / "pool", root / "aug", copies=copies, num_paste=2, progress=False)
    return root / "aug/annotations.json", root / "aug/images"


@pytest.fixture(scope="module")
def aug(tmp_path_factory) -> tuple[Path, Path]:
    return augmented(tmp_path_factory.mktemp("aug"), n_images=6)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, aug) -> tuple[Path, Path]:
    """The originals and their augmented copies in one dataset (one images folder, one json)."""
    root = tmp_path_factory.mktemp("mixed")
    original = json.loads((aug[0].parent.parent / "coco/annotations.json").read_text())
    copies = json.loads(aug[0].read_text())
    images, anns = [], []
    for doc, folder in ((original, aug[0].parent.parent / "coco/images"), (copies, aug[1])):
        new_id = {}
        for info in doc["images"]:
            new_id[info["id"]] = len(images) + 1
            images.append(dict(info, id=len(images) + 1))
            (root / "images" / info["file_name"]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(folder / info["file_name"], root / "images" / info["file_name"])
        for ann in doc["annotations"]:
            anns.append(dict(ann, id=len(anns) + 1, image_id=new_id[ann["image_id"]]))
    (root / "mixed.json").write_text(json.dumps(dict(copies, images=images, annotations=anns)))
    return root / "mixed.json", root / "images"


def written_split(out: Path) -> dict[str, str]:
    """{file_name: 'train' | 'val'} of every image the export wrote, each with its label file where ultralytics
    looks for it (`img2label_paths`)."""
    found = {}
    for split in ("train", "val"):
        base = out / "images" / split
        paths = sorted(p for p in base.rglob("*.*") if p.suffix[1:].lower() in IMG_FORMATS) if base.exists() else []
        for p, label in zip(paths, img2label_paths([str(p) for p in paths])):
            assert Path(label).is_file() and f"{os.sep}labels{os.sep}{split}{os.sep}" in label
            name = p.relative_to(base).as_posix()
            assert name not in found, f"{name} is in train and in val"
            found[name] = split
    return found


def origin_of(dataset_json: Path) -> dict[str, str]:
    """{file_name: the source image it comes from}: `source_file_name` for a copy, its own name for a source."""
    doc = json.loads(Path(dataset_json).read_text())
    return {i["file_name"]: i.get("source_file_name", i["file_name"]) for i in doc["images"]}


def sides_by_source(found: dict[str, str], origin: dict[str, str]) -> dict[str, set]:
    sides: dict[str, set] = {}
    for name, split in found.items():
        sides.setdefault(origin[name], set()).add(split)
    return sides


@pytest.mark.parametrize("fraction, seed", [(0.2, 0), (0.34, 5), (0.5, 1), (0.75, 2)])
def test_no_source_image_on_both_sides(tmp_path, aug, fraction, seed):
    out = tmp_path / "yolo"
    export_yolo_seg(*aug, out, val_fraction=fraction, seed=seed)
    found, origin = written_split(out), origin_of(aug[0])
    assert set(found) == set(origin)  # every image exported once
    assert len(set(origin.values())) == 6 and len(origin) == 6 * COPIES
    sides = sides_by_source(found, origin)
    assert all(len(s) == 1 for s in sides.values()), sides  # no leak: each source on one side
    n_val = sum(s == "val" for s in found.values())
    assert 0 < n_val < len(found)
    assert abs(n_val - fraction * len(found)) <= COPIES  # the fraction, within one group
    assert yaml.safe_load((out / "data.yaml").read_text())["val"] == "images/val"


def test_the_source_itself_sits_with_its_copies(tmp_path, mixed):
    origin = origin_of(mixed[0])
    assert sum(o == n for n, o in origin.items()) == 6 and len(origin) == 6 * (COPIES + 1)
    for seed in range(4):
        out = tmp_path / f"yolo{seed}"
        export_yolo_seg(*mixed, out, val_fraction=0.3, seed=seed)
        found = written_split(out)
        sides = sides_by_source(found, origin)
        assert len(sides) == 6 and all(len(s) == 1 for s in sides.values()), sides
        n_val = sum(s == "val" for s in found.values())
        assert 0 < n_val and abs(n_val - 0.3 * len(found)) <= COPIES + 1


def test_same_seed_same_split_and_the_seed_matters(tmp_path, aug):
    result = CliRunner().invoke(app, ["export-yolo", "--dataset", str(aug[0]), "--images", str(aug[1]),
                                      "--out", str(tmp_path / "cli"), "--val-fraction", "0.5", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert re.search(r"\d+ in train, \d+ in val \(6 source images, each on one side\)", result.output)
    export_yolo_seg(*aug, tmp_path / "api", val_fraction=0.5, seed=3)
    first = written_split(tmp_path / "cli")
    assert written_split(tmp_path / "api") == first
    others = []
    for seed in (4, 5, 6):
        export_yolo_seg(*aug, tmp_path / f"s{seed}", val_fraction=0.5, seed=seed)
        others.append(written_split(tmp_path / f"s{seed}"))
    assert any(o != first for o in others)


def test_without_source_fields_the_split_is_by_image_as_before(tmp_path):
    """A plain COCO dataset: each image is its own group, and val is exactly what earlier xpaste versions chose
    (the first round(f x n) of numpy's seeded permutation of the images)."""
    js, images = write_dataset(tmp_path / "coco", n_images=10)
    names = [i["file_name"] for i in json.loads(js.read_text())["images"]]
    for fraction, seed in ((0.3, 7), (0.5, 0), (0.15, 2)):
        out = tmp_path / f"yolo{seed}"
        export_yolo_seg(js, images, out, val_fraction=fraction, seed=seed)
        old = {names[int(i)] for i in np.random.default_rng(seed).permutation(10)[:int(round(fraction * 10))]}
        found = written_split(out)
        assert {n for n, s in found.items() if s == "val"} == old and len(found) == 10


def test_one_source_image_cannot_be_split_and_says_so(tmp_path, capsys):
    js, images = augmented(tmp_path, n_images=1)
    capsys.readouterr()
    export_yolo_seg(js, images, tmp_path / "yolo", val_fraction=0.4, seed=0)
    lines = [line for line in capsys.readouterr().out.splitlines() if "note" in line and "source image" in line]
    assert len(lines) == 1 and "no val split (val = train)" in lines[0] and "1 source image " in lines[0], lines
    assert set(written_split(tmp_path / "yolo").values()) == {"train"}
    assert yaml.safe_load((tmp_path / "yolo/data.yaml").read_text())["val"] == "images/train"


def test_a_split_met_exactly_prints_no_note(tmp_path, aug, capsys):
    capsys.readouterr()
    export_yolo_seg(*aug, tmp_path / "yolo", val_fraction=0.5, seed=0)  # 18 images, groups of 3: 9 is 3 groups
    out = capsys.readouterr().out
    assert "note" not in out and "9 in train, 9 in val" in out


def test_a_changed_split_rule_never_resumes(tmp_path, aug, monkeypatch):
    """The settings marker records the split rule and a digest of the split: an export made by an older xpaste
    (a marker without them) or a split that would differ is refused, never resumed into a mix of two splits."""
    import xpaste.integrations.yolo_export as yolo_export

    out = tmp_path / "yolo"
    export_yolo_seg(*aug, out, val_fraction=0.34, seed=5)
    marker = json.loads((out / MARKER).read_text())
    assert "source image" in marker["split_rule"] and len(marker["split_sha256"]) == 64
    export_yolo_seg(*aug, out, val_fraction=0.34, seed=5)  # same settings: resumes (nothing to redo)
    old = {k: v for k, v in marker.items() if k not in ("split_rule", "split_sha256")}
    (out / MARKER).write_text(json.dumps(old))  # as an older xpaste wrote it
    with pytest.raises(XPasteError, match="--fresh"):
        export_yolo_seg(*aug, out, val_fraction=0.34, seed=5)
    (out / MARKER).write_text(json.dumps(marker))
    original = yolo_export.split_by_source
    monkeypatch.setattr(yolo_export, "split_by_source",
                        lambda images, f, seed: ([not v for v in original(images, f, seed)[0]], None))
    with pytest.raises(XPasteError, match="--fresh"):  # another split under the same options
        export_yolo_seg(*aug, out, val_fraction=0.34, seed=5)


def test_help_documents_the_rule():
    result = CliRunner().invoke(app, ["export-yolo", "--help"], env={"COLUMNS": "200"})
    text = " ".join(re.sub(r"[│╭╮╰╯─]", " ", result.output).split())
    assert "grouped by source image: every copy of one source image, and the source itself, on one side" in text
