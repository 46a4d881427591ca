"""A fuzz corpus for the inputs of every command that reads a json, a pool, a prompt file or a config (issue 20).

Valid inputs are built once (a small LVIS-style dataset with its images, a pool, an official X-Paste pool json,
predictions, a prompt file, a pipeline config and the run it made). Each case copies the files a command reads
to their usual place, applies one seeded mutation (truncation, wrong types, huge / negative numbers, NaN,
wrong nesting, deleted keys, missing or truncated files inside folders, ...) and runs `xpaste.cli.main` in a
forked child (the parent's imports are shared, so a case costs milliseconds, not an interpreter start), with
an address-space limit (`resource.RLIMIT_AS`: what the child has mapped + MEMORY_HEADROOM) and a wall-clock
limit. Each case must end in a right value or one line: exit 0 (outputs, where json, parse) or exit 2 with
one error line, never a traceback, a hang, a crash (signal) or an allocation past the limit.

`make test` runs FAST_CASES mutations per command (seeded, about a minute on 2 loaded cores);
`make soak` runs tests/test_soak.py, which runs the `slow`-marked version with SLOW_CASES per command
(XPASTE_FUZZ_CLI_CASES overrides it). The number of mutations tried per command is printed at the end of
the session and written to <pytest basetemp>/fuzz_cli_counts.json.
"""
from __future__ import annotations

import copy
import json
import os
import random
import resource
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml
from coco_fixtures import write_dataset
from PIL import Image

from xpaste.cli import main

FAST_CASES = int(os.environ.get("XPASTE_FUZZ_CLI_FAST", "20"))
SLOW_CASES = int(os.environ.get("XPASTE_FUZZ_CLI_CASES", "400"))
CASE_TIMEOUT_S = float(os.environ.get("XPASTE_FUZZ_CLI_TIMEOUT", "60"))  # a hang, not a slow machine
MEMORY_HEADROOM = 3 << 30  # bytes a case may map beyond what the parent process had mapped at fork

COUNTS: dict[str, dict[str, int]] = {}  # version -> command -> mutations tried (printed at session end)


# ----------------------------------------------------------------------------- the valid inputs
@dataclass
class Target:
    """A command, the files it reads (relative to the world), the ones to mutate, and its command line."""
    name: str
    reads: list[str]  # files / folders copied into place before each case
    json_files: list[str] = field(default_factory=list)  # parsed, mutated structurally, or truncated
    yaml_files: list[str] = field(default_factory=list)
    folders: list[str] = field(default_factory=list)  # a file inside deleted, truncated, emptied or flipped
    argv: Callable[[Path], list[str]] = lambda w: []
    outputs: list[str] = field(default_factory=list)  # json outputs that must parse after exit 0
    heavy: bool = False  # about a second a case (renders, resumes a pipeline): half the cases in `make test`
    preload: tuple[str, ...] = ()  # modules imported in the parent first, so that forked cases share them


def _cut(path: Path) -> None:
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[4:16, 5:25] = (200, 100, 50, 255)
    Image.fromarray(rgba).save(path)


def build_world(work: Path) -> None:
    ann, images = write_dataset(work / "data", n_images=3)
    ann.rename(work / "data" / "ann.json")
    assert main(["pool", "import-coco", str(work / "data" / "ann.json"), "--images", str(images), "--out",
                 str(work / "pool"), "--min-area", "100"]) == 0
    (work / "xp" / "cut").mkdir(parents=True)
    for i in range(2):
        _cut(work / "xp" / "cut" / f"{i}.png")
    (work / "xp" / "pool.json").write_text(json.dumps({"0": ["*cut/0.png"], "2": ["cut/1.png"]}))
    doc = json.loads((work / "data" / "ann.json").read_text())
    preds = [{"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": a["segmentation"],
              "bbox": a["bbox"], "score": 0.9 - 0.01 * i}
             for i, a in enumerate(doc["annotations"]) if not a["iscrowd"]]
    (work / "data" / "preds.json").write_text(json.dumps(preds))
    (work / "prompts.json").write_text(json.dumps({"cup": ["a white mug", "a blue cup"],
                                                   "fire_hydrant": ["a red hydrant"]}))
    names = {c["id"]: c["name"] for c in doc["categories"]}
    files = {i["id"]: i["file_name"] for i in doc["images"]}
    for a in doc["annotations"][:6]:
        folder = work / "collection" / names[a["category_id"]].replace("/", "_")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(images / files[a["image_id"]], folder / f"{a['id']}.png")
    config = {"run_dir": str(work / "run"), "shard_size": 4, "workers": 1,
              "categories": {"source": str(work / "data" / "ann.json")},
              "generate": {"enabled": False},
              "retrieve": {"enabled": True, "folder": str(work / "collection"), "labelled": True},
              "segment": {"segmenters": ["grabcut"]}, "score": {"clip": None},
              "build_pool": {"area_min": 0.0, "area_max": 1.0}}
    (work / "run.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    assert main(["--quiet", "run", str(work / "run.yaml")]) == 0, "the valid pipeline config does not run"


def targets() -> list[Target]:
    ds = ["data/ann.json", "data/images"]
    return [
        Target("stats", ["data/ann.json"], ["data/ann.json"], argv=lambda w: [
            "stats", str(w / "data/ann.json"), "--out", str(w / "out/stats.json")], outputs=["out/stats.json"]),
        Target("eval", ["data/ann.json", "data/preds.json"], ["data/ann.json", "data/preds.json"], argv=lambda w: [
            "eval", "--gt", str(w / "data/ann.json"), "--pred", str(w / "data/preds.json"), "--out",
            str(w / "out/eval.json")], outputs=["out/eval.json"]),
        Target("eval-bbox", ["data/ann.json", "data/preds.json"], ["data/ann.json", "data/preds.json"],
               argv=lambda w: ["eval", "--gt", str(w / "data/ann.json"), "--pred", str(w / "data/preds.json"),
                               "--iou-type", "bbox", "--kind", "coco"]),
        Target("augment", [*ds, "pool"], ["data/ann.json", "pool/pool.json", "pool/index/manifest.json"],
               folders=["data/images", "pool/index", "pool/data"], argv=lambda w: [
                   "augment", "--dataset", str(w / "data/ann.json"), "--images", str(w / "data/images"),
                   "--pool", str(w / "pool"), "--out", str(w / "out/aug"), "--copies", "1", "--max-images", "2"]),
        Target("pool import-coco", ds, ["data/ann.json"], folders=["data/images"], argv=lambda w: [
            "pool", "import-coco", str(w / "data/ann.json"), "--images", str(w / "data/images"), "--out",
            str(w / "out/pool"), "--min-area", "100"]),
        Target("pool import-xpaste", ["xp", "data/ann.json"], ["xp/pool.json", "data/ann.json"], folders=["xp/cut"],
               argv=lambda w: ["pool", "import-xpaste", str(w / "xp/pool.json"), "--out", str(w / "out/xpool"),
                               "--dataset", str(w / "data/ann.json")]),
        Target("pool info", ["pool"], ["pool/pool.json", "pool/index/manifest.json"],
               folders=["pool/index", "pool/data"], argv=lambda w: ["pool", "info", str(w / "pool")]),
        Target("export-yolo", ds, ["data/ann.json"], folders=["data/images"], argv=lambda w: [
            "export-yolo", "--dataset", str(w / "data/ann.json"), "--images", str(w / "data/images"), "--out",
            str(w / "out/yolo")]),
        Target("report", ["pool", "data/ann.json"], ["pool/pool.json", "pool/index/manifest.json", "data/ann.json"],
               folders=["pool/index", "pool/data"], argv=lambda w: [
                   "report", str(w / "pool"), "--dataset", str(w / "data/ann.json"), "--out", str(w / "out/report"),
                   "--max-per-category", "2", "--gallery", "0"], heavy=True),
        Target("generate", ["prompts.json", "data/ann.json"], ["prompts.json"], argv=lambda w: [
            "generate", "--run", str(w / "out/run"), "--categories", "fire_hydrant,cup", "--model",
            str(w / "no such model"), "--per-category", "1", "--prompt-file", str(w / "prompts.json")],
            preload=("torch", "diffusers")),
        Target("run", ["run.yaml", "run", "collection", "data/ann.json"], yaml_files=["run.yaml"],
               argv=lambda w: ["run", str(w / "run.yaml")], heavy=True),
        Target("segment", ["run.yaml", "run", "collection", "data/ann.json"], yaml_files=["run.yaml"],
               folders=["run/retrieve"], argv=lambda w: ["segment", "--config", str(w / "run.yaml")], heavy=True),
        Target("build-pool", ["run.yaml", "run", "collection", "data/ann.json"], yaml_files=["run.yaml"],
               folders=["run/segment", "run/retrieve"], argv=lambda w: [
                   "build-pool", "--config", str(w / "run.yaml"), "--out", str(w / "out/built"), "--fresh"],
               heavy=True),
    ]


# ----------------------------------------------------------------------------- mutations
HUGE = [10**30, 2**63, -2**63 - 1, 1e308, 2**31, 10**9]
ODD = ["", "x" * 3, None, True, [], {}, [[]], {"a": [1]}, 0, -1, 0.5, -1e9]
NAN = float("nan")  # written as the token NaN (json) or .nan (yaml)
INF = float("inf")


def _nodes(obj, path=()):
    """Every (path, value) of a parsed json tree (breadth first, capped for big files)."""
    out, queue = [], [(path, obj)]
    while queue and len(out) < 4000:
        p, v = queue.pop(0)
        out.append((p, v))
        if isinstance(v, dict):
            queue.extend((p + (k,), x) for k, x in v.items())
        elif isinstance(v, list):
            queue.extend((p + (i,), x) for i, x in enumerate(v))
    return out


def _set(doc, path, value):
    if not path:
        return value
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    parent[path[-1]] = value
    return doc


def _delete(doc, path):
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    del parent[path[-1]]
    return doc


def mutate_tree(doc, rng: random.Random) -> tuple[object, str]:
    """One structural mutation of a parsed json / yaml document; returns (new document, description)."""
    doc = copy.deepcopy(doc)
    nodes = _nodes(doc)
    leaves = [(p, v) for p, v in nodes if p and not isinstance(v, (dict, list))]
    path, value = rng.choice(leaves if leaves and rng.random() < 0.7 else nodes)
    op = rng.choice(["huge", "negative", "nan", "type", "type", "delete", "nest", "unnest", "dup", "empty"])
    where = "/".join(map(str, path)) or "<top>"
    if op == "huge":
        new = rng.choice(HUGE)
    elif op == "negative":
        new = -abs(value) - 1 if isinstance(value, (int, float)) and not isinstance(value, bool) else -rng.randint(
            1, 10**6)
    elif op == "nan":
        new = rng.choice([NAN, INF])
    elif op == "type":
        new = rng.choice(ODD + [str(value)[:20], [value]])
    elif op == "delete" and path:
        return _delete(doc, path), f"delete {where}"
    elif op == "nest":
        new = [value] if rng.random() < 0.5 else {"value": value}
    elif op == "unnest" and isinstance(value, (list, dict)) and value:
        new = next(iter(value.values())) if isinstance(value, dict) else value[0]
    elif op == "dup" and isinstance(value, list) and value:
        new = value + [copy.deepcopy(value[rng.randrange(len(value))])]
    elif op == "empty":
        new = type(value)() if isinstance(value, (list, dict, str)) else None
    else:
        new = rng.choice(ODD)
    return _set(doc, path, new), f"{op} {where} -> {_short(new)}"


def _short(v) -> str:
    text = repr(v)
    return text if len(text) < 40 else text[:37] + "..."


def _dumps_json(doc) -> str:
    return json.dumps(doc)


def _dumps_yaml(doc) -> str:
    return yaml.safe_dump(doc, sort_keys=False)


def mutate_file(path: Path, kind: str, rng: random.Random) -> str:
    """Mutate a json / yaml file in place; returns a description."""
    text = path.read_text()
    r = rng.random()
    if r < 0.12:
        cut = rng.randrange(len(text) + 1)
        path.write_text(text[:cut])
        return f"truncate {path.name} at {cut}/{len(text)}"
    if r < 0.16:
        path.write_bytes(b"\xff\xfe\x00garbage" if rng.random() < 0.5 else b"")
        return f"garbage/empty {path.name}"
    doc = json.loads(text) if kind == "json" else yaml.safe_load(text)
    steps = 1 if rng.random() < 0.8 else rng.randint(2, 4)
    said = []
    for _ in range(steps):
        doc, what = mutate_tree(doc, rng)
        said.append(what)
    path.write_text(_dumps_json(doc) if kind == "json" else _dumps_yaml(doc))
    return f"{path.name}: " + "; ".join(said)


def mutate_folder(folder: Path, rng: random.Random) -> str:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    if not files:
        return f"{folder.name}: empty"
    victim = rng.choice(files)
    op = rng.choice(["delete", "truncate", "empty", "flip", "dir"])
    data = victim.read_bytes()
    if op == "delete":
        victim.unlink()
    elif op == "truncate":
        victim.write_bytes(data[: rng.randrange(max(1, len(data)))])
    elif op == "empty":
        victim.write_bytes(b"")
    elif op == "flip" and data:
        b = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        victim.write_bytes(bytes(b))
    else:
        victim.unlink()
        victim.mkdir()
        op = "dir"
    return f"{op} {victim.relative_to(folder.parent)}"


# ----------------------------------------------------------------------------- one bounded run
def _mapped_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def run_bounded(argv: list[str], logs: Path, timeout: float) -> tuple[int | str, str]:
    """`main(argv)` in a forked child: (exit status, or 'hang' / 'signal N'; stdout + stderr)."""
    out_path = logs / "output.txt"
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 99
        try:
            fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            sys.stdout = open(1, "w", closefd=False, buffering=1)
            sys.stderr = open(2, "w", closefd=False, buffering=1)
            limit = _mapped_bytes() + MEMORY_HEADROOM
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            # relative paths a mutation leaves (a deleted run_dir key -> 'xpaste_run', a string value -> a
            # folder name) land in the case's own folder, never in the checkout
            os.chdir(logs)
            code = main(argv)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:  # noqa: BLE001 - reported as a traceback, the failure this test looks for
            traceback.print_exc()
            code = 98
        finally:
            with_flush = [sys.stdout, sys.stderr]
            for s in with_flush:
                try:
                    s.flush()
                except Exception:  # noqa: BLE001
                    pass
            os._exit(code if isinstance(code, int) and 0 <= code < 256 else 97)
    deadline = time.monotonic() + timeout
    status: int | str
    while True:
        done, raw = os.waitpid(pid, os.WNOHANG)
        if done:
            status = os.waitstatus_to_exitcode(raw)
            if status < 0:
                status = f"signal {signal.Signals(-status).name}"
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            status = "hang"
            break
        time.sleep(0.005)
    text = out_path.read_text(errors="replace") if out_path.exists() else ""
    return status, text


def judge(status, text: str, target: Target, work: Path) -> str | None:
    """None when the case ended right; else what went wrong."""
    if "Traceback" in text or "MemoryError" in text:
        return "traceback"
    if status == 0:
        for rel in target.outputs:
            p = work / rel
            if p.exists():
                try:
                    doc = json.loads(p.read_text(), parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
                except ValueError as e:
                    return f"exit 0 but {rel} is not valid json ({e})"
                if rel == "out/eval.json":  # AP values: in [0, 1], or -1 where nothing was there to score
                    bad = [(k, v) for run in doc["runs"] for k, v in run.items()
                           if k.startswith("AP") and not (v == -1 or 0 <= v <= 1)]
                    if bad:
                        return f"exit 0 with AP values out of range: {bad}"
        return None
    if status != 2:
        return f"exit {status}"
    errors = [line for line in text.splitlines() if line.startswith(("xpaste: error", "Error: "))]
    if len(errors) != 1:
        return f"exit 2 with {len(errors)} error lines"
    return None


# ----------------------------------------------------------------------------- the tests
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzzcli")
    work = root / "w"
    build_world(work)
    pristine = root / "pristine"
    shutil.copytree(work, pristine, symlinks=True)
    # imported once here, so that each forked case does not import them again
    import pyarrow.parquet  # noqa: F401
    import pycocotools.cocoeval  # noqa: F401

    from xpaste.evaluate.metrics import _import_lvis

    _import_lvis()
    for optional in ("matplotlib.pyplot", "ultralytics"):
        try:
            __import__(optional)
        except Exception:  # noqa: BLE001 - the command then says what is missing, in one line
            pass
    return root, work, pristine


def _restore(target: Target, work: Path, pristine: Path) -> None:
    if work.exists():
        shutil.rmtree(work)
    work.mkdir()
    for rel in target.reads:
        src, dst = pristine / rel, work / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, symlinks=True)
        else:
            shutil.copy2(src, dst)
    (work / "out").mkdir(exist_ok=True)


def fuzz_command(target: Target, world, cases: int, seed: int, version: str) -> list[str]:
    root, work, pristine = world
    for module in target.preload:
        try:
            __import__(module)
        except Exception:  # noqa: BLE001 - the command then says what is missing, in one line
            pass
    logs = root / "logs"
    logs.mkdir(exist_ok=True)
    rng = random.Random(f"{seed}:{target.name}")
    problems = []
    for i in range(cases):
        _restore(target, work, pristine)
        kinds = [("json", f) for f in target.json_files] + [("yaml", f) for f in target.yaml_files] + [
            ("folder", f) for f in target.folders]
        kind, rel = rng.choice(kinds)
        what = mutate_folder(work / rel, rng) if kind == "folder" else mutate_file(work / rel, kind, rng)
        argv = target.argv(work)
        start = time.monotonic()
        status, text = run_bounded(argv, logs, CASE_TIMEOUT_S)
        wrong = judge(status, text, target, work)
        COUNTS.setdefault(version, {}).setdefault(target.name, 0)
        COUNTS[version][target.name] += 1
        if wrong:
            tail = "\n".join(text.strip().splitlines()[-6:])
            problems.append(f"case {i} ({what}): {wrong} after {time.monotonic() - start:.1f} s\n{tail}")
    return problems


NAMES = [t.name for t in targets()]


@pytest.mark.parametrize("name", NAMES)
def test_fuzz_cli_inputs(world, name):
    target = next(t for t in targets() if t.name == name)
    cases = max(4, FAST_CASES // 2) if target.heavy else FAST_CASES
    problems = fuzz_command(target, world, cases, seed=20, version="fast")
    assert not problems, "\n\n".join(problems[:5])


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_fuzz_cli_inputs_soak(world, name):
    target = next(t for t in targets() if t.name == name)
    problems = fuzz_command(target, world, SLOW_CASES, seed=int(os.environ.get("XPASTE_FUZZ_CLI_SEED", "1")),
                            version="slow")
    assert not problems, "\n\n".join(problems[:5])


@pytest.fixture(scope="module", autouse=True)
def _report_counts(tmp_path_factory, request):
    yield
    if not COUNTS:
        return
    path = tmp_path_factory.getbasetemp() / "fuzz_cli_counts.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    for version, per in COUNTS.items():
        old.setdefault(version, {}).update(per)
    path.write_text(json.dumps(old, indent=1, sort_keys=True))
    lines = [f"{version}: " + ", ".join(f"{k} {v}" for k, v in sorted(per.items())) for version, per in COUNTS.items()]
    message = f"xpaste fuzz (CLI inputs), mutations tried per command: {' | '.join(lines)} (also in {path})"
    if not request.config.pluginmanager.has_plugin("xpaste-fuzz-cli-summary"):  # shown at the session's end
        request.config.pluginmanager.register(_Summary(message), "xpaste-fuzz-cli-summary")


class _Summary:
    """Writes the counts in pytest's terminal summary (xdist workers have none: the json file holds them)."""

    def __init__(self, message: str):
        self.message = message

    def pytest_terminal_summary(self, terminalreporter):
        terminalreporter.write_line(self.message)
