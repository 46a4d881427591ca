"""Deprecated alias: `xpaste.pipeline.acquire` moved to `xpaste.stages.generate` and `xpaste.stages.retrieve`
(one module a stage, issue 17)."""
from xpaste._moved import moved

__getattr__ = moved(__name__, "xpaste.stages.generate", "xpaste.stages.retrieve", "xpaste.stages.candidates")
