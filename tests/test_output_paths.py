"""Every output path is checked before any work (`xpaste.io.check_output`, called by every writing command).

An --out / --run that is an existing file or lies under one, a file --out that names a folder, and a folder that
holds files the command does not write: exit 2, one line naming the path, no traceback, nothing written (the
existing file byte-identical, no folder created). A rerun into a folder the command wrote itself is accepted,
also with a file the user put beside its outputs.

Oracles: the layouts are made by the tests; "nothing written" is a sha256 listing of the temporary trees taken
before and after each refused command (os.walk, not xpaste).
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from coco_fixtures import write_dataset
from PIL import Image

from file_checks import tree
from xpaste.cli import main
from xpaste.errors import XPasteError
from xpaste.io import check_output
from xpaste.pipeline.rundir import RunDir

HAVE_ULTRALYTICS = importlib.util.find_spec("ultralytics") is not None


def one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines() if line.strip()]
    assert len(err) == 1, err
    assert "Traceback" not in err[0] and err[0].startswith("xpaste: error: ")
    return err[0]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The inputs every command reads: a dataset, its pool, predictions, an X-Paste pool json, a collection."""
    root = tmp_path_factory.mktemp("world")
    ann, images = write_dataset(root / "data", n_images=2)
    pool = root / "pool"
    assert main(["pool", "import-coco", str(ann), "--images", str(images), "--out", str(pool),
                 "--min-area", "100"]) == 0
    doc = json.loads(ann.read_text())
    preds = root / "preds.json"
    preds.write_text(json.dumps([{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
                                  "score": 0.9} for a in doc["annotations"]]))
    xp = root / "xp"
    (xp / "cut").mkdir(parents=True)
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[4:16, 5:25] = (200, 100, 50, 255)
    Image.fromarray(rgba).save(xp / "cut" / "0.png")
    (xp / "pool.json").write_text(json.dumps({"0": ["*cut/0.png"]}))
    (root / "coll").mkdir()
    return {"root": root, "ann": ann, "images": images, "pool": pool, "preds": preds, "xp": xp,
            "coll": root / "coll"}


def _run_config(tmp: Path, **config) -> str:
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump({"categories": {"source": "cup"}, **config}))
    return str(path)


#: command -> argv for an output folder `o` (w: the world, t: the test's folder, for a config file)
FOLDER_COMMANDS = {
    "report": lambda w, o, t: ["report", str(w["pool"]), "--out", o],
    "augment": lambda w, o, t: ["augment", "--dataset", str(w["ann"]), "--images", str(w["images"]),
                                "--pool", str(w["pool"]), "--out", o],
    "export-yolo": lambda w, o, t: ["export-yolo", "--dataset", str(w["ann"]), "--images", str(w["images"]),
                                    "--out", o],
    "pool import-coco": lambda w, o, t: ["pool", "import-coco", str(w["ann"]), "--images", str(w["images"]),
                                        "--out", o],
    "pool import-xpaste": lambda w, o, t: ["pool", "import-xpaste", str(w["xp"] / "pool.json"), "--out", o],
    "pool export-png": lambda w, o, t: ["pool", "export-png", str(w["pool"]), "--out", o],
    "pool migrate": lambda w, o, t: ["pool", "migrate", str(w["pool"]), o],
    "generate --run": lambda w, o, t: ["generate", "--run", o, "--categories", "cup"],
    "retrieve --run": lambda w, o, t: ["retrieve", "--run", o, "--folder", str(w["coll"]), "--categories", "cup"],
    "segment --run": lambda w, o, t: ["segment", "--run", o, "--segmenter", "grabcut"],
    "score --run": lambda w, o, t: ["score", "--run", o],
    "build-pool --run": lambda w, o, t: ["build-pool", "--run", o],
    "build-pool --out": lambda w, o, t: ["build-pool", "--run", str(t / "new-run"), "--out", o],
    "run run_dir": lambda w, o, t: ["run", _run_config(t, run_dir=o)],
    "run build_pool.out": lambda w, o, t: ["run", _run_config(t, run_dir=str(t / "new-run"), build_pool={"out": o})],
    "run augment.out": lambda w, o, t: ["run", _run_config(t, run_dir=str(t / "new-run"), augment={
        "enabled": True, "out": o, "dataset": str(w["ann"]), "images": str(w["images"])})],
}
FILE_COMMANDS = {
    "stats --out": lambda w, o, t: ["stats", str(w["ann"]), "--out", o],
    "eval --out": lambda w, o, t: ["eval", "--gt", str(w["ann"]), "--pred", str(w["preds"]), "--iou-type", "bbox",
                                   "--out", o],
}


def _layout(kind: str, tmp: Path) -> str:
    """The output path of each kind, made under `tmp`: an existing file, a path under it, an existing folder
    (that holds a file the user made, for the foreign-content kind)."""
    (tmp / "f.txt").write_text("keep me")
    if kind == "file":
        return str(tmp / "f.txt")
    if kind == "under":
        return str(tmp / "f.txt" / "sub")
    (tmp / "adir").mkdir()
    if kind == "foreign":
        (tmp / "adir" / "notes.txt").write_text("mine")
    return str(tmp / "adir")


CASES = ([(name, kind) for name in FOLDER_COMMANDS for kind in ("file", "under", "foreign")]
         + [(name, kind) for name in FILE_COMMANDS for kind in ("folder", "under")])


@pytest.mark.parametrize("name, kind", CASES, ids=[f"{n}-{k}" for n, k in CASES])
def test_a_wrong_output_path_is_one_line_and_nothing_is_written(name, kind, world, tmp_path, capsys):
    if name == "export-yolo" and not HAVE_ULTRALYTICS:
        pytest.skip("export-yolo needs ultralytics")
    out = _layout(kind, tmp_path)
    argv = {**FOLDER_COMMANDS, **FILE_COMMANDS}[name](world, out, tmp_path)
    before, inputs = tree(tmp_path), tree(world["root"])
    capsys.readouterr()
    assert main(argv) == 2, argv
    line = one_error_line(capsys)
    assert out in line and "hint:" in line, line
    expected = {"file": "is an existing file, not a folder", "under": f"lies under {tmp_path / 'f.txt'}, which is a file",
                "folder": "is a folder, not a file", "foreign": "holding notes.txt"}[kind]
    assert expected in line, line
    assert tree(tmp_path) == before, argv  # the file byte-identical, nothing created (no lock, no folder)
    assert tree(world["root"]) == inputs, argv


def test_every_writing_command_is_covered():
    from xpaste.commands.pipeline import STAGE_FLAGS

    names = {n.split()[0] if not n.startswith("pool") else " ".join(n.split()[:2])
             for n in (*FOLDER_COMMANDS, *FILE_COMMANDS)}
    assert set(STAGE_FLAGS) | {"run", "report", "augment", "export-yolo", "stats", "eval", "pool import-coco",
                               "pool import-xpaste", "pool export-png", "pool migrate"} == names


# ----------------------------------------------------------------------------- reruns into a command's own folder
def test_reruns_into_a_folder_the_command_wrote_are_accepted(world, tmp_path, capsys):
    """A pool (pool.json) and an augmented dataset (.xpaste/) are the commands' own: appending to or resuming
    them is accepted, also with a file the user added beside the outputs."""
    ann, images = str(world["ann"]), str(world["images"])
    pool = tmp_path / "p"
    assert main(["pool", "import-coco", ann, "--images", images, "--out", str(pool), "--min-area", "100"]) == 0
    (pool / "README.txt").write_text("my pool")
    assert main(["pool", "import-coco", ann, "--images", images, "--out", str(pool), "--min-area", "100",
                 "--append"]) == 0
    aug = tmp_path / "aug"
    argv = ["augment", "--dataset", ann, "--images", images, "--pool", str(world["pool"]), "--out", str(aug),
            "--copies", "1", "--workers", "1"]
    assert main(argv) == 0
    first = tree(aug)
    (aug / "notes.txt").write_text("mine")
    assert main(argv) == 0  # resumed: the same outputs
    kept = lambda t: {k: v for k, v in t.items() if k == "annotations.json" or k.startswith("images")}  # noqa: E731
    assert kept(tree(aug)) == kept(first) and (aug / "notes.txt").read_text() == "mine"
    # an empty folder, or one holding only hidden files, holds nothing foreign
    (tmp_path / "empty" / ".hidden").mkdir(parents=True)
    assert main(["pool", "export-png", str(world["pool"]), "--out", str(tmp_path / "empty")]) == 0
    assert main(["pool", "export-png", str(world["pool"]), "--out", str(tmp_path / "empty")]) == 0  # its own
    capsys.readouterr()


# ----------------------------------------------------------------------------- the helper itself
def test_check_output_rules(tmp_path):
    (tmp_path / "f").write_text("x")
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "a.txt").write_text("x")
    (tmp_path / "dead").symlink_to(tmp_path / "missing")
    (tmp_path / "linked").symlink_to(tmp_path / "d")
    ok = [("new/deeper", "folder", None), ("new.json", "file", None), ("d", "folder", None),
          ("d", "folder", ("a.txt", "sub")), ("d", "folder", ("*.txt", "s*")), ("linked", "folder", ("a.txt", "sub")),
          ("f", "file", None), ("d/new.json", "file", None), ("d", "folder", ("x",), ("a.txt",))]
    for case in ok:
        rel, kind, writes, *own = case
        check_output(tmp_path / rel, kind, writes, own=tuple(own[0]) if own else ())
    refused = [("f", "folder", None, "is an existing file, not a folder"),
               ("f/x", "folder", None, "lies under"), ("f/x/y.json", "file", None, "lies under"),
               ("f/../x", "folder", None, "lies under"),  # the system resolves '..' after 'f': ENOTDIR
               ("d", "file", None, "is a folder, not a file"), ("dead", "folder", None, "broken symbolic link"),
               ("d", "folder", ("a.txt",), "holding sub, which"), ("d", "folder", (), "holding a.txt, sub")]
    for rel, kind, writes, words in refused:
        with pytest.raises(XPasteError) as e:
            check_output(str(tmp_path / rel), kind, writes, what="--out")
        assert words in str(e.value) and e.value.path == str(tmp_path / rel) and e.value.hint, (rel, str(e.value))
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError):
        check_output(tmp_path, "thing")
    assert tree(tmp_path).keys() == {"f", "d", "d/sub", "d/a.txt", "dead", "linked"}  # nothing created


def test_run_folder_rule(tmp_path):
    """A run folder holds only what runs write, unless a run was started there (run.json)."""
    run = tmp_path / "run"
    (run / "images").mkdir(parents=True)
    (run / "categories.json").write_text("{}")
    RunDir(run).check_output()
    (run / "my-pool").mkdir()
    with pytest.raises(XPasteError, match="holding my-pool"):
        RunDir(run).check_output()
    RunDir(run).check_output({"build_pool": {"out": str(run / "my-pool")}})  # the pool the config names there
    (run / "notes.txt").write_text("x")
    with pytest.raises(XPasteError, match="holding my-pool, notes.txt"):
        RunDir(run).check_output()
    for marker in ("run.json", "segment/stage.json", "build_pool"):  # a started run: files beside it are not refused
        (run / marker).parent.mkdir(exist_ok=True)
        (run / marker).write_text("{}") if marker.endswith(".json") else (run / marker).mkdir()
        RunDir(run).check_output()
        (run / marker).unlink() if marker.endswith(".json") else (run / marker).rmdir()
