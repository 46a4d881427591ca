"""xpaste: scalable Copy-Paste augmentation for instance segmentation (X-Paste).

`import xpaste` stays light (numpy only). Heavier pieces (the pool, which reads Parquet, and the paste
transform, which uses OpenCV) are loaded on first attribute access.
"""
from __future__ import annotations

import importlib

from xpaste._version import __version__
from xpaste.core.instance import Instance, InstanceRecord
from xpaste.core.sample import Sample
from xpaste.core.targets import Targets
from xpaste.errors import XPasteError

_LAZY = {
    "InstancePool": "xpaste.pool.store",
    "CopyPaste": "xpaste.paste.transform",
    "PastePlan": "xpaste.paste.plan",
    "PasteConfig": "xpaste.paste.config",
}

__all__ = ["__version__", "Instance", "InstanceRecord", "Sample", "Targets", "XPasteError", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'xpaste' has no attribute {name!r}")
