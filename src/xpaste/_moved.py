"""Aliases for modules that moved: the old import path keeps working for one release, with a
DeprecationWarning naming the new one (the old -> new table is in docs/architecture.md)."""
from __future__ import annotations

import importlib
import warnings
from typing import Any, Callable


def moved(old: str, *new: str) -> Callable[[str], Any]:
    """A module `__getattr__` for the alias module `old`: `old.NAME` is NAME from the module of `new` that
    defines it (else the first that has it), with a DeprecationWarning naming that module; AttributeError
    when none has it."""

    def __getattr__(name: str) -> Any:
        if not name.startswith("__"):
            found = [(target, getattr(module, name)) for target in new
                     for module in [importlib.import_module(target)] if hasattr(module, name)]
            # the module that defines it, not one that imports it
            home = [(t, obj) for t, obj in found if getattr(obj, "__module__", None) == t] or found
            if home:
                target, obj = home[0]
                warnings.warn(f"{old} moved to {target}: import {name} from {target} (the old path goes in the "
                              "next release)", DeprecationWarning, stacklevel=2)
                return obj
        raise AttributeError(f"module {old!r} has no attribute {name!r}")

    return __getattr__
