"""Pipeline configuration: typed, frozen dataclasses, one per section, holding every default in one place.

`PipelineConfig` (top level) has one section per stage (`generate`, `retrieve`, `segment`, `score`,
`build_pool`) plus `categories` and `ray`. Each field's metadata holds its help text, its choices, its range
and its CLI flag name, so the stage commands' flags and help are derived from here (`cli_options`), never
spelled twice.

Values come, in this order, from the defaults, a YAML file (`safe_load` only), CLI flags and `--set a.b=v`
overrides (the value parsed as YAML). Every layer is checked before anything runs or is written:
- an unknown key is refused in one line naming it and the nearest valid key;
- a value is coerced to its field's type (int, float, bool, str, tuples, Optional) or refused in one line
  naming the key and the expected type (`ConfigError`, an `XPasteError`: the CLI prints it, exit 2);
- ranges and choices (engine, scheduler, segmenter names) are checked when the dataclass is built.

Stages receive `PipelineConfig.to_dict()`: plain json-able values (tuples as lists), which is also what
`config.yaml` in the run folder records and what stage fingerprints hash.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from xpaste.errors import XPasteError

ENGINES = ("local", "ray")
#: Scheduler names of `xpaste.generate.diffusers_t2i.SCHEDULERS` (kept equal by a test; this module stays light).
SCHEDULER_NAMES = ("dpm", "ddim", "euler", "euler_a", "pndm", "lms")
#: Keys of `xpaste.pipeline.build_pool.PRESETS` (kept equal by a test).
BUILD_POOL_PRESETS = ("xpaste", "divergen")


class ConfigError(XPasteError, ValueError):
    """A config key that does not exist or a value of the wrong type or range (one line, names the key)."""


def _key(default: Any, help: str, *, flag: str | None = None, choices: tuple | None = None,
         lo: float | None = None, hi: float | None = None, split: str | None = None, text_items: bool = False,
         min_items: int = 0, cli: bool = True, unset: bool = False):
    """A config field: its default, help text, CLI flag (default: --field-name), choices, inclusive range
    [lo, hi], `split` (a single string is split on it into a tuple), `text_items` (numbers in a tuple are
    taken as text), `min_items` (for tuples), `unset` (the default None means "not set, another rule gives the
    value"; a user cannot set it to null, and `to_dict` leaves it out while unset)."""
    return field(default=default, metadata={"help": help, "flag": flag, "choices": choices, "lo": lo, "hi": hi,
                                            "split": split, "text_items": text_items, "min_items": min_items,
                                            "cli": cli, "unset": unset})


class _Section:
    """Shared behaviour of the config dataclasses: type coercion and range checks on construction."""

    def __post_init__(self) -> None:
        prefix = getattr(self, "_prefix", "")
        hints = _hints(type(self))
        for f in dataclasses.fields(self):
            if f.name.startswith("_"):
                continue
            key = f"{prefix}{f.name}"
            value = getattr(self, f.name)
            if f.metadata.get("paste"):
                value = _paste_config(value, key)
            elif dataclasses.is_dataclass(hints[f.name]):
                if isinstance(value, dict):
                    value = hints[f.name].from_dict(value, f"{key}.")
                elif not isinstance(value, hints[f.name]):
                    raise ConfigError(f"config key {key} must be a mapping of keys, got {value!r}")
            else:
                value = coerce(key, value, hints[f.name], f.metadata)
                _check_range(key, value, f.metadata)
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
                raise ConfigError(f"unknown config key {prefix}{key}", hint=_nearest(str(key), names, prefix))
        obj = cls.__new__(cls)
        values = {f.name: (data[f.name] if f.name in data else _default(f)) for f in dataclasses.fields(cls)
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


def _paste_config(value: Any, key: str):
    """The paste options as `xpaste.paste.config.PasteConfig` (their one home), from a mapping or None."""
    from xpaste.paste.config import PasteConfig

    if value is None or isinstance(value, PasteConfig):
        return value if value is not None else PasteConfig()
    if not isinstance(value, dict):
        raise ConfigError(f"config key {key} must be a mapping of paste options, got {value!r}")
    try:
        return PasteConfig.from_dict(value)
    except XPasteError as e:
        raise ConfigError(f"config key {key}: {e.message}", hint=e.hint) from None


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[misc]


def _nearest(key: str, names: list[str], prefix: str) -> str:
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.5)
    if close:
        return f"did you mean {prefix}{close[0]}?"
    return f"valid keys{' under ' + prefix.rstrip('.') if prefix else ''}: {', '.join(names)}"


_HINT_CACHE: dict[type, dict] = {}


def _hints(cls: type) -> dict:
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


def _check_range(key: str, value: Any, meta: dict) -> None:
    if value is None:
        return
    choices = meta.get("choices")
    if choices and value not in choices:
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint = f"did you mean {close[0]}?" if close else None
        raise ConfigError(f"config key {key}: {value!r} is not one of {', '.join(map(str, choices))}", hint=hint)
    lo, hi = meta.get("lo"), meta.get("hi")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            bounds = (f"between {lo} and {hi}" if lo is not None and hi is not None
                      else f"at least {lo}" if lo is not None else f"at most {hi}")
            raise ConfigError(f"config key {key}: must be {bounds}, got {value!r}")


# ---------------------------------------------------------------------------------------------- sections
@dataclass(frozen=True)
class RayConfig(_Section):
    """Engine `ray` (docs/ray.md). null: the XPASTE_RAY_* environment variable, else Ray's default."""

    actors: Optional[int] = _key(None, "model actors (default: one per GPU, else one per CPU)", lo=1, cli=False)
    gpus_per_actor: Optional[float] = _key(None, "GPUs per actor; fractions let actors share a GPU", lo=0, cli=False)
    cpus_per_actor: Optional[float] = _key(None, "CPUs per actor", lo=0, cli=False)
    num_cpus: Optional[int] = _key(None, "CPUs of a local Ray started when no ray_address is given", lo=1, cli=False)
    num_gpus: Optional[int] = _key(None, "GPUs of a local Ray started when no ray_address is given", lo=0, cli=False)
    object_store_memory: Optional[int] = _key(None, "bytes of a local Ray's object store", lo=1, cli=False)


@dataclass(frozen=True)
class CategoriesConfig(_Section):
    source: Optional[str] = _key(None, "COCO/LVIS json, text file (one name per line) or 'a,b,c'",
                                 flag="--categories")
    select: Optional[tuple[str, ...]] = _key(None, "subset of the categories: names or ids", text_items=True,
                                             split=",", cli=False)


@dataclass(frozen=True)
class GenerateConfig(_Section):
    """Text-to-image generation (method.md, Stage 1: SD 1.5, DPM-Solver, 50 steps, guidance 7.5, 512x512)."""

    enabled: bool = _key(True, "run this stage in `xpaste run`", cli=False)
    models: tuple[str, ...] = _key(("stable-diffusion-v1-5/stable-diffusion-v1-5",),
                                   "hub id or local folder", flag="--model", min_items=1)
    per_category: int = _key(4, "images per category and model", lo=0)
    seed: int = _key(0, "base seed; image i's seed derives from it", lo=0)
    batch_size: int = _key(4, "images per model call", lo=1)
    steps: int = _key(50, "diffusion steps", lo=1)
    guidance: float = _key(7.5, "classifier-free guidance scale", lo=0)
    scheduler: str = _key("dpm", "diffusion scheduler", choices=SCHEDULER_NAMES)
    height: int = _key(512, "image height, pixels", lo=8)
    width: int = _key(512, "image width, pixels", lo=8)
    templates: tuple[str, ...] = _key(("a photo of a single {name}",),
                                      "template with {name} {definition} {synonym}", flag="--prompt",
                                      min_items=1)
    prompt_file: Optional[str] = _key(None, "per-category prompts (json or name<TAB>prompt lines)")
    negative_prompt: Optional[str] = _key(None, "negative prompt", cli=False)
    backgrounds: int = _key(0, "also N scene images for paste canvases", lo=0)


@dataclass(frozen=True)
class RetrieveConfig(_Section):
    enabled: bool = _key(False, "run this stage in `xpaste run`", cli=False)
    folder: Optional[str] = _key(None, "image folder or list file")
    labelled: bool = _key(False, "folder/<category name>/... holds each category's images (no CLIP ranking)")
    knn_url: Optional[str] = _key(None, "clip-retrieval service URL, e.g. http://host:1234/knn-service")
    knn_indice: str = _key("laion5B-L-14", "index name of the clip-retrieval service")
    per_category: int = _key(20, "images per category", lo=1)
    min_score: Optional[float] = _key(None, "keep images scoring at least this (100 x cosine)")
    simple_background: Optional[float] = _key(None, "keep images whose modal colour covers this fraction, e.g. 0.4",
                                              lo=0, hi=1)
    max_bytes: int = _key(20 * 2**20, "largest download, bytes", lo=1, cli=False)


@dataclass(frozen=True)
class SegmentConfig(_Section):
    segmenters: tuple[str, ...] = _key(("grabcut", "rembg:u2net", "clipseg"),
                                       "grabcut | rembg[:model|:file.onnx] | clipseg[:folder]",
                                       flag="--segmenter", split=",", min_items=1)
    batch_size: int = _key(8, "images per segmenter call", lo=1)

    def _check(self) -> None:
        from xpaste.segment import parse_spec

        for spec in self.segmenters:
            try:
                parse_spec(spec)
            except XPasteError as e:
                raise ConfigError(f"config key {getattr(self, '_prefix', '')}segmenters: {e.message}", hint=e.hint) from None


@dataclass(frozen=True)
class ScoreConfig(_Section):
    clip: Optional[str] = _key("ViT-L-14", "ViT-L-14 | hf-hub:org/name | local-dir:/folder; null: no CLIP scores")
    pretrained: Optional[str] = _key("openai", "open_clip pretrained tag")
    batch_size: int = _key(32, "cut-outs per CLIP call", lo=1)


@dataclass(frozen=True)
class BuildPoolConfig(_Section):
    """X-Paste's filter (method.md, Stage 3): CLIP bar min(t, max - d), area-fraction range, optional dedup and
    DiverGen filter. Options left null take the value of `preset`, whose documented values live in
    `xpaste.pipeline.build_pool.PRESETS` (xpaste: t 21, d 1, area [0.05, 0.95], no dedup)."""

    preset: Optional[str] = _key(None, "documented option bundle (default xpaste)", choices=BUILD_POOL_PRESETS)
    out: Optional[str] = _key(None, "pool folder (default RUN/pool)")
    t: Optional[float] = _key(None, "CLIP bar cap, 100 x cosine (preset xpaste: 21)", unset=True)
    d: Optional[float] = _key(None, "bar = min(t, max - d) (preset xpaste: 1)", lo=0, unset=True)
    area_min: Optional[float] = _key(None, "smallest mask area fraction kept (preset xpaste: 0.05)", lo=0, hi=1,
                                     unset=True)
    area_max: Optional[float] = _key(None, "largest mask area fraction kept (preset xpaste: 0.95)", lo=0, hi=1,
                                     unset=True)
    dedup: Optional[float] = _key(None, "embedding cosine above which two cut-outs are duplicates (default off)",
                                  lo=-1, hi=1)
    real_pool: Optional[str] = _key(None, "DiverGen filter against this pool of real instances")
    real_min_similarity: Optional[float] = _key(None, "DiverGen: least mean cosine to the real instances "
                                                "(preset: 0.6)", lo=-1, hi=1, cli=False, unset=True)
    flush_every: int = _key(256, "pool rows per index shard while building", lo=1, cli=False)

    def _check(self) -> None:
        if self.area_min is not None and self.area_max is not None and self.area_min > self.area_max:
            raise ConfigError(f"config keys {getattr(self, '_prefix', '')}area_min/area_max: need area_min <= area_max, got "
                              f"{self.area_min} > {self.area_max}")


@dataclass(frozen=True)
class AugmentConfig(_Section):
    """`xpaste run` ends with augment when enabled: the dataset pasted with the pool build-pool wrote. Options
    left out take `xpaste.augment.augment_dataset`'s defaults; the paste options are `PasteConfig`'s (one home)."""

    enabled: bool = _key(False, "run augment after build-pool in `xpaste run`", cli=False)
    dataset: Optional[str] = _key(None, "COCO/LVIS annotation json to augment", cli=False)
    images: Optional[str] = _key(None, "folder the json's file_name entries are relative to", cli=False)
    out: Optional[str] = _key(None, "output folder (default RUN/augmented)", cli=False)
    copies: Optional[int] = _key(None, "augmented copies per image", lo=1, cli=False, unset=True)
    seed: Optional[int] = _key(None, "seed of the paste plans", lo=0, cli=False, unset=True)
    scale_prior: Optional[str] = _key(None, "'dataset', 'none', or an `xpaste stats` json", cli=False, unset=True)
    image_format: Optional[str] = _key(None, "auto (png stays png, else jpg) | png", choices=("auto", "png"),
                                       cli=False, unset=True)
    max_images: Optional[int] = _key(None, "only the first N images (a subset run)", lo=1, cli=False)
    paste: Any = field(default=None, metadata={"paste": True})

    def _check(self) -> None:
        prefix = getattr(self, "_prefix", "")
        if self.enabled and not (self.dataset and self.images):
            raise ConfigError(f"config key {prefix}enabled: augment needs {prefix}dataset and {prefix}images")


@dataclass(frozen=True)
class PipelineConfig(_Section):
    """The whole pipeline (`xpaste run CONFIG`). Build with `load_config` or `PipelineConfig.from_dict`."""

    run_dir: str = _key("xpaste_run", "run folder", flag="--run")
    engine: str = _key("local", "where stages run", choices=ENGINES)
    ray_address: Optional[str] = _key(None, "Ray cluster address (engine ray); null starts a local Ray")
    shard_size: int = _key(32, "work items per shard (the unit of resume)", lo=1, cli=False)
    workers: int = _key(1, "processes for engine local (the output does not depend on it)", lo=1)
    device: Optional[str] = _key(None, "cuda | cpu | cuda:1 ... (default: cuda when available)")
    ray: RayConfig = field(default_factory=RayConfig)
    categories: CategoriesConfig = field(default_factory=CategoriesConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    retrieve: RetrieveConfig = field(default_factory=RetrieveConfig)
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    build_pool: BuildPoolConfig = field(default_factory=BuildPoolConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


SECTIONS = ("ray", "categories", "generate", "retrieve", "segment", "score", "build_pool", "augment")


def field_of(key: str) -> tuple[dataclasses.Field, Any]:
    """The dataclass field and type hint of a dotted key ('generate.per_category'); KeyError if unknown."""
    cls: Any = PipelineConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        hint = _hints(cls)[part]
        if i == len(parts) - 1:
            return fields[part], hint
        cls = hint
    raise KeyError(key)


def cli_options(keys: list[str]) -> list[dict]:
    """CLI flag specs of config keys: key, flag, type hint, help (with [key] and choices) and metavar."""
    out = []
    for key in keys:
        f, hint = field_of(key)
        meta = f.metadata
        default = _default(f)
        choices = f" ({' | '.join(meta['choices'])})" if meta["choices"] else ""
        shown = ", ".join(default) if isinstance(default, tuple) else "null" if default is None else default
        out.append({"key": key, "flag": meta["flag"] or "--" + f.name.replace("_", "-"), "hint": hint,
                    "help": f"{meta['help']}{choices}; config key {key}, default: {shown}",
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


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
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
            raise ConfigError(f"unknown config key {prefix}{key}", hint=_nearest(str(key), list(fields), prefix))
        hint = _hints(cls)[key]
        if fields[key].metadata.get("paste"):
            _paste_config(value, f"{prefix}{key}")
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
        _check_range(f"{prefix}{key}", v, fields[key].metadata)


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None,
                updates: list[dict] | None = None, labels: dict[str, str] | None = None) -> PipelineConfig:
    """Defaults <- YAML file <- `updates` (nested dicts, e.g. from CLI flags) <- `--set key=value` overrides.

    Each layer is checked on its own first, so an error names where the bad value came from (the YAML file,
    the flag given in `labels` {key: '--flag'}, or the --set text). Raises ConfigError (one line).
    """
    import yaml

    raw: dict = {}
    if path is not None:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise ConfigError("config file not found", path) from None
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ConfigError(f"malformed YAML: {str(e).splitlines()[0]}", path) from None
        if not isinstance(data, dict):
            raise ConfigError("the config must be a mapping of keys", path)
        _check_layer(data, None, path)
        raw = _merge(raw, data)
    for update in updates or []:
        for key, value in _flatten(update):
            label = (labels or {}).get(key)
            _check_layer(nested(key, value), f"{label} ({key})" if label else None)
        raw = _merge(raw, update)
    for text in overrides or []:
        key, value = parse_override(text)
        _check_layer(nested(key, value), f"--set {text}")
        raw = _merge(raw, nested(key, value))
    return PipelineConfig.from_dict(raw)


def _flatten(data: dict, prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for key, value in data.items():
        if isinstance(value, dict):
            out.extend(_flatten(value, f"{prefix}{key}."))
        else:
            out.append((f"{prefix}{key}", value))
    return out
