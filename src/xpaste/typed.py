"""Typed configuration sections: frozen dataclasses whose fields carry their help, choices and range, and the
coercion of user values (YAML, command-line text) to each field's type. Used by `xpaste.stages.config` and
`xpaste.paste.config` (one set of coercion rules for every configuration).

Rules: a value is converted only losslessly (int -> float, list -> tuple, '8' -> 8 and 'true' -> True from
command-line text); anything else raises `ConfigError` (an `XPasteError`: one line naming the key and the
expected type). Ranges are inclusive; choices are exact.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import typing
from dataclasses import field
from typing import Any

from xpaste.errors import XPasteError


class ConfigError(XPasteError, ValueError):
    """A config key that does not exist or a value of the wrong type or range (one line, names the key)."""


def key_field(default: Any, help: str, *, flag: str | None = None, choices: tuple | None = None,
              lo: float | None = None, hi: float | None = None, gt: float | None = None, lt: float | None = None,
              split: str | None = None, text_items: bool = False, min_items: int = 0, cli: bool = True,
              unset: bool = False, each: Any = None):
    """A config field: its default, help text, CLI flag (default: --field-name), choices, inclusive range
    [lo, hi] and exclusive bounds (gt, lt) (for a tuple: of each item), `split` (a single string is split on it
    into a tuple), `text_items` (numbers in a tuple are taken as text), `min_items` (for tuples), `unset` (the
    default None means "not set, another rule gives the value"; a user cannot set it to null, and `to_dict`
    leaves it out while unset), `each` (a function called on each item of a tuple, or on the value, that
    raises XPasteError for a bad one: a template's fields, a segmenter spec; its message becomes the key's
    ConfigError)."""
    return field(default=default, metadata={"help": help, "flag": flag, "choices": choices, "lo": lo, "hi": hi,
                                            "gt": gt, "lt": lt, "split": split, "text_items": text_items,
                                            "min_items": min_items,
                                            "cli": cli, "unset": unset, "each": each})


class Section:
    """Shared behaviour of the config dataclasses: type coercion and range checks on construction."""

    def __post_init__(self) -> None:
        prefix = getattr(self, "_prefix", "")
        hints = hints_of(type(self))
        for f in dataclasses.fields(self):
            if f.name.startswith("_"):
                continue
            key = f"{prefix}{f.name}"
            value = getattr(self, f.name)
            if f.metadata.get("convert"):
                value = f.metadata["convert"](value, key)
            elif dataclasses.is_dataclass(hints[f.name]):
                if isinstance(value, dict):
                    value = hints[f.name].from_dict(value, f"{key}.")
                elif not isinstance(value, hints[f.name]):
                    raise ConfigError(f"config key {key} must be a mapping of keys, got {value!r}")
            else:
                value = coerce(key, value, hints[f.name], f.metadata)
                check_range(key, value, f.metadata)
                _check_each(key, value, f.metadata.get("each"))
            object.__setattr__(self, f.name, value)
        self._check()

    def _check(self) -> None:
        """Checks across fields (overridden where a section has any)."""

    @classmethod
    def from_dict(cls, data: dict, prefix: str = ""):
        """Build from a mapping; unknown keys raise ConfigError naming the key and the nearest valid key."""
        if not isinstance(data, dict):
            raise ConfigError(f"config key {prefix.rstrip('.') or '(top level)'} must be a mapping of keys, "
                              f"got {data!r}")
        names = [f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")]
        for key in data:
            if key not in names:
                raise ConfigError(f"unknown config key {prefix}{key}", hint=nearest_hint(str(key), names, prefix))
        obj = cls.__new__(cls)
        values = {f.name: (data[f.name] if f.name in data else default_of(f)) for f in dataclasses.fields(cls)
                  if not f.name.startswith("_")}
        object.__setattr__(obj, "_prefix", prefix)
        for name, value in values.items():
            object.__setattr__(obj, name, value)
        obj.__post_init__()
        return obj

    def to_dict(self) -> dict:
        """Plain json/yaml-able values: nested dicts, tuples as lists."""
        out = {}
        for f in dataclasses.fields(self):
            if f.name.startswith("_"):
                continue
            value = getattr(self, f.name)
            if value is None and f.metadata.get("unset"):
                continue
            out[f.name] = value.to_dict() if hasattr(value, "to_dict") else (
                list(value) if isinstance(value, tuple) else value)
        return out


def _check_each(key: str, value: Any, each: Any) -> None:
    if each is None or value is None:
        return
    for item in value if isinstance(value, tuple) else (value,):
        try:
            each(item)
        except XPasteError as e:
            raise ConfigError(f"config key {key}: {e.message}", hint=e.hint) from None


def check_value(cls: type, name: str, value: Any, label: str) -> Any:
    """`value` for the field `name` of the config dataclass `cls`, coerced to its type and checked against its
    bounds and choices, the rules a config file or a flag would meet; ConfigError (one line, `label` first:
    the flag or argument that gave it) otherwise. For front-ends that take one option outside a config."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    key = getattr(cls, "_key_prefix", "") + name
    try:
        out = coerce(key, value, hints_of(cls)[name], f.metadata)
        check_range(key, out, f.metadata)
    except ConfigError as e:
        raise ConfigError(f"{label}: {e.message}", hint=e.hint) from None
    return out


def default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[misc]


def nearest_hint(key: str, names: list[str], prefix: str) -> str:
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.5)
    if close:
        return f"did you mean {prefix}{close[0]}?"
    return f"valid keys{' under ' + prefix.rstrip('.') if prefix else ''}: {', '.join(names)}"


_HINT_CACHE: dict[type, dict] = {}


def hints_of(cls: type) -> dict:
    if cls not in _HINT_CACHE:
        _HINT_CACHE[cls] = typing.get_type_hints(cls)
    return _HINT_CACHE[cls]


def type_name(hint: Any) -> str:
    """How a type is named in messages and CLI metavars: INT, FLOAT, BOOL, TEXT, TEXT[,TEXT...], ..."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        return f"{type_name(args[0])} or null"
    if origin is tuple:
        return f"list of {type_name(args[0])}"
    return {int: "integer", float: "number", bool: "true/false", str: "text"}.get(hint, str(hint))


def coerce(key: str, value: Any, hint: Any, meta: dict | None = None) -> Any:
    """Check `value` against the type `hint`, converting losslessly (int -> float, list -> tuple, '8' -> 8 and
    'true' -> True from command-line text); anything else raises ConfigError naming `key` and the type."""
    meta = meta or {}
    origin, args = typing.get_origin(hint), typing.get_args(hint)

    def refuse(extra: str = ""):
        return ConfigError(f"config key {key}: expected {type_name(hint)}, got {value!r}{extra}")

    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        return coerce(key, value, args[0], meta) if value is not None else None
    if value is None:
        raise refuse(" (this key cannot be null)")
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(meta["split"]) if v.strip()] if meta.get("split") else [value]
        if not isinstance(value, (list, tuple)):
            raise refuse()
        item = args[0]
        items = []
        for v in value:
            if meta.get("text_items") and isinstance(v, (int, float)) and not isinstance(v, bool):
                v = str(v)
            try:
                items.append(coerce(key, v, item))
            except ConfigError:
                raise refuse(f" (item {v!r} is not {type_name(item)})") from None
        if len(items) < meta.get("min_items", 0):
            raise ConfigError(f"config key {key}: needs at least {meta['min_items']} item(s), got {value!r}")
        return tuple(items)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
            return value.strip().lower() in ("true", "yes", "on", "1")
        raise refuse()
    if hint is int:
        if isinstance(value, bool):
            raise refuse()
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise refuse()
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise refuse()
        try:
            out = float(value)
        except ValueError:
            raise refuse() from None
        if not math.isfinite(out):
            raise refuse(" (must be finite)")
        return out
    if hint is str:
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if not isinstance(value, str):
            raise refuse(' (quote it to pass it as text: key="..." )')
        return value
    raise TypeError(f"no coercion for {hint!r} (config key {key})")


def check_range(key: str, value: Any, meta: dict) -> None:
    """Choices and bounds of a field's metadata (`key_field`): inclusive lo/hi, exclusive gt/lt, each item of
    a tuple checked on its own. Raises ConfigError in one line naming `key`."""
    if value is None:
        return
    choices = meta.get("choices")
    if choices and value not in choices:
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint = f"did you mean {close[0]}?" if close else None
        raise ConfigError(f"config key {key}: {value!r} is not one of {', '.join(map(str, choices))}", hint=hint)
    lo, hi, gt, lt = (meta.get(k) for k in ("lo", "hi", "gt", "lt"))
    for item in value if isinstance(value, tuple) else (value,):
        if not isinstance(item, (int, float)) or isinstance(item, bool):
            continue
        if (lo is not None and item < lo) or (hi is not None and item > hi):
            bounds = (f"between {lo} and {hi}" if lo is not None and hi is not None
                      else f"at least {lo}" if lo is not None else f"at most {hi}")
            raise ConfigError(f"config key {key}: must be {bounds}, got {value!r}")
        if (gt is not None and not item > gt) or (lt is not None and not item < lt):
            bounds = " and ".join(b for b in (f"greater than {gt}" if gt is not None else "",
                                               f"less than {lt}" if lt is not None else "") if b)
            raise ConfigError(f"config key {key}: must be {bounds}, got {value!r}")
