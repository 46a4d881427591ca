"""Deprecated alias: `xpaste.pipeline.build_pool` moved to `xpaste.stages.build_pool` (one module a stage, issue 17)."""
from xpaste._moved import moved

__getattr__ = moved(__name__, "xpaste.stages.build_pool", "xpaste.stages.candidates")
