"""Deprecated alias: `xpaste.pipeline.masks` moved to `xpaste.stages.segment` and `xpaste.stages.score`
(one module a stage, issue 17)."""
from xpaste._moved import moved

__getattr__ = moved(__name__, "xpaste.stages.segment", "xpaste.stages.score", "xpaste.stages.candidates")
