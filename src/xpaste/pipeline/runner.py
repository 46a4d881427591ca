"""Run a sharded stage: plan the work, skip finished shards, process the rest locally or on Ray.

A stage's work list is a deterministic function of its config and inputs, cut into fixed-size shards
(`ShardPlan`, computed lazily: a huge plan is never listed). A shard's outputs (images, masks, then the
shard table) are written atomically, so after a kill a rerun redoes only unfinished shards and ends with
exactly the outputs of an uninterrupted run. The stage's fingerprint (its options, a digest of each
input and of the upstream stages' outputs) is recorded in `<stage>/stage.json`; once the stage has produced
a shard, resuming with a different one is refused in one line naming what changed, or redone from scratch
with `fresh` (before that, e.g. after a model failed to load, the next run's record replaces it); a change
that only adds work (`Stage.extend`: segment's added segmenter or candidates, score's added masks,
`xpaste.stages.additions`; generate's and retrieve's rounds) keeps the finished shards and runs the new work
in shards of its own (`PartedPlan`). Engines: this process, forked worker processes
(`engines.run_on_processes`) or Ray actors (`engines.run_on_ray`); all write the same files.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from xpaste.errors import XPasteError
from xpaste.fingerprint import digest, first_difference, outputs_digest
from xpaste.io import read_json, write_json_atomic
from xpaste.jobs import JobReport
from xpaste.pipeline import engines
from xpaste.pipeline.engines import ENGINES
from xpaste.pipeline.rundir import RunDir
from xpaste.pipeline.shards import clean_temp_files, read_skipped, read_stage, shard_path
from xpaste.typed import Section, key_field

#: numpy, Arrow and the shard tables hold counts, ids and seeds as int64
INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class RunSettings(Section):
    """Where and how a job runs: the run-wide keys of `xpaste run`'s config (`PipelineConfig` extends this
    section) and the engine options of `xpaste augment`, declared once."""

    run_dir: str = key_field("xpaste_run", "run folder", flag="--run")
    engine: str = key_field("local", "where stages run", choices=ENGINES)
    ray_address: Optional[str] = key_field(None, "Ray cluster address (engine ray); null starts a local Ray")
    shard_size: int = key_field(32, "work items per shard (the unit of resume)", lo=1, hi=INT64_MAX, cli=False)
    workers: int = key_field(1, "processes for engine local (the output does not depend on it)", lo=1, hi=INT64_MAX)
    device: Optional[str] = key_field(None, "cuda | cpu | cuda:1 ... (default: cuda when available)")


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

    # ------------------------------------------------------------------ resume and fingerprint hooks
    change_labels: dict[str, str] = {}  # fingerprint key -> words for the one-line "X changed" refusal
    #: stages (folders of the run) whose outputs this stage reads: their outputs' digests are part of the
    #: record, so a rerun after an upstream stage was redone (e.g. `generate --fresh`) is refused or redone
    upstream: tuple[str, ...] = ()
    reads_rows_at_end = True  # run_stage counts the rows of all shards (a stage with huge outputs opts out)

    @property
    def output_root(self) -> Path:
        """The folder a refusal names (the run folder; augment: its --out)."""
        return self.run_dir

    def upstream_digests(self) -> dict[str, str]:
        """{upstream stage: digest of its shard tables} (`outputs_digest`)."""
        return {name: outputs_digest(self.run_dir / name) for name in self.upstream}

    def started(self) -> bool:
        """Whether the stage has produced anything yet (a shard table exists). Until then its recorded settings
        bind nothing: a run that failed before its first shard (a model that does not load) locks nothing."""
        return self.stage_dir.exists() and any(self.stage_dir.glob("shard-*.parquet"))

    def is_done(self, k: int) -> bool:
        """Shard k's outputs exist and are complete (default: its shard file, written last, exists)."""
        return shard_path(self.stage_dir, k).exists()

    def temp_folders(self) -> list[Path]:
        """Folders besides the stage folder where a killed run may leave temp files."""
        return []

    def extend(self, previous: dict, record: dict, plan: ShardPlan) -> tuple[ShardPlan, dict] | None:
        """A started stage whose record differs from this run's: when the difference only ADDS work (segment:
        an added segmenter or added candidates; score: added masks), the plan to run (earlier shards kept, new
        shards for the added work) and the record to keep; None (the default) when it is a change, refused by
        `check_fingerprint`."""
        return None

    def remove_outputs(self) -> None:
        """Delete this stage's outputs (`--fresh`)."""
        import shutil

        if self.stage_dir.exists():
            shutil.rmtree(self.stage_dir)

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
    items_resumed: int = 0
    rows: int = 0
    skipped: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        return (f"{self.stage}: {self.items} items in {self.shards} shards ({self.shards_resumed} already done), "
                f"{self.rows} rows, {len(self.skipped)} skipped, {self.seconds:.1f} s")


class ShardPlan:
    """A stage's work items cut into fixed-size shards, computed on demand: `plan[k]` is shard k's item list.

    `items` is a list, or a lazy sequence with `__len__`, slicing and a `digest()` (e.g. augment's
    (image, copy) tasks), so a huge plan is never materialised. Picklable: engines ship it to workers.
    """

    def __init__(self, items, size: int):
        if int(size) < 1:
            raise XPasteError(f"shard_size must be at least 1, got {size!r}")
        self.items, self.size = items, int(size)

    def __len__(self) -> int:
        return (len(self.items) + self.size - 1) // self.size

    def __getitem__(self, k: int) -> list[dict]:
        if not 0 <= k < len(self):
            raise IndexError(k)
        return list(self.items[k * self.size : (k + 1) * self.size])

    def digest(self) -> str:
        return self.items.digest() if hasattr(self.items, "digest") else digest(self.items)


class PartedPlan(ShardPlan):
    """Several work lists, each cut into its own shards, numbered one after the other: a stage that extends its
    work (segment: an added segmenter or added candidates, `Stage.extend`) keeps the shards of the earlier parts
    as they were and adds shards for the new part only. `items` is every part's items in order."""

    def __init__(self, parts: list[list[dict]], size: int):
        super().__init__([item for part in parts for item in part], size)
        self.parts = [list(part) for part in parts]
        self.starts, k = [], 0  # the first shard of each part
        for part in self.parts:
            self.starts.append(k)
            k += (len(part) + self.size - 1) // self.size
        self._shards = k

    def __len__(self) -> int:
        return self._shards

    def __getitem__(self, k: int) -> list[dict]:
        if not 0 <= k < self._shards:
            raise IndexError(k)
        i = max(j for j, start in enumerate(self.starts) if start <= k and self.parts[j])
        j = k - self.starts[i]
        return list(self.parts[i][j * self.size : (j + 1) * self.size])

    def shards_of(self, i: int) -> range:
        """The shard indices of part i."""
        return range(self.starts[i], self.starts[i] + (len(self.parts[i]) + self.size - 1) // self.size)


def describe_change(stage: Stage, path: tuple, old: Any, new: Any) -> str:
    """One line naming what changed, from the stage's `change_labels` ({first key: 'the dataset json'})."""
    labels = getattr(stage, "change_labels", {})
    key = path[1] if len(path) > 1 and path[0] == "fingerprint" else path[0] if path else "?"
    if key in labels:
        return f"{labels[key]} changed since this output was started"
    if path and path[0] == "upstream":
        which = f"stage '{path[1]}'" if len(path) > 1 else "the upstream stages"
        return f"the outputs of {which} changed since this output of stage '{stage.name}' was started (it was rerun)"
    if path and path[0] in ("items", "items_digest"):
        return f"the work list of stage '{stage.name}' changed since it was started (its inputs changed)"
    name = ".".join(str(p) for p in path[1:] if p not in ("options",)) or str(key)
    return f"setting {name} changed since this output was started ({old!r}, now {new!r})"


def check_fingerprint(stage: Stage, plan: ShardPlan | list[dict], fresh: bool = False) -> ShardPlan | list[dict]:
    """Refuse to resume a stage whose outputs were made with other settings or other inputs, in one line
    naming what changed (`describe_change`); with `fresh`, remove the stage's outputs and start over.
    Returns the plan to run: `plan`, or the extended plan of a stage whose change only adds work
    (`Stage.extend`: segment with an added segmenter runs the new segmenter only).

    The record (options, work list, upstream outputs) binds only once the stage has produced something
    (`Stage.started`): a run that failed before its first shard, e.g. on a model that does not load, is
    replaced by the next run's record instead of refusing it."""
    n_items = len(plan.items) if isinstance(plan, ShardPlan) else len(plan)
    items_digest = plan.digest() if isinstance(plan, ShardPlan) else digest(plan)
    record = {"fingerprint": stage.fingerprint(), "items": n_items, "items_digest": items_digest}
    if stage.upstream:
        record["upstream"] = stage.upstream_digests()
    record = json.loads(json.dumps(record, default=str))
    path = stage.stage_dir / "stage.json"
    if fresh:
        stage.remove_outputs()
    if path.exists():
        previous = read_json(path)
        # the upstream outputs first: a rerun upstream is the cause when the work list changed with them
        change = (first_difference({"upstream": previous.get("upstream")}, {"upstream": record.get("upstream")})
                  or first_difference(previous, record))
        if change is None:
            return plan
        if stage.started():
            extended = stage.extend(previous, record, plan) if isinstance(plan, ShardPlan) else None
            if extended is None:
                raise XPasteError(describe_change(stage, *change), stage.output_root,
                                  "rerun with the same inputs and options to resume, or pass --fresh to start over")
            plan, record = extended[0], json.loads(json.dumps(extended[1], default=str))
            if record == previous:
                return plan
    write_json_atomic(path, record, indent=1)
    return plan


def chunk(items: list[dict], size: int) -> list[list[dict]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def run_stage(stage: Stage, engine: str = "local", progress: bool = True, fresh: bool = False,
              ray_address: str | None = None, workers: int = 1) -> StageReport:
    """Run the unfinished shards of `stage` on the engine `engines.select_engine(engine, workers)` picks: this
    process (engine 'local', workers 1), `workers` forked processes (engine 'local', workers > 1) or Ray
    actors (engine 'ray'); all write the same files.
    Raises XPasteError when the inputs changed since the stage was started (see `check_fingerprint`);
    KeyboardInterrupt and OSError pass through after the workers are stopped (finished shards are kept)."""
    if engine not in ENGINES:  # checked before anything is written
        raise XPasteError(f"engine must be one of {', '.join(map(repr, ENGINES))}, got {engine!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise XPasteError(f"workers must be an integer >= 1, got {workers!r}")
    start = time.perf_counter()
    plan = check_fingerprint(stage, ShardPlan(stage.plan(), int(stage.config["shard_size"])), fresh)
    clean_temp_files(stage.stage_dir, *stage.temp_folders())
    report = StageReport(stage.name, len(plan.items), len(plan))

    def todo():  # lazily: a huge plan is never listed
        for k in range(len(plan)):
            if stage.is_done(k):
                report.shards_resumed += 1
                report.items_resumed += len(plan[k])
            else:
                yield k

    run = engines.select_engine(engine, workers)  # looked up now: benchmarks may wrap an engine
    run(stage, plan, todo(), workers=workers, ray_address=ray_address, options=stage.config.get("ray"),
        progress=progress, resumed=lambda: report.items_resumed)
    if stage.reads_rows_at_end:
        report.rows = read_stage(stage.stage_dir, stage.schema()).num_rows
    report.skipped = read_skipped(stage.stage_dir)
    report.seconds = time.perf_counter() - start
    return report


def as_dict(config: Any) -> dict:
    """Stages read plain nested dicts: a `PipelineConfig` becomes its `to_dict()`; a dict stays as it is."""
    return config.to_dict() if hasattr(config, "to_dict") else config


def run_sharded_job(stage_cls: type[Stage], config: Any, fresh: bool = False, progress: bool = True) -> JobReport:
    """The job of a sharded stage (generate, retrieve, segment, score): build `stage_cls(run_dir, config)`
    (it checks its inputs first), run its unfinished shards on the configured engine (`run_stage`), record the
    invocation in RUN/config.yaml once the stage has started, and return its `JobReport`.

    config: a `PipelineConfig` or its `to_dict()`. Raises what `run_stage` raises."""
    cfg = as_dict(config)
    run = RunDir(cfg["run_dir"])
    run.check_output(cfg)  # before the stage checks its inputs or loads anything
    stage = stage_cls(run.root, cfg)
    try:
        report = run_stage(stage, engine=cfg["engine"], fresh=fresh, ray_address=cfg["ray_address"],
                           progress=progress, workers=cfg.get("workers", 1))
    finally:  # recorded once the stage started (its inputs passed the checks), even if it then failed
        if run.stage_dir(stage.name).exists():
            run.record_invocation(stage.name, cfg)
    counts = {"items": report.items, "shards": report.shards, "shards resumed": report.shards_resumed,
              "rows": report.rows}
    return JobReport(stage.name, str(run.stage_dir(stage.name)), counts, list(report.skipped), report.seconds)
