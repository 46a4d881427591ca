"""Deprecated alias: `xpaste.pipeline.augment_stage` moved to `xpaste.stages.augment` (one module a stage, issue 17)."""
from xpaste._moved import moved

__getattr__ = moved(__name__, "xpaste.stages.augment", "xpaste.fingerprint", "xpaste.data.packed")
