"""The stage registry and the Python entry points of the pipeline: `run_pipeline(config)` runs the enabled stages
in order; `run_stage_job` and `build_pool_job` run one. Each returns a `xpaste.jobs.JobReport`.

Stages are reached through registry strings ("module:Class") so that this module imports no stage module (and
no stage module imports it): no import cycles, and the CLI stays light until a stage runs.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from xpaste.jobs import JobReport

log = logging.getLogger(__name__)

#: name -> "module:Class" of the sharded stages (build-pool is a filter over their outputs, `build_pool_job`).
STAGES: dict[str, str] = {
    "generate": "xpaste.pipeline.acquire:GenerateStage",
    "retrieve": "xpaste.pipeline.acquire:RetrieveStage",
    "segment": "xpaste.pipeline.masks:SegmentStage",
    "score": "xpaste.pipeline.masks:ScoreStage",
}


def _as_dict(config: Any) -> dict:
    """Stages read plain nested dicts: a PipelineConfig becomes its `to_dict()`."""
    return config.to_dict() if hasattr(config, "to_dict") else config


def make_stage(name: str, run_dir: Path, config: Any):
    """Build the stage registered under `name` ('generate', 'retrieve', 'segment', 'score')."""
    import importlib

    from xpaste.errors import XPasteError

    if name not in STAGES:
        raise XPasteError(f"unknown stage {name!r}", hint=f"choose one of {', '.join(STAGES)}")
    module, cls = STAGES[name].split(":")
    return getattr(importlib.import_module(module), cls)(Path(run_dir), _as_dict(config))


def run_stage_job(name: str, config: Any, fresh: bool = False, progress: bool = True) -> JobReport:
    """Run one sharded stage in `config.run_dir` (resuming finished shards; `fresh` redoes it)."""
    from xpaste.pipeline.rundir import RunDir
    from xpaste.pipeline.runner import run_stage

    cfg = _as_dict(config)
    run = RunDir(cfg["run_dir"])
    stage = make_stage(name, run.root, cfg)  # checks the categories first
    try:
        report = run_stage(stage, engine=cfg["engine"], fresh=fresh, ray_address=cfg["ray_address"],
                           progress=progress, workers=cfg.get("workers", 1))
    finally:  # recorded once the stage started (its inputs passed the checks), even if it then failed
        if run.stage_dir(name).exists():
            run.record_invocation(name, cfg)
    counts = {"items": report.items, "shards": report.shards, "shards resumed": report.shards_resumed,
              "rows": report.rows}
    return JobReport(name, str(run.stage_dir(name)), counts, list(report.skipped), report.seconds)


def build_pool_job(config: Any, progress: bool = True, fresh: bool = False) -> JobReport:
    """Filter the run's scored cut-outs into the pool (`xpaste.pipeline.build_pool.build_pool`); a rerun with
    the same inputs resumes, one with changed inputs or options is refused unless `fresh` (rebuilt)."""
    from xpaste.pipeline.build_pool import build_pool
    from xpaste.pipeline.rundir import RunDir

    cfg = _as_dict(config)
    run = RunDir(cfg["run_dir"])
    run.record_invocation("build-pool", cfg)
    summary = build_pool(run.root, cfg, progress=progress, fresh=fresh)
    counts = {"candidates": summary["candidates"], "added": summary["added"]}
    counts.update({k: v for k, v in summary["decisions"].items() if k != "kept"})
    return JobReport("build-pool", summary["pool"], counts, [], float(summary.get("seconds", 0.0)))


def augment_job(config: Any, progress: bool = True) -> JobReport:
    """Augment `augment.dataset` with the pool build-pool wrote (`xpaste.augment.augment_dataset`), into
    `augment.out` (default RUN/augmented); options left out take augment_dataset's defaults."""
    from xpaste.augment import augment_dataset
    from xpaste.paste.config import PasteConfig
    from xpaste.pipeline.rundir import RunDir

    start = time.perf_counter()
    cfg = _as_dict(config)
    a, run = cfg["augment"], RunDir(cfg["run_dir"])
    out = run.augmented_dir(cfg)
    options = {k: a[k] for k in ("copies", "seed", "scale_prior", "image_format", "max_images") if a.get(k) is not None}
    report = augment_dataset(a["dataset"], a["images"], run.pool_dir(cfg), out, workers=cfg["workers"],
                             engine=cfg["engine"], ray_address=cfg["ray_address"], progress=progress,
                             paste=PasteConfig.from_dict(a["paste"]), **options)
    counts = {"images written": report.images_written, "images resumed": report.images_resumed,
              "annotations": report.annotations, "pasted": report.pasted}
    failures = [{"item": name, "reason": why} for name, why in report.failed]
    return JobReport("augment", str(out), counts, failures, time.perf_counter() - start)


def enabled_stages(config: Any) -> list[str]:
    """The stages `run_pipeline` runs: generate/retrieve when enabled, segment, score unless score.clip is
    null (the pool is then built without CLIP scores), build-pool, and augment when enabled."""
    cfg = _as_dict(config)
    names = [n for n in ("generate", "retrieve") if cfg[n]["enabled"]] + ["segment"]
    if cfg["score"]["clip"] is not None:
        names.append("score")
    return names + ["build-pool"] + (["augment"] if cfg["augment"]["enabled"] else [])


def run_pipeline(config: Any, progress: bool = True) -> JobReport:
    """Run the enabled stages in order (see `enabled_stages`), each resumable; returns a 'run' JobReport whose
    parts are the stages' reports and whose out and counts are the last stage's (the pool, or augment's).

    config: a `PipelineConfig` (or its `to_dict()`). Raises XPasteError (a stage's inputs changed since it was
    started, missing inputs), OSError (disk full, ...) and KeyboardInterrupt; finished shards are kept."""
    start = time.perf_counter()
    cfg = _as_dict(config)
    parts = []
    for name in enabled_stages(cfg):
        log.info("== %s", name)
        part = (build_pool_job(cfg, progress) if name == "build-pool" else augment_job(cfg, progress)
                if name == "augment" else run_stage_job(name, cfg, False, progress))
        log.debug("%s", part.summary())
        parts.append(part)
    if cfg["score"]["clip"] is None:
        log.info("score: skipped (score.clip is null: the pool was built without CLIP scores)")
    last = parts[-1]  # the pool, or the augmented dataset when augment ran
    return JobReport("run", last.out, dict(last.counts), [f for p in parts for f in p.failures],
                     time.perf_counter() - start, parts)
