"""The instance-generation pipeline: generate / retrieve -> segment -> score -> build-pool, in resumable shards.

Python entry points (the `xpaste run` command and the demo call these):
    from xpaste.pipeline import PipelineConfig, load_config, run_pipeline
    report = run_pipeline(load_config("examples/pipeline.yaml", ["generate.per_category=8"]))
    print(report.summary())

Names are imported on first use, so `import xpaste.pipeline` stays light.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "PipelineConfig": "xpaste.pipeline.config",
    "ConfigError": "xpaste.pipeline.config",
    "load_config": "xpaste.pipeline.config",
    "run_pipeline": "xpaste.pipeline.stages",
    "run_stage_job": "xpaste.pipeline.stages",
    "build_pool_job": "xpaste.pipeline.stages",
    "RunDir": "xpaste.pipeline.rundir",
    "JobReport": "xpaste.jobs",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'xpaste.pipeline' has no attribute {name!r}")
