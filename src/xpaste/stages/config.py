"""Pipeline configuration: typed, frozen dataclasses, one section per stage, composed into `PipelineConfig`.

Each stage's section lives in that stage's module (`GenerateConfig` in `xpaste.stages.generate`, ...: one
module a stage); this module holds the run-wide keys (`run_dir`, `engine`, `workers`, `device`, the `ray:`
and `categories:` sections), the composition and the loading rules. Each field's metadata holds its help
text, its choices, its range and its CLI flag name, so the stage commands' flags and help are derived from
the fields (`cli_options`), never spelled twice. The paste options are not repeated: `augment.paste` is a
`xpaste.paste.config.PasteConfig`, and options whose documented values belong to a preset or another function
(build_pool's t, d, area range; augment's copies, seed, ...) stay unset (left out of `to_dict`) unless given.
Field types, the coercion rules and `ConfigError` live in `xpaste.typed`.

Values come, in this order, from the defaults, a YAML file (`safe_load` only), CLI flags and `--set a.b=v`
overrides (the value parsed as YAML). Every layer is checked before anything runs or is written:
- an unknown key is refused in one line naming it and the nearest valid key;
- a value is coerced to its field's type (int, float, bool, str, tuples, Optional) or refused in one line
  naming the key and the expected type (`ConfigError`, an `XPasteError`: the CLI prints it, exit 2);
- ranges and choices (engine, scheduler, build_pool preset, segmenter names, prompt templates, paste options)
  are checked when the dataclass is built; checks across keys (area_min <= area_max) once all layers are in.

Stages receive `PipelineConfig.to_dict()`: plain json-able values (tuples as lists), which is also what
`config.yaml` in the run folder records and what stage fingerprints hash.
"""
from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from xpaste.pipeline.runner import RunSettings
from xpaste.stages.augment import AugmentConfig
from xpaste.stages.build_pool import BuildPoolConfig
from xpaste.stages.generate import GenerateConfig
from xpaste.stages.masks_from_boxes import MasksFromBoxesConfig
from xpaste.stages.retrieve import RetrieveConfig
from xpaste.stages.score import ScoreConfig
from xpaste.stages.segment import SegmentConfig
from xpaste.typed import (
    ConfigError,
    Section,
    check_range,
    coerce,
    default_of,
    hints_of,
    key_field,
    nearest_hint,
    type_name,
)

__all__ = ["PipelineConfig", "ConfigError", "load_config", "cli_options", "field_of", "parse_override", "merge",
           "nested", "SECTIONS", "RayConfig", "CategoriesConfig", "GenerateConfig", "RetrieveConfig",
           "SegmentConfig", "ScoreConfig", "BuildPoolConfig", "AugmentConfig", "MasksFromBoxesConfig"]


# ---------------------------------------------------------------------------------------------- sections
@dataclass(frozen=True)
class RayConfig(Section):
    """Engine `ray` (docs/ray.md). null: the XPASTE_RAY_* environment variable, else Ray's default."""

    actors: Optional[int] = key_field(None, "model actors (default: one per GPU, else one per CPU)", lo=1, cli=False)
    gpus_per_actor: Optional[float] = key_field(None, "GPUs per actor; fractions let actors share a GPU", lo=0,
                                                cli=False)
    cpus_per_actor: Optional[float] = key_field(None, "CPUs per actor", lo=0, cli=False)
    num_cpus: Optional[int] = key_field(None, "CPUs of a local Ray started when no ray_address is given", lo=1,
                                       cli=False)
    num_gpus: Optional[int] = key_field(None, "GPUs of a local Ray started when no ray_address is given", lo=0,
                                       cli=False)
    object_store_memory: Optional[int] = key_field(None, "bytes of a local Ray's object store", lo=1, cli=False)


@dataclass(frozen=True)
class CategoriesConfig(Section):
    source: Optional[str] = key_field(None, "COCO/LVIS json, text file (one name per line) or 'a,b,c'",
                                 flag="--categories")
    select: Optional[tuple[str, ...]] = key_field(None, "subset of the categories: names or ids", text_items=True,
                                             split=",", cli=False)


@dataclass(frozen=True)
class PipelineConfig(RunSettings):
    """The whole pipeline (`xpaste run CONFIG`): the run-wide keys of `RunSettings` (run_dir, engine,
    ray_address, shard_size, workers, device), then one section per stage. Build with `load_config` or
    `PipelineConfig.from_dict`."""

    ray: RayConfig = field(default_factory=RayConfig)
    categories: CategoriesConfig = field(default_factory=CategoriesConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    retrieve: RetrieveConfig = field(default_factory=RetrieveConfig)
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    build_pool: BuildPoolConfig = field(default_factory=BuildPoolConfig)
    masks_from_boxes: MasksFromBoxesConfig = field(default_factory=MasksFromBoxesConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


SECTIONS = ("ray", "categories", "generate", "retrieve", "segment", "score", "build_pool", "masks_from_boxes",
            "augment")


def field_of(key: str) -> tuple[dataclasses.Field, Any]:
    """The dataclass field and type hint of a dotted key ('generate.per_category'); KeyError if unknown."""
    cls: Any = PipelineConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        hint = hints_of(cls)[part]
        if i == len(parts) - 1:
            return fields[part], hint
        cls = hint
    raise KeyError(key)


def cli_options(keys: list[str]) -> list[dict]:
    """CLI flag specs of config keys: key, flag, type hint, help (the field's help, its choices as `(a | b)` and
    `(config key K)`), default (the text the help shows as `[default: X]`, or None) and metavar.

    A field whose default is null but whose help names what null means, `(default X)` or `(default: X)`,
    shows X as its default (and its help drops the words)."""
    import re

    out = []
    for key in keys:
        f, hint = field_of(key)
        meta = f.metadata
        default = default_of(f)
        text = meta["help"]
        choices = f" ({' | '.join(meta['choices'])})" if meta["choices"] else ""
        if default is None:
            found = re.search(r"\s*\(default:? ([^()]*)\)", text)
            shown = found.group(1) if found else None
            text = text.replace(found.group(0), "") if found else text
        elif isinstance(default, bool):
            shown = None  # a flag: --x / --no-x say it
        else:
            shown = ", ".join(map(str, default)) if isinstance(default, tuple) else str(default)
        out.append({"key": key, "flag": meta["flag"] or "--" + f.name.replace("_", "-"), "hint": hint,
                    "help": f"{text}{choices} (config key {key})", "default": shown,
                    "metavar": type_name(hint).upper().replace(" OR NULL", "").replace("LIST OF ", "")})
    return out


# ---------------------------------------------------------------------------------------------- loading
def parse_override(text: str) -> tuple[str, Any]:
    """'generate.per_category=8' -> ('generate.per_category', 8); the value is parsed as YAML."""
    import yaml

    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key=value, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {key.strip()}: cannot parse value {raw!r} ({str(e).splitlines()[0]})") from None
    return key.strip(), value


def nested(key: str, value: Any) -> dict:
    """'a.b', v -> {'a': {'b': v}}."""
    parts = key.split(".")
    out: dict = {}
    cur = out
    for part in parts[:-1]:
        cur = cur.setdefault(part, {})
    cur[parts[-1]] = value
    return out


def merge(base: dict, update: dict) -> dict:
    """`base` updated by `update`, recursively for nested dicts (neither is changed)."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def _check_layer(data: dict, source: str | None = None, path: str | os.PathLike | None = None) -> None:
    """Check the keys and value types of one layer on its own (checks across fields wait for the last layer)."""
    try:
        _types_only(PipelineConfig, data, "")
    except ConfigError as e:
        message = f"{source}: {e.message}" if source else e.message
        raise ConfigError(message, path, e.hint) from None


def _types_only(cls, data: dict, prefix: str) -> None:
    """Key, type and range checks of the values in `data` against the dataclass `cls` (recursing into sections)."""
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.name.startswith("_")}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(f"unknown config key {prefix}{key}", hint=nearest_hint(str(key), list(fields), prefix))
        hint = hints_of(cls)[key]
        if fields[key].metadata.get("convert"):
            fields[key].metadata["convert"](value, f"{prefix}{key}")
            continue
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {prefix}{key} must be a mapping of keys, got {value!r}")
            _types_only(hint, value, f"{prefix}{key}.")
            continue
        if value is None and fields[key].metadata.get("unset"):
            raise ConfigError(f"config key {prefix}{key}: expected {type_name(typing.get_args(hint)[0])}, got None "
                              "(leave the key out to take its preset's value)")
        v = coerce(f"{prefix}{key}", value, hint, fields[key].metadata)
        check_range(f"{prefix}{key}", v, fields[key].metadata)


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None,
                updates: list[dict] | None = None, labels: dict[str, str] | None = None) -> PipelineConfig:
    """Defaults <- YAML file <- `updates` (nested dicts, e.g. from CLI flags) <- `--set key=value` overrides.

    A file holding several YAML documents (a run's config.yaml: one per command run there) gives its last one.
    Each layer is checked on its own first, so an error names where the bad value came from (the YAML file,
    the flag given in `labels` {key: '--flag'}, or the --set text). Raises ConfigError (one line).
    """
    import yaml

    raw: dict = {}
    if path is not None:
        path = Path(path)
        try:
            # a run's config.yaml holds one document per command run there: the last is the latest settings
            documents = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
            data = documents[-1] if documents else {}
        except FileNotFoundError:
            raise ConfigError("config file not found", path) from None
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ConfigError(f"malformed YAML: {str(e).splitlines()[0]}", path) from None
        if not isinstance(data, dict):
            raise ConfigError("the config must be a mapping of keys", path)
        _check_layer(data, None, path)
        raw = merge(raw, data)
    for update in updates or []:
        for key, value in _flatten(update):
            label = (labels or {}).get(key)
            _check_layer(nested(key, value), f"{label} ({key})" if label else None)
        raw = merge(raw, update)
    for text in overrides or []:
        key, value = parse_override(text)
        _check_layer(nested(key, value), f"--set {text}")
        raw = merge(raw, nested(key, value))
    return PipelineConfig.from_dict(raw)


def _flatten(data: dict, prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for key, value in data.items():
        if isinstance(value, dict):
            out.extend(_flatten(value, f"{prefix}{key}."))
        else:
            out.append((f"{prefix}{key}", value))
    return out
