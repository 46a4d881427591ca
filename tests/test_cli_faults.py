"""Faults end cleanly at the CLI, for every command: one line naming the path and a hint (exit 2) for a full disk,
a read-only folder, permissions and open-file limits; `xpaste: interrupted` (exit 130) for Ctrl-C; `--debug`
shows the traceback; nothing half-written under a final name, and a rerun resumes.

Oracles: `os.strerror` (the system's text of each errno), the kernel itself (a real full / read-only tmpfs, a
real SIGINT), and PIL / json / pyarrow reading back every file left under a final name."""
from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from coco_fixtures import write_dataset
from file_checks import assert_complete_files

from xpaste.cli import OS_FAULT_HINTS, main
from xpaste.errors import XPasteError

XPASTE = [sys.executable, "-m", "xpaste"]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.replace("\r", "\n").splitlines()
    err = [line for line in err if line.strip() and "%|" not in line]  # progress bars (tqdm) are not messages
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data"), n_images=12, size=(120, 160))


# ------------------------------------------------------------------ in-process: each kind, raised where a write is
@pytest.mark.parametrize("code", sorted(OS_FAULT_HINTS))
def test_each_os_fault_kind_is_one_line_naming_the_path(code, dataset, tmp_path, monkeypatch, capsys):
    import xpaste.data.stats as stats

    target = tmp_path / "out" / "stats.json"

    def failing(rows, path):
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(stats, "write_stats", failing)
    assert main(["stats", str(dataset[0]), "--out", str(target)]) == 2
    line = one_error_line(capsys)
    assert line.startswith("xpaste: error: ") and str(target) in line and os.strerror(code) in line
    assert "hint:" in line


def test_errors_without_errno_are_recognised_by_their_text(dataset, tmp_path, monkeypatch, capsys):
    """pyarrow raises OSError without errno; chained errors keep their cause."""
    import xpaste.data.stats as stats

    text = f"Error writing bytes to file. Detail: [errno {errno.ENOSPC}] {os.strerror(errno.ENOSPC)}"
    monkeypatch.setattr(stats, "write_stats", lambda rows, path: (_ for _ in ()).throw(OSError(text)))
    assert main(["stats", str(dataset[0]), "--out", str(tmp_path / "s.json")]) == 2
    assert os.strerror(errno.ENOSPC) in one_error_line(capsys)

    def chained(rows, path):
        try:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        except OSError as e:
            raise RuntimeError("wrapped by a worker pool") from e

    monkeypatch.setattr(stats, "write_stats", chained)
    assert main(["stats", str(dataset[0]), "--out", str(tmp_path / "s.json")]) == 2
    assert os.strerror(errno.EROFS) in one_error_line(capsys)


def test_other_errors_are_not_swallowed_and_debug_shows_tracebacks(dataset, tmp_path, monkeypatch, capsys):
    import xpaste.data.stats as stats

    monkeypatch.setattr(stats, "write_stats", lambda rows, path: (_ for _ in ()).throw(
        OSError(errno.EIO, os.strerror(errno.EIO), str(path))))
    with pytest.raises(OSError):  # an I/O error is not a user's fault: a bug report needs the traceback
        main(["stats", str(dataset[0]), "--out", str(tmp_path / "s.json")])
    monkeypatch.setattr(stats, "write_stats", lambda rows, path: (_ for _ in ()).throw(
        OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))))
    with pytest.raises(OSError):
        main(["--debug", "stats", str(dataset[0]), "--out", str(tmp_path / "s.json")])
    monkeypatch.setattr(stats, "write_stats", lambda rows, path: (_ for _ in ()).throw(XPasteError("bad", path)))
    with pytest.raises(XPasteError):
        main(["stats", str(dataset[0]), "--out", str(tmp_path / "s.json"), "--debug"])
    assert main(["stats", str(dataset[0]), "--out", str(tmp_path / "s.json")]) == 2
    assert one_error_line(capsys).endswith(f"{tmp_path / 's.json'}: bad")


def test_keyboard_interrupt_in_process(dataset, tmp_path, monkeypatch, capsys):
    import xpaste.data.stats as stats

    monkeypatch.setattr(stats, "category_stats", lambda ds: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert main(["stats", str(dataset[0])]) == 130
    assert one_error_line(capsys) == "xpaste: interrupted"


def test_usage_errors_exit_2_without_traceback(capsys):
    assert main(["stats", "--no-such-flag"]) == 2
    err = capsys.readouterr().err
    assert "No such option" in err and "Traceback" not in err
    assert main(["stats", "--help"]) == 0


# ------------------------------------------------------------------ a real full disk and a read-only folder
def mount_tmpfs(folder: Path, options: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()[:80]}")


def fill(folder: Path) -> Path:
    """Fill a tmpfs to the last byte (the kernel's ENOSPC is the oracle that it is full)."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        for size in (65536, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError as e:
                assert e.errno == errno.ENOSPC
    return filler


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "small"
    mount_tmpfs(disk, "size=1m")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.fixture
def read_only(tmp_path):
    disk = tmp_path / "ro"
    mount_tmpfs(disk, "ro,size=1m")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def pipeline_run(dataset, root: Path) -> Path:
    """A small pipeline run (labelled folder -> GrabCut, no CLIP) whose pool build-pool writes."""
    import shutil

    from xpaste.data.coco import load_coco

    ann, images = dataset
    collection = root / "collection"
    ds = load_coco(ann)
    names = {c["id"]: c["name"] for c in ds.categories}
    for a in ds.annotations[:6]:
        img = next(i for i in ds.images if i["id"] == a["image_id"])
        folder = collection / names[a["category_id"]].replace("/", "_")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(images / img["file_name"], folder / f"{a['id']}.png")
    run = root / "run"
    base = ["--run", str(run), "--set", "score.clip=null"]
    assert main(["retrieve", *base, "--categories", str(ann), "--folder", str(collection), "--labelled"]) == 0
    assert main(["segment", *base, "--segmenter", "grabcut"]) == 0
    return run


def commands(dataset, pool: Path, run: Path, out: Path) -> dict[str, list[str]]:
    ann, images = dataset
    return {
        "stats": ["stats", str(ann), "--out", str(out / "stats.json")],
        "import-coco": ["pool", "import-coco", str(ann), "--images", str(images), "--out", str(out / "pool"),
                        "--min-area", "100"],
        "build-pool": ["build-pool", "--run", str(run), "--out", str(out / "built"), "--set", "score.clip=null",
                       "--area-min", "0", "--area-max", "1"],
        "augment": ["augment", "--dataset", str(ann), "--images", str(images), "--pool", str(pool),
                    "--out", str(out / "aug"), "--copies", "2"],
    }


@pytest.fixture(scope="module")
def sources(dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    ann, images = dataset
    assert main(["pool", "import-coco", str(ann), "--images", str(images), "--out", str(root / "pool"),
                 "--min-area", "100"]) == 0
    return root / "pool", pipeline_run(dataset, root)


def test_disk_full_every_writing_command_one_line_then_resumes(dataset, sources, small_disk, capsys):
    pool, run = sources
    filler = fill(small_disk)
    for name, argv in commands(dataset, pool, run, small_disk).items():
        capsys.readouterr()
        assert main(argv) == 2, name
        line = one_error_line(capsys)
        assert os.strerror(errno.ENOSPC) in line and str(small_disk) in line and "hint:" in line, (name, line)
        assert_complete_files(small_disk, skip_names=("filler",), skip_hidden_folders=True)
    filler.unlink()  # space again: every command finishes
    for name, argv in commands(dataset, pool, run, small_disk).items():
        assert main(argv) == 0, name
    assert assert_complete_files(small_disk, skip_names=("filler",), skip_hidden_folders=True) > 0


def test_read_only_output_folder_every_command_one_line(dataset, sources, read_only, capsys):
    pool, run = sources
    for name, argv in commands(dataset, pool, run, read_only).items():
        capsys.readouterr()
        assert main(argv) == 2, name
        line = one_error_line(capsys)
        assert os.strerror(errno.EROFS) in line and str(read_only) in line, (name, line)
    assert not any(read_only.iterdir())


# ------------------------------------------------------------------ a real SIGINT to a running command
def interrupt(argv: list[str], ready, group: bool = False) -> tuple[int, str]:
    """Start `xpaste argv`, send SIGINT once ready(stderr so far) holds, to the process or (group) to its whole
    process group as Ctrl-C in a terminal does, workers included; (exit status, stderr)."""
    p = subprocess.Popen(XPASTE + argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         env=dict(os.environ, OMP_NUM_THREADS="1"), start_new_session=group)
    err = bytearray()

    def drain():
        while chunk := os.read(p.stderr.fileno(), 65536):
            err.extend(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    while not ready(err.decode("utf-8", "replace")):
        if p.poll() is not None:
            pytest.fail(f"{argv[0]} finished before the interrupt: {err.decode()[-300:]}")
        time.sleep(0.005)
    if group:
        os.killpg(p.pid, signal.SIGINT)
    else:
        p.send_signal(signal.SIGINT)
    p.wait(timeout=120)
    reader.join(timeout=10)
    return p.returncode, err.decode("utf-8", "replace")


def progress(err: str) -> int:
    counts = re.findall(r"(\d+)/(\d+)", err)
    return int(counts[-1][0]) if counts else -1


def test_sigint_to_import_coco_and_augment_exit_130_then_resume(sources, tmp_path):
    many, many_images = write_dataset(tmp_path / "many", n_images=400, size=(120, 160))
    pool, _ = sources
    out = tmp_path / "pool"
    argv = ["pool", "import-coco", str(many), "--images", str(many_images), "--out", str(out), "--min-area", "100"]
    rc, err = interrupt(argv, lambda e: progress(e) >= 20)
    assert rc == 130 and err.strip().splitlines()[-1] == "xpaste: interrupted" and "Traceback" not in err
    aug = tmp_path / "aug"
    argv = ["augment", "--dataset", str(many), "--images", str(many_images), "--pool", str(pool), "--out", str(aug),
            "--copies", "2", "--blend", "poisson", "--max-paste", "10"]
    images = aug / "images"
    rc, err = interrupt(argv, lambda e: images.is_dir() and sum(not n.startswith(".") for n in os.listdir(images)) >= 5)
    assert rc == 130 and err.strip().splitlines()[-1] == "xpaste: interrupted" and "Traceback" not in err
    assert not (aug / "annotations.json").exists()
    assert_complete_files(aug, skip_names=("filler",), skip_hidden_folders=True)
    r = subprocess.run(XPASTE + argv, capture_output=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr.decode()[-500:]
    doc = json.loads((aug / "annotations.json").read_text())
    assert len(doc["images"]) == 2 * 400
    # Ctrl-C in a terminal reaches the workers too
    aug2 = tmp_path / "aug2"
    argv = argv[: argv.index("--out") + 1] + [str(aug2)] + argv[argv.index("--out") + 2:] + ["--workers", "2"]
    images = aug2 / "images"
    rc, err = interrupt(argv, lambda e: images.is_dir() and sum(not n.startswith(".") for n in os.listdir(images)) >= 5,
                        group=True)
    assert rc == 130 and err.strip().splitlines()[-1] == "xpaste: interrupted" and "Traceback" not in err
    assert not (aug2 / "annotations.json").exists()
    assert_complete_files(aug2, skip_names=("filler",), skip_hidden_folders=True)


def pool_content(path: Path) -> list[tuple]:
    """(instance id, category, pixels) of every pool row, sorted: what a reader gets, whatever the shard layout."""
    from xpaste.pool.store import InstancePool

    pool = InstancePool.open(path)
    ids, cats = pool.instance_ids, pool.category_ids
    return sorted((str(ids[r]), int(cats[r]), pool.rgba(r).tobytes()) for r in range(len(pool)))


def test_disk_full_mid_import_then_rerun_resumes_to_the_uninterrupted_pool(tmp_path, capsys):
    ann, images = write_dataset(tmp_path / "data", n_images=60, size=(120, 160))
    argv = ["pool", "import-coco", str(ann), "--images", str(images), "--min-area", "100"]
    assert main(argv + ["--out", str(tmp_path / "reference")]) == 0
    size = sum(f.stat().st_size for f in (tmp_path / "reference").rglob("*") if f.is_file())
    disk = tmp_path / "small"
    mount_tmpfs(disk, f"size={max(8, size // 2 // 1024)}k")  # half of what the pool needs
    try:
        capsys.readouterr()
        assert main(argv + ["--out", str(disk / "pool")]) == 2
        line = one_error_line(capsys)
        assert os.strerror(errno.ENOSPC) in line and str(disk) in line
        assert_complete_files(disk, skip_names=("filler",), skip_hidden_folders=True)
        subprocess.run(["mount", "-o", f"remount,size={4 * size // 1024 + 64}k", str(disk)], check=True)
        assert main(argv + ["--out", str(disk / "pool")]) == 0  # the same command resumes the interrupted pool
        assert pool_content(disk / "pool") == pool_content(tmp_path / "reference")
        capsys.readouterr()
        assert main(argv + ["--out", str(disk / "pool")]) == 2  # a complete pool is never silently added to
        assert "--append" in one_error_line(capsys)
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_closed_stdout_ends_quietly_but_other_broken_pipes_are_errors(tmp_path, monkeypatch):
    ann = tmp_path / "many_categories.json"  # a table far larger than a pipe's buffer: the write must fail
    ann.write_text(json.dumps({"images": [], "annotations": [],
                               "categories": [{"id": i, "name": f"category {i}"} for i in range(1, 20001)]}))
    p = subprocess.Popen(XPASTE + ["stats", str(ann)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    p.stdout.readline()  # `| head -1`: read the header, then go away
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 1 and err == ""

    import xpaste.data.stats as stats

    monkeypatch.setattr(stats, "category_stats", lambda ds: (_ for _ in ()).throw(BrokenPipeError(32, "worker")))
    with pytest.raises(BrokenPipeError):  # a worker's pipe, not stdout: a real error
        main(["stats", str(ann)])
