"""Deprecated alias: `xpaste.pipeline.stages` moved to `xpaste.stages.run` (one module a stage, issue 17)."""
from xpaste._moved import moved

__getattr__ = moved(__name__, "xpaste.stages.run", "xpaste.stages")
