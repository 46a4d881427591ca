"""Run a sharded stage: plan the work, skip finished shards, process the rest locally or on Ray.

A stage's work list is a deterministic function of its config and inputs, cut into fixed-size shards. A
shard's outputs (images, masks, then the shard table) are written atomically, so after a kill a rerun
redoes only unfinished shards and ends with exactly the outputs of an uninterrupted run. The config part
a stage depends on is recorded in `<stage>/stage.json`; resuming with a different one is refused.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xpaste.errors import XPasteError
from xpaste.io import read_json, write_json_atomic
from xpaste.pipeline.shards import clean_temp_files, read_skipped, shard_path, write_shard


class Stage:
    """Base class of the sharded stages. Models are built lazily in `setup` (inside the worker or actor that
    uses them) and never pickled: `__getstate__` drops them."""

    name = "stage"
    _model_attrs: tuple[str, ...] = ()

    def __init__(self, run_dir: Path, config: dict):
        self.run_dir = Path(run_dir)
        self.config = config

    @property
    def stage_dir(self) -> Path:
        return self.run_dir / self.name

    def schema(self):
        raise NotImplementedError

    def fingerprint(self) -> dict:
        raise NotImplementedError

    def plan(self) -> list[dict]:
        raise NotImplementedError

    def setup(self) -> None:
        """Build models; called before the first `process` in each process/actor."""

    def prepare(self) -> None:
        """Per-process set-up before any model work (reproducible kernels), then `setup`."""
        from xpaste.pipeline.determinism import configure_torch, restore_threads

        configure_torch()
        self.setup()
        restore_threads()

    def process(self, items: list[dict]) -> tuple[list[dict], list[dict]]:
        """Do one shard's work: (output rows, skipped [{'item': ..., 'reason': ...}])."""
        raise NotImplementedError

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        for attr in self._model_attrs:
            state[attr] = None
        return state


@dataclass
class StageReport:
    stage: str
    items: int = 0
    shards: int = 0
    shards_resumed: int = 0
    rows: int = 0
    skipped: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        return (f"{self.stage}: {self.items} items in {self.shards} shards ({self.shards_resumed} already done), "
                f"{self.rows} rows, {len(self.skipped)} skipped, {self.seconds:.1f} s")


def digest(values: list[Any]) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_fingerprint(stage: Stage, items: list[dict], fresh: bool = False) -> None:
    """Refuse to resume a stage whose outputs were made with other settings or other inputs."""
    record = {"fingerprint": stage.fingerprint(), "items": len(items), "items_digest": digest(items)}
    path = stage.stage_dir / "stage.json"
    if fresh and stage.stage_dir.exists():
        import shutil

        shutil.rmtree(stage.stage_dir)
    if path.exists():
        previous = read_json(path)
        if previous != json.loads(json.dumps(record, default=str)):
            raise XPasteError(f"stage '{stage.name}' was started with other settings or inputs", path,
                              "rerun with the same config, or pass --fresh to redo this stage")
    else:
        write_json_atomic(path, record, indent=1)


def chunk(items: list[dict], size: int) -> list[list[dict]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def run_stage(stage: Stage, engine: str = "local", progress: bool = True, fresh: bool = False,
              ray_address: str | None = None) -> StageReport:
    from tqdm import tqdm

    start = time.perf_counter()
    items = stage.plan()
    check_fingerprint(stage, items, fresh)
    clean_temp_files(stage.stage_dir)
    shards = chunk(items, int(stage.config["shard_size"]))
    todo = [k for k in range(len(shards)) if not shard_path(stage.stage_dir, k).exists()]
    report = StageReport(stage.name, len(items), len(shards), len(shards) - len(todo))
    if engine == "ray":
        from xpaste.pipeline.engines import run_on_ray

        run_on_ray(stage, shards, todo, ray_address=ray_address, progress=progress, options=stage.config.get("ray"))
    else:
        done = sum(len(shards[k]) for k in range(len(shards)) if k not in set(todo))
        with tqdm(total=len(items), initial=done, desc=stage.name, unit="item", disable=not progress) as bar:
            if todo:
                stage.prepare()
            for k in todo:
                rows, skipped = stage.process(shards[k])
                write_shard(stage.stage_dir, k, rows, stage.schema(), skipped)
                bar.update(len(shards[k]))
    from xpaste.pipeline.shards import read_stage

    report.rows = read_stage(stage.stage_dir, stage.schema()).num_rows
    report.skipped = read_skipped(stage.stage_dir)
    report.seconds = time.perf_counter() - start
    return report
