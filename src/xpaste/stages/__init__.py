"""The pipeline's stages, one module each: its config section, its `Stage` class (or, for build-pool, its
function) and its job, `run_job(config, ...) -> xpaste.jobs.JobReport`.

    generate    xpaste.stages.generate     text-to-image candidates (diffusers)
    retrieve    xpaste.stages.retrieve     candidates from a folder or a CLIP k-NN service
    segment     xpaste.stages.segment      a soft mask per (candidate, segmenter)
    score       xpaste.stages.score        a CLIP score per cut-out
    build-pool  xpaste.stages.build_pool   the X-Paste filter into an instance pool
    masks-from-boxes  xpaste.stages.masks_from_boxes  box-prompted masks for a box-only dataset (not in `run`)
    augment     xpaste.stages.augment      a COCO/LVIS dataset pasted with the pool

`xpaste.stages.config` composes their sections into `PipelineConfig`; `xpaste.stages.run.run_pipeline` runs
the enabled ones in order; the runner they share (shards, resume, engines) is `xpaste.pipeline`. To add a
stage: write its module with NAME, CLI_KEYS, HELP, its section and `run_job`, add its section to
`PipelineConfig` and its name here; the CLI command and the `run` config follow (docs/architecture.md).

Light on purpose: importing this package imports no stage module (`stage_module` does, on demand).
"""
from __future__ import annotations

import importlib
from types import ModuleType

#: Every stage, in pipeline order: command name -> module. `xpaste run` runs the enabled ones in this order
#: (`stages.run.enabled_stages`; masks-from-boxes, which prepares a dataset for augment, is a command only).
STAGES: dict[str, str] = {
    "generate": "xpaste.stages.generate",
    "retrieve": "xpaste.stages.retrieve",
    "segment": "xpaste.stages.segment",
    "score": "xpaste.stages.score",
    "build-pool": "xpaste.stages.build_pool",
    "masks-from-boxes": "xpaste.stages.masks_from_boxes",
    "augment": "xpaste.stages.augment",
}


def stage_module(name: str) -> ModuleType:
    """The module of stage `name` (a key of `STAGES`); KeyError for an unknown name."""
    return importlib.import_module(STAGES[name])
