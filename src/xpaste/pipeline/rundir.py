"""The run folder: one object (`RunDir`) owns its layout; image/mask file I/O for the stages.

Layout of a run folder (every file written atomically, `xpaste.io.atomic_path`):
    config.yaml            the resolved config of every invocation, oldest first: one YAML document each, headed
                           `--- # N: xpaste <command>, <UTC time>` (`load_config` reads the last one)
    run.json               the last 50 invocations (command, library versions)
    categories.json        the run's categories, recorded on first use (later runs must agree)
    <stage>/               generate, retrieve, segment, score: shard-*.parquet (+ .skipped.json), stage.json
    images/, masks/        the stages' image and mask files (paths in the shards are relative to the run)
    build_pool/            decisions.parquet, summary.json (the latest build), stage-<pool>.json (one per pool)
    pool/                  the instance pool (unless build_pool.out names another folder)
    augmented/             images/ + annotations.json when augment is enabled (unless augment.out is set)
"""
from __future__ import annotations

import logging
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

import numpy as np

from xpaste.categories import categories_from_rows, categories_to_rows, load_categories, select_categories
from xpaste.errors import XPasteError
from xpaste.imageio import read_mask, read_rgb
from xpaste.io import (check_output, read_json, resolve_inside, write_bytes_atomic, write_image_atomic,
                       write_json_atomic)

log = logging.getLogger(__name__)

CATEGORIES_FILE = "categories.json"
CONFIG_FILE = "config.yaml"
HISTORY_FILE = "run.json"
#: The first lines of config.yaml (comments: every document stays a config `load_config` reads).
CONFIG_HEADER = ("# The settings of every xpaste command run in this folder, oldest first: one YAML document each.\n"
                 "# `xpaste run RUN/config.yaml` (and load_config) reads the last one.\n")
#: What a run writes at its top level (see the module docstring): `RunDir.check_output` refuses other entries.
RUN_ENTRIES = (CONFIG_FILE, HISTORY_FILE, CATEGORIES_FILE, "generate", "retrieve", "segment", "score", "build_pool",
               "images", "masks", "pool", "augmented")
#: What marks a folder as a started run (the history, a stage's record, build-pool's records): its own to resume.
RUN_MARKERS = (HISTORY_FILE, "generate/stage.json", "retrieve/stage.json", "segment/stage.json", "score/stage.json",
               "build_pool")
VERSIONED_PACKAGES = ("xpaste", "numpy", "torch", "diffusers", "transformers", "open_clip_torch", "rembg",
                      "opencv-python-headless", "pyarrow", "ray")


def versions() -> dict:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


class RunDir:
    """A run folder and the paths of everything in it (see the module docstring)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    def stage_dir(self, stage: str) -> Path:
        """Folder of a stage's shards: 'generate', 'retrieve', 'segment', 'score', 'build-pool' -> build_pool."""
        return self.root / stage.replace("-", "_")

    @property
    def decisions_file(self) -> Path:
        """build-pool's decision per candidate (Parquet): what marks a folder as a pipeline run for `report`."""
        return self.stage_dir("build-pool") / "decisions.parquet"

    @property
    def build_summary_file(self) -> Path:
        return self.stage_dir("build-pool") / "summary.json"

    @property
    def default_pool_dir(self) -> Path:
        return self.root / "pool"

    def pool_dir(self, config: dict) -> Path:
        """The pool build-pool writes: `build_pool.out`, else RUN/pool."""
        out = config["build_pool"]["out"]
        return Path(out) if out else self.default_pool_dir

    def augmented_dir(self, config: dict) -> Path:
        """The augmented dataset `xpaste run` writes when augment is enabled: `augment.out`, else RUN/augmented."""
        out = config["augment"]["out"]
        return Path(out) if out else self.root / "augmented"

    def check_output(self, config: dict | None = None, what: str = "the run folder (--run, run_dir)") -> None:
        """The run folder can hold a run (`xpaste.io.check_output`): not a file, not under one, and holding
        nothing but run outputs (`RUN_ENTRIES`, and the pool or augmented folders the config names inside it),
        unless a run was started there (`RUN_MARKERS`: then files beside it, e.g. a second pool, are the user's
        business). XPasteError otherwise; writes nothing."""
        extra = []
        if config is not None:
            root = Path(os.path.abspath(self.root))
            for key, folder in (("build_pool", self.pool_dir), ("augment", self.augmented_dir)):
                if key in config:
                    target = Path(os.path.abspath(folder(config)))
                    if target.parent == root:
                        extra.append(target.name)
        check_output(self.root, writes=RUN_ENTRIES + tuple(extra), what=what, own=RUN_MARKERS)

    @property
    def categories_file(self) -> Path:
        return self.root / CATEGORIES_FILE

    def path(self, rel: str, what: str = "path") -> Path:
        """A path inside the run from a relative path stored in a shard; refuses anything escaping the run."""
        return resolve_inside(self.root, rel, what)

    def record_invocation(self, command: str, config: dict) -> None:
        """Append the resolved config of this invocation to config.yaml (every command's settings, in order,
        one YAML document each) and its library versions to run.json (the last 50)."""
        import time

        import yaml

        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / CONFIG_FILE
        earlier = path.read_bytes() if path.exists() else b""
        if earlier and not earlier.startswith(CONFIG_HEADER.encode()):  # a single config written by an older xpaste
            earlier = CONFIG_HEADER.encode() + b"--- # 1: (an earlier xpaste)\n" + earlier
        elif not earlier:
            earlier = CONFIG_HEADER.encode()
        n = sum(1 for line in earlier.decode("utf-8", "replace").splitlines() if line.startswith("--- # ")) + 1
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        document = yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
        write_bytes_atomic(path, earlier + f"--- # {n}: xpaste {command}, {when}\n{document}".encode())
        history_path = self.root / HISTORY_FILE
        history = read_json(history_path) if history_path.exists() else {"invocations": []}
        history["invocations"].append({"command": command, "versions": versions()})
        history["invocations"] = history["invocations"][-50:]
        write_json_atomic(history_path, history, indent=1)
        log.debug("%s: recorded the config of `%s` in %s", self.root, command, CONFIG_FILE)

    def categories(self, config: dict, check=None):
        """Categories of this run: from `categories.source` (recorded on first use) or from the run's record.

        Raises XPasteError when there are none, or when they differ from the ones the run started with.
        check: optional `check(categories)` of the calling stage, run before anything is recorded."""
        path = self.categories_file
        recorded = categories_from_rows(read_json(path)["categories"]) if path.exists() else None
        source = config["categories"]["source"]
        if source is None:
            if recorded is None:
                raise XPasteError("no categories for this run", self.root,
                                  "pass --categories (a COCO/LVIS json, a text file, or 'cat,dog')")
            if check is not None:
                check(recorded)
            return recorded
        select = config["categories"]["select"]
        cats = select_categories(load_categories(str(source)), list(select) if select else None, source)
        if check is not None:
            check(cats)  # a refused set leaves the run as it was: the corrected command is not refused
        if recorded is not None and categories_to_rows(recorded) != categories_to_rows(cats):
            raise XPasteError("this run was started with other categories", path,
                              "use a new --run folder, or the same categories")
        if recorded is None:
            self.root.mkdir(parents=True, exist_ok=True)
            write_json_atomic(path, {"categories": categories_to_rows(cats)}, indent=1)
        return cats

    def save_png(self, rel: str, array: np.ndarray) -> None:
        """Write an (H, W) uint8 mask or (H, W, 3) uint8 RGB image as PNG at run-relative `rel`, atomically."""
        write_image_atomic(self.path(rel, "output path"), array)

    def load_rgb(self, rel: str) -> np.ndarray:
        """(H, W, 3) uint8 RGB of a run-relative image, as displayed (`xpaste.imageio.read_rgb`); XPasteError if
        missing or unreadable."""
        return read_rgb(self.path(rel, "image path"))

    def load_mask(self, rel: str) -> np.ndarray:
        """(H, W) uint8 soft mask of a run-relative PNG (`xpaste.imageio.read_mask`); XPasteError if missing or
        unreadable."""
        path = self.path(rel, "mask path")
        try:
            return read_mask(path)
        except XPasteError:
            raise XPasteError("missing or unreadable mask", path, "rerun the segment stage with --fresh") from None


# Function forms used by the stage modules (each is the RunDir method of the same name).
def record_invocation(run_dir: Path, command: str, config: dict) -> None:
    RunDir(run_dir).record_invocation(command, config)


def resolve_categories(run_dir: Path, config: dict, check=None):
    return RunDir(run_dir).categories(config, check)


def save_png(run_dir: Path, rel: str, array: np.ndarray) -> None:
    RunDir(run_dir).save_png(rel, array)


def load_rgb(run_dir: Path, rel: str) -> np.ndarray:
    return RunDir(run_dir).load_rgb(rel)


def load_mask(run_dir: Path, rel: str) -> np.ndarray:
    return RunDir(run_dir).load_mask(rel)
