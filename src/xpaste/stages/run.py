"""The Python entry points of the pipeline: `run_pipeline(config)` runs the enabled stages in order;
`run_stage_job(name, config)` runs one. Each returns a `xpaste.jobs.JobReport`. `with_plan(config, plan)` is
the config of `xpaste run CONFIG --plan PLAN`: the plan given to generate and retrieve, whichever are enabled.
After a planned round (or an added segmenter) segment and score run only the added work; build-pool, one pass,
is rebuilt over every candidate (`redo_after_round`)."""
from __future__ import annotations

import logging
import os
import time
from typing import Any

from xpaste.errors import XPasteError
from xpaste.fingerprint import first_difference, outputs_digests
from xpaste.io import read_json
from xpaste.jobs import JobReport
from xpaste.pipeline.rundir import RunDir
from xpaste.pipeline.runner import as_dict
from xpaste.stages import STAGES, stage_module

log = logging.getLogger(__name__)


def run_stage_job(name: str, config: Any, fresh: bool = False, progress: bool = True) -> JobReport:
    """Run stage `name` (a key of `xpaste.stages.STAGES`) in `config.run_dir`, resuming its finished work;
    `fresh` redoes it (augment: its own `fresh` is not offered here), as does build-pool after the stages it
    reads took in added work (`redo_after_round`). Raises XPasteError for an unknown name."""
    if name not in STAGES:
        raise XPasteError(f"unknown stage {name!r}", hint=f"choose one of {', '.join(STAGES)}")
    module = stage_module(name)
    if name == "augment":
        return module.run_job(config, progress=progress)
    if not fresh and redo_after_round(config, name):
        log.info("%s: rebuilt over every candidate (the stages before it took in added work)", name)
        fresh = True
    return module.run_job(config, fresh=fresh, progress=progress)


def make_stage(name: str, run_dir, config: Any):
    """The sharded `Stage` of `name` ('generate', 'retrieve', 'segment', 'score') for `run_dir`: the class is
    the one whose NAME module attribute is `name` (for benchmarks and tests that drive `run_stage` directly)."""
    from pathlib import Path

    if name not in STAGES or name in ("build-pool", "masks-from-boxes", "augment"):
        raise XPasteError(f"unknown sharded stage {name!r}", hint="choose one of generate, retrieve, segment, score")
    module = stage_module(name)
    cls = next(v for v in vars(module).values() if isinstance(v, type) and getattr(v, "name", None) == name)
    return cls(Path(run_dir), as_dict(config))


def build_pool_job(config: Any, progress: bool = True, fresh: bool = False) -> JobReport:
    """`run_stage_job('build-pool', ...)` (kept for callers of the earlier API)."""
    return run_stage_job("build-pool", config, fresh, progress)


def augment_job(config: Any, progress: bool = True) -> JobReport:
    """`run_stage_job('augment', ...)` (kept for callers of the earlier API)."""
    return run_stage_job("augment", config, False, progress)


def enabled_stages(config: Any) -> list[str]:
    """The stages `run_pipeline` runs: generate/retrieve when enabled, segment, score unless score.clip is
    null (the pool is then built without CLIP scores), build-pool, and augment when enabled."""
    cfg = as_dict(config)
    names = [n for n in ("generate", "retrieve") if cfg[n]["enabled"]] + ["segment"]
    if cfg["score"]["clip"] is not None:
        names.append("score")
    return names + ["build-pool"] + (["augment"] if cfg["augment"]["enabled"] else [])


def with_plan(config: Any, plan: str | os.PathLike) -> dict:
    """The config dict of `config` with `plan` (an `xpaste plan` json) as `generate.plan` and `retrieve.plan`,
    for whichever of the two is enabled: each then makes a planned round (the plan's `generate` images per
    category, added to the run's earlier rounds; `xpaste.stages.candidates`). XPasteError in one line when
    neither is enabled, or when retrieve reads a labelled folder (taken whole: no count to plan)."""
    cfg = as_dict(config)
    enabled = [n for n in ("generate", "retrieve") if cfg[n]["enabled"]]
    if not enabled:
        raise XPasteError("--plan gives the images to make per category, but neither generate nor retrieve is "
                          "enabled in this config", plan, "set generate.enabled or retrieve.enabled to true")
    cfg = {**cfg, **{n: {**cfg[n], "plan": str(plan)} for n in enabled}}
    if "retrieve" in enabled:
        stage_module("retrieve").check_plan(cfg)
    return cfg


def redo_after_round(config: Any, name: str) -> bool:
    """Whether stage `name` is to be rebuilt from scratch, as `--fresh` would (`run_stage_job` does it, for
    `xpaste run` and `xpaste build-pool` alike). Only build-pool (one pass over every candidate), and only when
    the stages it reads took in added work since its pool was built (a planned round's candidates, an added
    segmenter: segment and score run only the added work, `xpaste.stages.additions`) and nothing else it
    records changed. "Only added" is their rule: the output digest of each upstream stage that the build
    recorded is that of a leading part of the stage's shards now (`fingerprint.outputs_digests`). False when
    nothing was added, for segment and score (they take added work in themselves), and when anything else
    changed (options, pool folder, real pool, an upstream stage redone): build-pool then refuses in one line."""
    if name != "build-pool":
        return False
    cfg = as_dict(config)
    run = RunDir(cfg["run_dir"])
    module = stage_module("build-pool")
    out = run.pool_dir(cfg)
    path = module.record_path(run.root, out)
    if not path.exists():
        return False
    previous = read_json(path)
    try:
        record = module.build_fingerprint(run.root, cfg, module.apply_preset(cfg["build_pool"]), out)
    except XPasteError:
        return False  # build-pool says why, in one line
    old, now = previous.get("upstream") or {}, record["upstream"]
    if old == now or first_difference({**previous, "upstream": None}, {**record, "upstream": None}) is not None:
        return False
    return all(n in old and old[n] in outputs_digests(run.stage_dir(n)) for n in now)


def check_outputs(config: Any) -> None:
    """Every output folder of the enabled stages can be written (`xpaste.io.check_output`): the run folder, the
    pool and, when augment is enabled, the augmented dataset's folder. XPasteError naming the first that cannot,
    before any stage runs (each stage checks its own again)."""
    cfg = as_dict(config)
    RunDir(cfg["run_dir"]).check_output(cfg)
    stage_module("build-pool").check_outputs(cfg["run_dir"], cfg)
    if cfg["augment"]["enabled"]:
        stage_module("augment").check_out(RunDir(cfg["run_dir"]).augmented_dir(cfg), "augment.out")


def run_pipeline(config: Any, progress: bool = True, plan: str | os.PathLike | None = None) -> JobReport:
    """Run the enabled stages in order (see `enabled_stages`), each resumable; returns a 'run' JobReport whose
    parts are the stages' reports and whose out and counts are the last stage's (the pool, or augment's).

    config: a `PipelineConfig` (or its `to_dict()`). plan: an `xpaste plan` json for generate and retrieve
    (`with_plan`; the config's own `generate.plan` / `retrieve.plan` otherwise). Raises XPasteError (a stage's
    inputs changed since it was started, missing inputs, a plan of other categories), OSError (disk full, ...)
    and KeyboardInterrupt; finished shards are kept."""
    start = time.perf_counter()
    cfg = as_dict(config) if plan is None else with_plan(config, plan)
    if cfg["retrieve"]["enabled"]:
        stage_module("retrieve").check_plan(cfg)  # before generate runs: a refusal leaves the run as it was
    check_outputs(cfg)
    parts = []
    for name in enabled_stages(cfg):
        log.info("== %s", name)
        part = run_stage_job(name, cfg, False, progress)  # build-pool: rebuilt after added work (redo_after_round)
        log.debug("%s", part.summary())
        parts.append(part)
    if cfg["score"]["clip"] is None:
        log.info("score: skipped (score.clip is null: the pool was built without CLIP scores)")
    last = parts[-1]  # the pool, or the augmented dataset when augment ran
    return JobReport("run", last.out, dict(last.counts), [f for p in parts for f in p.failures],
                     time.perf_counter() - start, parts)
