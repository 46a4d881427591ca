"""Aliases for modules that moved: the old import path keeps working for one release, with a
DeprecationWarning naming the new one (the old -> new table is in docs/architecture.md)."""
from __future__ import annotations

import importlib
import warnings
from typing import Any, Callable


def moved(old: str, *new: str) -> Callable[[str], Any]:
    """A module `__getattr__` for the alias module `old`: `old.NAME` is NAME from the first of the modules
    `new` that has it, with a DeprecationWarning naming that module; AttributeError when none has it."""

    def __getattr__(name: str) -> Any:
        if not name.startswith("__"):
            for target in new:
                module = importlib.import_module(target)
                if hasattr(module, name):
                    warnings.warn(f"{old} moved to {target}: import {name} from {target} (the old path goes in "
                                  "the next release)", DeprecationWarning, stacklevel=2)
                    return getattr(module, name)
        raise AttributeError(f"module {old!r} has no attribute {name!r}")

    return __getattr__
