"""The runner every sharded job uses: `runner` (the `Stage` contract, `run_stage`: shards, resume markers,
fingerprints), `engines` (this process, forked processes, Ray), `shards` (atomic shard tables), `rundir`
(the run folder's layout) and `determinism`. The stages themselves are `xpaste.stages` (one module each).

Python entry points of the pipeline, named here for convenience (their home is `xpaste.stages`):
    from xpaste.pipeline import PipelineConfig, load_config, run_pipeline
    report = run_pipeline(load_config("examples/pipeline.yaml", ["generate.per_category=8"]))
    print(report.summary())

Names are imported on first use, so `import xpaste.pipeline` stays light.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "PipelineConfig": "xpaste.stages.config",
    "ConfigError": "xpaste.typed",
    "load_config": "xpaste.stages.config",
    "run_pipeline": "xpaste.stages.run",
    "run_stage_job": "xpaste.stages.run",
    "build_pool_job": "xpaste.stages.run",
    "RunDir": "xpaste.pipeline.rundir",
    "JobReport": "xpaste.jobs",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'xpaste.pipeline' has no attribute {name!r}")
