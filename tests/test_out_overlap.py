"""No output ever overwrites, deletes or writes into an input (`xpaste.io.refuse_overlap`, used by every writing
command before it writes or deletes anything).

Oracles: the layouts are built by the tests themselves (which path is, lies inside or contains which, through
symlinks and hard links), and "nothing was touched" is a sha256 / readlink listing of the whole temporary tree
taken before and after each refused command (os.walk without following links, not xpaste).
"""
from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest
from coco_fixtures import write_dataset
from PIL import Image

from file_checks import tree
from xpaste.cli import main
from xpaste.errors import XPasteError
from xpaste.io import refuse_overlap

HAVE_ULTRALYTICS = importlib.util.find_spec("ultralytics") is not None


# ----------------------------------------------------------------------------- the helper itself
@pytest.fixture
def layout(tmp_path):
    (tmp_path / "in" / "imgs" / "sub").mkdir(parents=True)
    (tmp_path / "in" / "ds.json").write_text("{}")
    (tmp_path / "in" / "imgs" / "a.png").write_bytes(b"a")
    (tmp_path / "links").mkdir()
    (tmp_path / "links" / "imgs").symlink_to(tmp_path / "in" / "imgs")
    (tmp_path / "links" / "ds.json").symlink_to(tmp_path / "in" / "ds.json")
    os.link(tmp_path / "in" / "ds.json", tmp_path / "links" / "hard.json")
    (tmp_path / "elsewhere").mkdir()
    return tmp_path


@pytest.mark.parametrize("out, out_is_file, writes, relation", [
    ("in/imgs", False, None, "is the images"),  # equal
    ("in/imgs/sub/new", False, None, "is inside the images"),  # inside
    ("in", False, None, "contains the dataset json"),  # containing (the first input named)
    (".", False, None, "contains the dataset json"),
    ("in/imgs/..", False, {"x"}, "contains the images"),  # the json there is not written: the folder is named
    ("links/imgs", False, None, "is the images"),  # via a symlinked folder
    ("links/imgs/sub", False, None, "is inside the images"),
    ("in/imgs/../imgs/sub", False, None, "is inside the images"),  # '..' spelled out
    ("in/ds.json", True, None, "is the dataset"),  # a file output equal to an input file
    ("links/ds.json", True, None, "is the dataset"),  # via a symlink
    ("links/hard.json", True, None, "is the dataset"),  # a hard link to it
    ("in/imgs/stats.json", True, None, "is inside the images"),
    ("in", False, ("ds.json",), "would overwrite the dataset"),  # what the command writes under --out
    ("elsewhere", False, ("images",), None),  # beside the inputs: accepted
    ("in/../elsewhere/x", False, None, None),
    ("links/new.json", True, None, None),
])
def test_refuse_overlap_layouts(layout, out, out_is_file, writes, relation):
    inputs = {"the dataset json": layout / "in" / "ds.json", "the images folder": layout / "in" / "imgs",
              "an option not given": None}
    before = tree(layout)
    if relation is None:
        refuse_overlap(layout / out, inputs, out_is_file=out_is_file, writes=writes)
    else:
        with pytest.raises(XPasteError) as e:
            refuse_overlap(layout / out, inputs, out_is_file=out_is_file, writes=writes)
        text = str(e.value)
        assert relation in text and "\n" not in text and str(layout / out) in text, text
    assert tree(layout) == before


def test_refuse_overlap_a_written_entry_that_links_into_an_input(layout):
    """`writes` entries are resolved: out/images -> the input images folder is refused, the folder itself not."""
    out = layout / "elsewhere"
    (out / "images").symlink_to(layout / "in" / "imgs")
    inputs = {"the images folder": layout / "in" / "imgs"}
    with pytest.raises(XPasteError, match="would write over the images folder"):
        refuse_overlap(out, inputs, writes=("images", "labels"))
    refuse_overlap(out, inputs, writes=("labels",))
    (out / "labels").symlink_to(layout / "in" / "imgs" / "sub")
    with pytest.raises(XPasteError, match="would write into the images folder"):
        refuse_overlap(out, inputs, writes=("labels",))


def test_an_input_file_inside_out_is_refused_only_where_the_command_writes(layout):
    inputs = {"the dataset json": layout / "in" / "ds.json"}
    refuse_overlap(layout / "in", inputs, writes=("images", "annotations.json"))  # ds.json is not written
    for writes in (("ds.json",), ("images", "ds.json")):
        with pytest.raises(XPasteError, match="would overwrite the dataset json"):
            refuse_overlap(layout / "in", inputs, writes=writes)
    with pytest.raises(XPasteError, match="contains the dataset json"):
        refuse_overlap(layout / "in", inputs)  # writes unknown: any input inside is refused


# ----------------------------------------------------------------------------- every writing command
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    ann, images = write_dataset(root / "data", n_images=2)
    pool = root / "data" / "pool"
    assert main(["pool", "import-coco", str(ann), "--images", str(images), "--out", str(pool),
                 "--min-area", "100"]) == 0
    xp = root / "data" / "xp"
    (xp / "cut").mkdir(parents=True)
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[4:16, 5:25] = (200, 100, 50, 255)
    Image.fromarray(rgba).save(xp / "cut" / "0.png")
    (xp / "pool.json").write_text(json.dumps({"0": ["*cut/0.png"]}))
    doc = json.loads(ann.read_text())
    preds = [{"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": a["segmentation"],
              "score": 0.9} for a in doc["annotations"] if not a["iscrowd"] and isinstance(a["segmentation"], dict)]
    (root / "data" / "preds.json").write_text(json.dumps(preds))
    links = root / "links"
    links.mkdir()
    for name, target in [("imgs", images), ("pool", pool), ("xp", xp), ("ann.json", ann),
                         ("preds.json", root / "data" / "preds.json")]:
        (links / name).symlink_to(target)
    return {"root": root, "ann": ann, "images": images, "pool": pool, "xp": xp, "links": links,
            "preds": root / "data" / "preds.json"}


def _cases(w):
    """(command line, the input it overlaps) for every writing command and every kind of overlap."""
    ann, images, pool, xp, links, root, preds = (w[k] for k in ("ann", "images", "pool", "xp", "links", "root", "preds"))
    data = ann.parent
    cases = []
    for out in (ann, links / "ann.json", images / ".." / ann.name):  # equal, via a symlink, via '..'
        cases.append((["stats", str(ann), "--out", str(out)], ann))
    for out in (ann, preds, links / "preds.json"):
        cases.append((["eval", "--gt", str(ann), "--pred", str(preds), "--out", str(out)],
                      ann if out == ann else preds))
    if HAVE_ULTRALYTICS:
        for extra in ([], ["--overwrite"]):
            for out, hit in [(data, images), (images, images), (images / "sub", images), (root, images),
                             (links / "imgs", images), (links / "imgs" / "y", images)]:
                cases.append((["export-yolo", "--dataset", str(ann), "--images", str(images), "--out", str(out),
                               *extra], hit))
    for out in (images, images / "sub", root, links / "imgs" / "pool"):
        cases.append((["pool", "import-coco", str(ann), "--images", str(images), "--out", str(out), "--append"],
                      ann if out == root else images))  # the first input it overlaps is named
    # the json's folder holds the cut-outs: --out that folder, one holding it, or a non-pool folder inside it
    for out in (xp, xp / "cut", data, links / "xp", links / "xp" / "cut"):
        cases.append((["pool", "import-xpaste", str(xp / "pool.json"), "--out", str(out)], xp))
    for out in (pool, pool / "data", root, links / "pool", links / "pool" / "png"):
        cases.append((["pool", "export-png", str(pool), "--out", str(out)], pool))
    for new in (pool, pool / "sub", data, links / "pool" / "v2"):
        cases.append((["pool", "migrate", str(pool), str(new)], pool))
    for out in (pool, pool / "report", data, links / "pool" / "r"):
        cases.append((["report", str(pool), "--out", str(out)], pool))
    for out in (links / "imgs", links / "pool" / "aug", data / "sub" / ".." / "images"):
        cases.append((["augment", "--dataset", str(ann), "--images", str(images), "--pool", str(pool),
                       "--out", str(out)], images if "imgs" in str(out) or out.name == "images" else pool))
    return cases


def test_every_writing_command_refuses_an_overlapping_out(world, capsys):
    root = world["root"]
    before = tree(root)
    cases = _cases(world)
    assert len({c[0][0] if c[0][0] != "pool" else c[0][1] for c in cases}) >= 9 - (not HAVE_ULTRALYTICS)
    for argv, hit in cases:
        capsys.readouterr()
        code = main(argv)
        err = capsys.readouterr().err.strip()
        assert code == 2, (argv, err)
        assert err.count("\n") == 0 and "Traceback" not in err, (argv, err)
        assert "nothing was written" in err and str(hit) in err, (argv, err)
        assert tree(root) == before, argv  # inputs byte-identical, and nothing written anywhere


@pytest.mark.skipif(not HAVE_ULTRALYTICS, reason="export-yolo needs ultralytics")
def test_export_yolo_overwrite_into_the_datasets_own_folder_deletes_nothing(tmp_path, capsys):
    """The reported data loss: --out the dataset's folder with --overwrite (images/ there IS the input)."""
    ann, images = write_dataset(tmp_path / "dsx", n_images=3)
    before = tree(tmp_path)
    assert main(["export-yolo", "--dataset", str(ann), "--images", str(images), "--out", str(tmp_path / "dsx"),
                 "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "contains the images folder" in err and "Traceback" not in err
    assert tree(tmp_path) == before
    # an image reached through a symlink that points into the export's own images/ is not deleted either
    # (file_name paths resolve inside --images, links included: `resolve_inside` refuses it first)
    ok = tmp_path / "yolo"
    assert main(["export-yolo", "--dataset", str(ann), "--images", str(images), "--out", str(ok)]) == 0
    src2 = tmp_path / "src2"
    (src2 / "sub").mkdir(parents=True)
    for rel in ("img_0.jpg", "sub/img_1.png", "img_2.jpg"):
        (src2 / rel).symlink_to(ok / "images" / "train" / rel)
    before = tree(tmp_path)
    assert main(["export-yolo", "--dataset", str(ann), "--images", str(src2), "--out", str(ok), "--overwrite"]) == 2
    assert "points outside" in capsys.readouterr().err
    assert tree(tmp_path) == before


def test_outputs_beside_the_inputs_are_accepted(world, tmp_path):
    ann, pool, images = world["ann"], world["pool"], world["images"]
    before = tree(world["root"])
    calls = [["stats", str(ann), "--out", str(tmp_path / "s.json")],
             ["eval", "--gt", str(ann), "--pred", str(world["preds"]), "--out", str(tmp_path / "e.json")],
             ["pool", "export-png", str(pool), "--out", str(tmp_path / "png")],
             ["pool", "migrate", str(pool), str(tmp_path / "v2")],
             ["pool", "import-xpaste", str(world["xp"] / "pool.json"), "--out", str(tmp_path / "xpool")]]
    if HAVE_ULTRALYTICS:
        calls.append(["export-yolo", "--dataset", str(ann), "--images", str(images), "--out", str(tmp_path / "y")])
    for argv in calls:
        assert main(argv) == 0, argv
    assert tree(world["root"]) == before
    # a NEW pool folder beside the X-Paste json (among its cut-outs) writes no input: accepted
    import shutil

    shutil.copytree(world["xp"], tmp_path / "xp2")
    inputs = tree(tmp_path / "xp2")
    assert main(["pool", "import-xpaste", str(tmp_path / "xp2" / "pool.json"), "--out", str(tmp_path / "xp2" / "p")]) == 0
    assert {k: v for k, v in tree(tmp_path / "xp2").items() if not k.startswith("p/") and k != "p"} == inputs
    assert json.loads((tmp_path / "s.json").read_text()) and any((tmp_path / "png").rglob("*.png"))
