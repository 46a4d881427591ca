"""Deprecated alias: `xpaste.pipeline.config` moved to `xpaste.stages.config` (one module a stage, issue 17)."""
from xpaste._moved import moved

__getattr__ = moved(__name__, "xpaste.stages.config")
