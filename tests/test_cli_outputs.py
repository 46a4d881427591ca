"""Every file a command writes goes through `xpaste.io.atomic_path`: complete or absent, never half-written, and
with the permissions the user's umask gives a plain `open()` (0666 & ~umask), whatever the writer (json, PNG
through OpenCV, Parquet through pyarrow, copies).

Oracles: pyarrow / PIL / filecmp reading the files back, the kernel's `stat` after `os.umask`."""
from __future__ import annotations

import filecmp
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from coco_fixtures import write_dataset

from xpaste.io import atomic_path, copy_file_atomic, encode_image, write_image_atomic, write_parquet_atomic


def test_parquet_copy_and_image_helpers_write_what_readers_read(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rng = np.random.default_rng(0)
    table = pa.table({"a": rng.integers(0, 9, 1000), "b": [str(i) for i in range(1000)]})
    write_parquet_atomic(tmp_path / "t" / "x.parquet", table)
    assert pq.read_table(tmp_path / "t" / "x.parquet").equals(table)

    src = tmp_path / "src.bin"
    src.write_bytes(rng.bytes(100_000))
    os.chmod(src, 0o600)
    copy_file_atomic(src, tmp_path / "c" / "dst.bin")
    assert filecmp.cmp(src, tmp_path / "c" / "dst.bin", shallow=False)

    for shape in ((17, 23), (17, 23, 3), (17, 23, 4)):
        array = rng.integers(0, 256, shape, dtype=np.uint8)
        write_image_atomic(tmp_path / f"img{len(shape)}_{shape[-1]}.png", array)
        with Image.open(tmp_path / f"img{len(shape)}_{shape[-1]}.png") as im:
            mode = "L" if len(shape) == 2 else {3: "RGB", 4: "RGBA"}[shape[-1]]
            assert im.mode == mode and np.array_equal(np.asarray(im), array)
    smooth = np.dstack([np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (48, 1))] * 3)
    write_image_atomic(tmp_path / "s.jpg", smooth)
    with Image.open(tmp_path / "s.jpg") as im:
        assert im.format == "JPEG" and np.abs(np.asarray(im).astype(int) - smooth).max() <= 8
    for bad in (np.zeros((4, 4), np.float32), np.zeros((4, 4, 2), np.uint8)):
        with pytest.raises(ValueError):
            encode_image(bad)


def test_a_failed_write_leaves_neither_the_file_nor_its_temp(tmp_path):
    final = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_path(final) as tmp:
            tmp.write_bytes(b"{half")
            raise RuntimeError("killed mid-write")
    assert list(tmp_path.iterdir()) == []
    final.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(final) as tmp:
            tmp.write_bytes(b"new, half")
            raise KeyboardInterrupt
    assert final.read_bytes() == b"old" and list(tmp_path.iterdir()) == [final]


SCRIPT = r"""
import os, shutil, sys
from pathlib import Path
sys.path.insert(0, sys.argv[3])
os.umask(int(sys.argv[2], 8))
from coco_fixtures import write_dataset
from xpaste.cli import main
T = Path(sys.argv[1])
ann, images = write_dataset(T / "data", n_images=3, size=(120, 160))
collection = T / "collection" / "cup"
collection.mkdir(parents=True)
for f in sorted(images.iterdir())[:2]:
    shutil.copyfile(f, collection / f.name)
calls = [
    ["stats", str(ann), "--out", str(T / "out" / "stats.json")],
    ["pool", "import-coco", str(ann), "--images", str(images), "--out", str(T / "out" / "pool"), "--min-area", "100"],
    ["augment", "--dataset", str(ann), "--images", str(images), "--pool", str(T / "out" / "pool"),
     "--out", str(T / "out" / "aug")],
    ["export-yolo", "--dataset", str(ann), "--images", str(images), "--out", str(T / "out" / "yolo")],
    ["retrieve", "--run", str(T / "out" / "run"), "--categories", "cup", "--folder", str(T / "collection"),
     "--labelled", "--set", "score.clip=null"],
    ["segment", "--run", str(T / "out" / "run"), "--segmenter", "grabcut"],
    ["build-pool", "--run", str(T / "out" / "run"), "--set", "score.clip=null", "--area-min", "0", "--area-max", "1"],
]
for argv in calls:
    rc = main(argv)
    assert rc == 0, (argv, rc)
"""


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_every_output_file_has_the_umask_mode(umask, tmp_path):
    tests_dir = str(Path(__file__).parent)
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), f"{umask:o}", tests_dir], capture_output=True,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    out = tmp_path / "out"
    files = [f for f in out.rglob("*") if f.is_file() and not any(p.startswith(".") for p in f.relative_to(out).parts)]
    kinds = {f.suffix for f in files}
    assert {".json", ".png", ".parquet", ".yaml", ".txt"} <= kinds, kinds
    expected = 0o666 & ~umask
    wrong = {str(f.relative_to(out)): oct(stat.S_IMODE(f.stat().st_mode)) for f in files
             if stat.S_IMODE(f.stat().st_mode) != expected}
    assert not wrong, f"expected {oct(expected)}: {wrong}"


# ----------------------------------------------------------------------------- one line for every bad value
@pytest.fixture(scope="module")
def small_pool(tmp_path_factory):
    from xpaste.cli import main

    root = tmp_path_factory.mktemp("small")
    ann, images = write_dataset(root / "data", n_images=2)
    assert main(["pool", "import-coco", str(ann), "--images", str(images), "--out", str(root / "pool"),
                 "--min-area", "100"]) == 0
    return root, ann, images


@pytest.mark.parametrize("flag, value", [
    ("--copies", "99999999999999999999"), ("--copies", str(2**63)), ("--copies", str(2**62)),  # x 2 images
    ("--seed", str(2**64)), ("--workers", "1" + "0" * 30), ("--max-images", str(2**63)),
    ("--max-paste", "99999999999999999999"), ("--num-paste", str(2**63)), ("--min-size-px", str(2**70)),
])
def test_augment_integers_beyond_int64_are_one_line(small_pool, flag, value, capsys):
    from xpaste.cli import main

    root, ann, images = small_pool
    out = root / "out"
    capsys.readouterr()
    code = main(["augment", "--dataset", str(ann), "--images", str(images), "--pool", str(root / "pool"),
                 "--out", str(out), flag, value])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "Traceback" not in err, err
    assert flag in err and str(2**63 - 1) in err, err
    assert not out.exists()  # checked before anything was written


def _hinted_command(err: str) -> list[str]:
    """The command line a hint tells the user to run ('... run: xpaste ...; ...' or '... e.g. xpaste ...)')."""
    import re
    import shlex

    found = re.search(r"(?:run: |e\.g\. )(xpaste .*?)(?:; |\)$)", err)
    assert found, err
    words = shlex.split(found.group(1))
    assert words[0] == "xpaste"
    return words[1:]


def test_an_existing_pool_hint_names_a_command_that_runs(small_pool, tmp_path, capsys):
    """import-coco, import-xpaste and migrate onto an existing pool: the hint is this command's own command line
    (no Python argument names, no flag the command lacks), and running it works."""
    from xpaste.cli import main

    root, ann, images = small_pool
    xp = tmp_path / "xp"
    (xp / "cut").mkdir(parents=True)
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[4:16, 5:25] = (200, 100, 50, 255)
    from PIL import Image

    Image.fromarray(rgba).save(xp / "cut" / "0.png")
    (xp / "pool.json").write_text('{"0": ["*cut/0.png"]}')
    first = tmp_path / "p q"  # a space: the hinted command must be quoted to run
    commands = [
        (["pool", "import-coco", str(ann), "--images", str(images), "--out", str(first), "--min-area", "100"],
         "--append"),
        (["pool", "import-xpaste", str(xp / "pool.json"), "--out", str(tmp_path / "xpool")], "--append"),
        (["pool", "migrate", str(root / "pool"), str(first)], "pool migrate"),
    ]
    for argv, wanted in commands:
        if argv[1] != "migrate":
            assert main(argv) == 0
        capsys.readouterr()
        assert main(argv) == 2  # the pool exists now
        lines = capsys.readouterr().err.strip().splitlines()
        err = lines[-1]  # import-xpaste warns first that its names are category_N: the error is the last line
        assert err.startswith("xpaste: error:") and sum("error" in x for x in lines) == 1, lines
        assert "exist_ok" not in err and wanted in err, err
        if argv[1] == "migrate":
            assert "--append" not in err, err
        assert main(_hinted_command(err)) == 0, err


def test_every_help_text_shows_its_square_brackets():
    """rich reads '[word]' as markup and drops it: every bracketed part of every option's help and every
    command's description must appear in the rendered --help."""
    import re

    import typer.main
    from typer.testing import CliRunner

    from xpaste.cli import build_app

    app = build_app()

    def walk(command, path):
        yield path, command
        for name, sub in getattr(command, "commands", {}).items():
            yield from walk(sub, path + [name])

    checked = 0
    for path, command in walk(typer.main.get_command(app), []):
        texts = [p.help for p in command.params if getattr(p, "help", None)] + [command.help or ""]
        wanted = [tok for t in texts for tok in re.findall(r"\[[^\[\]]*\]", t)]
        if not wanted:
            continue
        shown = CliRunner().invoke(app, path + ["--help"], env={"COLUMNS": "400"}, terminal_width=400).output
        shown = " ".join(shown.replace("│", " ").split())
        for tok in wanted:
            plain = tok.replace("\\", "")
            assert " ".join(plain.split()) in shown, (path, tok)
            checked += 1
    assert checked >= 1  # import-xpaste's "[paths]" at least
