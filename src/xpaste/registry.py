"""Backends reached through registry strings ("module:Class"), so that their heavy libraries are imported
only when one is actually built, and a missing library names the `pip install 'xpaste[extra]'` to run."""
from __future__ import annotations

import importlib

from xpaste.errors import missing_extra


def load_backend(target: str, extra: str):
    """Import and return the class named by "package.module:Class"."""
    module_name, class_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and not e.name.startswith("xpaste"):
            raise missing_extra(e.name, extra) from e
        raise
    return getattr(module, class_name)
