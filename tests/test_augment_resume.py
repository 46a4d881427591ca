"""`xpaste augment` under faults and reruns: every kind of changed input is refused in one line (and --fresh
redoes it), options and --out are checked before any write, Ctrl-C / a killed worker / a full disk /
a second writer end cleanly, and the finished output equals an uninterrupted run byte for byte."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from coco_fixtures import write_dataset
from file_checks import assert_complete_files
from PIL import Image

from xpaste.cli import main

XPASTE = [sys.executable, "-m", "xpaste"]


def digest(folder: Path, skip=("augment_log.json",)) -> dict[str, str]:
    """sha256 of every file (shard tables and stage.json included) but the log, which counts resumed work."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name not in skip}


def n_images(out: Path) -> int:
    try:
        return sum(1 for n in os.listdir(out / "images") if not n.startswith("."))
    except FileNotFoundError:
        return 0


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A 12-image dataset, its pool, and the reference output of an uninterrupted run."""
    root = tmp_path_factory.mktemp("resume")
    ann, images = write_dataset(root / "data", n_images=12, size=(160, 200))
    pool = root / "pool"
    assert main(["pool", "import-coco", str(ann), "--images", str(images), "--out", str(pool),
                 "--min-area", "100"]) == 0
    args = ["augment", "--dataset", str(ann), "--images", str(images), "--pool", str(pool), "--copies", "3",
            "--seed", "3", "--max-paste", "8", "--blend", "gaussian"]
    assert main([*args, "--out", str(root / "reference")]) == 0
    return {"root": root, "ann": ann, "images": images, "pool": pool, "args": args,
            "reference": digest(root / "reference")}


def start(args: list[str], out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([*XPASTE, *args, "--out", str(out), *extra], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_for_images(proc: subprocess.Popen, out: Path, n: int) -> None:
    while n_images(out) < n:
        if proc.poll() is not None:
            pytest.fail(f"augment ended before {n} images were written: {proc.stderr.read()[-500:]}")
        time.sleep(0.002)


def killed_output(args: list[str], out: Path, after: int = 8) -> None:
    """An output folder left by a SIGKILLed augment (the whole process group, workers included)."""
    proc = start(args, out, "--workers", "2")
    wait_for_images(proc, out, after)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "annotations.json").exists()
    assert_complete_files(out)


# ----------------------------------------------------------------------------- changed inputs
# Each case: (arguments the killed run used, a change made after the kill, arguments of the rerun, the words
# the one-line refusal must contain). Inputs that are edited in place are copies under `tmp`.
def _dataset_edited_in_place(data, tmp):
    shutil.copytree(data["ann"].parent, tmp / "data")
    ann = tmp / "data" / "annotations.json"

    def change():
        doc = json.loads(ann.read_text())
        doc["annotations"] = [a for a in doc["annotations"] if a["category_id"] != 2]
        ann.write_text(json.dumps(doc))
    args = [*data["args"], "--dataset", str(ann)]
    return args, change, args, "the dataset json changed"


def _images_folder_elsewhere(data, tmp):
    shutil.copytree(data["images"], tmp / "images")  # same names, same pixels, another folder
    return data["args"], lambda: None, [*data["args"], "--images", str(tmp / "images")], \
        "the images folder (--images) changed"


def _image_edited_in_place(data, tmp):
    shutil.copytree(data["images"], tmp / "images")
    first = sorted((tmp / "images").iterdir())[0]

    def change():
        im = np.asarray(Image.open(first).convert("RGB"))[:, ::-1]
        Image.fromarray(np.ascontiguousarray(im)).save(first, quality=95)
    args = [*data["args"], "--images", str(tmp / "images")]
    return args, change, args, "the images folder (--images) changed"


def _pool_changed_in_place(data, tmp):
    shutil.copytree(data["pool"], tmp / "pool")

    def change():  # the same path now holds a pool with fewer instances
        shutil.rmtree(tmp / "pool")
        assert main(["pool", "import-coco", str(data["ann"]), "--images", str(data["images"]), "--out",
                     str(tmp / "pool"), "--min-area", "600"]) == 0
    args = [*data["args"], "--pool", str(tmp / "pool")]
    return args, change, args, "the pool (--pool) changed"


def _option_changed(data, tmp):
    return data["args"], lambda: None, [*data["args"], "--flip-prob", "0.2"], "setting paste.flip_prob changed"


def _scale_prior_file_changed(data, tmp):
    prior = tmp / "stats.json"
    assert main(["stats", str(data["ann"]), "--out", str(prior)]) == 0

    def change():  # the stats of another dataset written over the file
        other, _ = write_dataset(tmp / "other", n_images=3, seed=5)
        assert main(["stats", str(other), "--out", str(prior)]) == 0
    args = [*data["args"], "--scale-prior", str(prior)]
    return args, change, args, "the scale prior (--scale-prior) changed"


CHANGES = [_dataset_edited_in_place, _images_folder_elsewhere, _image_edited_in_place, _pool_changed_in_place,
           _option_changed, _scale_prior_file_changed]


@pytest.mark.parametrize("case", CHANGES, ids=[c.__name__.strip("_") for c in CHANGES])
def test_resume_with_a_changed_input_is_refused_then_fresh_redoes_it(data, tmp_path, case, capsys):
    tmp = tmp_path / "inputs"
    tmp.mkdir()
    started_with, change, resumed_with, expected = case(data, tmp)
    out = tmp_path / "out"
    killed_output(started_with, out)
    change()
    capsys.readouterr()
    before = digest(out, skip=())
    assert main([*resumed_with, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("xpaste: error:")]
    assert len(lines) == 1 and expected in lines[0] and "Traceback" not in err, err
    assert digest(out, skip=()) == before  # the refusal wrote nothing
    # --fresh starts over: the result equals an uninterrupted run with the new inputs
    assert main([*resumed_with, "--out", str(out), "--fresh"]) == 0
    assert main([*resumed_with, "--out", str(tmp_path / "clean")]) == 0
    assert digest(out) == digest(tmp_path / "clean")


def test_unchanged_inputs_resume_to_the_uninterrupted_bytes(data, tmp_path):
    out = tmp_path / "out"
    killed_output(data["args"], out)
    assert main([*data["args"], "--out", str(out), "--workers", "1"]) == 0
    assert digest(out) == data["reference"]


def test_a_shard_whose_image_is_missing_or_truncated_is_redone(data, tmp_path):
    out = tmp_path / "out"
    assert main([*data["args"], "--out", str(out)]) == 0
    images = sorted((out / "images").iterdir())
    images[0].unlink()  # a finished shard lost an image (deleted by hand, a disk fault)
    images[-1].write_bytes(images[-1].read_bytes()[:100])  # and another one was truncated
    (out / "annotations.json").unlink()
    assert main([*data["args"], "--out", str(out)]) == 0
    assert digest(out) == data["reference"]


# ----------------------------------------------------------------------------- faults
def test_ctrl_c_stops_workers_leaves_nothing_half_written_and_resumes(data, tmp_path):
    out = tmp_path / "out"
    proc = start(data["args"], out, "--workers", "2")
    wait_for_images(proc, out, 6)
    proc.send_signal(signal.SIGINT)  # to the driver only: it must stop its workers itself
    assert proc.wait(timeout=120) == 130
    assert proc.stderr.read().strip().splitlines()[-1] == "xpaste: interrupted"
    leftover = subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert leftover == []  # no worker outlives the interrupted run
    assert not (out / "annotations.json").exists()
    assert_complete_files(out)
    assert main([*data["args"], "--out", str(out)]) == 0
    assert digest(out) == data["reference"]


def test_a_killed_worker_is_replaced_and_its_work_redone(data, tmp_path):
    out = tmp_path / "out"
    proc = start(data["args"], out, "--workers", "2")
    wait_for_images(proc, out, 4)
    workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert workers, "augment --workers 2 has no worker processes"
    os.kill(int(workers[0]), signal.SIGKILL)  # what the OOM killer does
    assert proc.wait(timeout=300) == 0, proc.stderr.read()[-2000:]
    assert digest(out) == data["reference"]


def test_a_second_writer_on_the_same_out_is_refused(data, tmp_path):
    out = tmp_path / "out"
    first = start(data["args"], out, "--workers", "2")
    wait_for_images(first, out, 1)
    os.killpg(first.pid, signal.SIGSTOP)  # the first writer is certainly mid-run while the second starts
    try:
        second = subprocess.run([*XPASTE, *data["args"], "--out", str(out)], capture_output=True, text=True)
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    assert second.returncode == 2
    assert second.stderr.strip().splitlines()[-1].startswith("xpaste: error:")
    assert "another xpaste process is writing this output folder" in second.stderr
    assert "Traceback" not in second.stderr
    assert first.wait(timeout=300) == 0
    assert digest(out) == data["reference"]


def test_disk_full_and_read_only_end_in_one_line_and_resume_when_fixed(data, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(small)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        out = small / "out"
        done = subprocess.run([*XPASTE, *data["args"], "--out", str(out)], capture_output=True, text=True)
        assert done.returncode == 2, done.stderr[-2000:]
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith("xpaste: error:") and "No space left on device" in last
        assert "Traceback" not in done.stderr
        assert 0 < n_images(out) < 36
        assert_complete_files(out)
        # a read-only output folder: one line naming a path under it, nothing changed
        before = digest(out, skip=())
        assert subprocess.run(["mount", "-o", "remount,ro,size=64m", str(small)]).returncode == 0
        done = subprocess.run([*XPASTE, *data["args"], "--out", str(out)], capture_output=True, text=True)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith("xpaste: error:") and str(out) in last
        assert digest(out, skip=()) == before
        assert subprocess.run(["mount", "-o", "remount,rw,size=64m", str(small)]).returncode == 0
        assert main([*data["args"], "--out", str(out)]) == 0
        assert digest(out) == data["reference"]
    finally:
        subprocess.run(["umount", "-l", str(small)])


# ----------------------------------------------------------------------------- checks before writing
BAD_OPTIONS = [["--blend", "hardd"], ["--sampling", "balancd"], ["--num-paste", "-1"], ["--max-paste", "0"],
               ["--flip-prob", "nan"], ["--flip-prob", "1.5"], ["--copies", "0"], ["--workers", "0"],
               ["--engine", "dask"], ["--image-format", "webp"], ["--max-images", "0"], ["--seed", "-1"],
               ["--max-rotation", "-5"], ["--color-jitter", "inf"], ["--scale-prior", "missing.json"]]


@pytest.mark.parametrize("bad", BAD_OPTIONS, ids=[" ".join(b) for b in BAD_OPTIONS])
def test_a_bad_option_is_refused_before_anything_is_written(data, tmp_path, capsys, bad):
    out = tmp_path / "out"
    assert main([*data["args"], "--out", str(out), *bad]) == 2
    err = capsys.readouterr().err
    assert len([line for line in err.splitlines() if line.startswith("xpaste: error:")]) == 1, err
    assert "Traceback" not in err
    assert not out.exists()


def test_the_corrected_command_then_works(data, tmp_path):
    out = tmp_path / "out"
    assert main([*data["args"], "--out", str(out), "--blend", "hardd"]) == 2
    assert main([*data["args"], "--out", str(out)]) == 0
    assert digest(out) == data["reference"]


def test_an_out_that_would_overwrite_an_input_is_refused(tmp_path, capsys):
    ann, images = write_dataset(tmp_path / "data", n_images=2)
    pool = tmp_path / "data" / "pool"
    assert main(["pool", "import-coco", str(ann), "--images", str(images), "--out", str(pool),
                 "--min-area", "100"]) == 0
    before = digest(tmp_path / "data", skip=())
    for out, words in [(ann.parent, "dataset json"), (images, "images folder"), (images.parent, "dataset json"),
                       (tmp_path, "images folder"), (pool, "pool"), (pool / "sub", "pool"),
                       (images / "sub", "images folder")]:
        capsys.readouterr()
        code = main(["augment", "--dataset", str(ann), "--images", str(images), "--pool", str(pool),
                     "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and words in err and "Traceback" not in err, (out, err)
    assert digest(tmp_path / "data", skip=()) == before


def test_an_out_holding_other_files_is_refused_unless_fresh(data, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    (out / "images" / "000000000001.jpg").write_bytes(b"someone else's")
    assert main([*data["args"], "--out", str(out)]) == 2
    assert "already holds images" in capsys.readouterr().err
    assert main([*data["args"], "--out", str(out), "--fresh"]) == 0
    assert digest(out) == data["reference"]
