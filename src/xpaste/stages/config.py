"""Pipeline configuration: typed, frozen dataclasses, one per section, holding every default in one place.

`PipelineConfig` (top level) has one section per stage (`generate`, `retrieve`, `segment`, `score`,
`build_pool`, `augment`) plus `categories` and `ray`. Each field's metadata holds its help text, its choices,
its range and its CLI flag name, so the stage commands' flags and help are derived from here (`cli_options`),
never spelled twice. The paste options are not repeated here: `augment.paste` is a
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

from xpaste.errors import XPasteError
from xpaste.typed import (ConfigError, Section, check_range, coerce, default_of, hints_of, key_field,
                                   nearest_hint, type_name)

ENGINES = ("local", "ray")
#: Scheduler names of `xpaste.generate.diffusers_t2i.SCHEDULERS` (kept equal by a test; this module stays light).
SCHEDULER_NAMES = ("dpm", "ddim", "euler", "euler_a", "pndm", "lms")
#: Keys of `xpaste.pipeline.build_pool.PRESETS` (kept equal by a test).
BUILD_POOL_PRESETS = ("xpaste", "divergen")


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
class GenerateConfig(Section):
    """Text-to-image generation (method.md, Stage 1: SD 1.5, DPM-Solver, 50 steps, guidance 7.5, 512x512)."""

    enabled: bool = key_field(True, "run this stage in `xpaste run`", cli=False)
    models: tuple[str, ...] = key_field(("stable-diffusion-v1-5/stable-diffusion-v1-5",),
                                   "hub id or local folder", flag="--model", min_items=1)
    per_category: int = key_field(4, "images per category and model", lo=0)
    seed: int = key_field(0, "base seed; image i's seed derives from it", lo=0)
    batch_size: int = key_field(4, "images per model call", lo=1)
    steps: int = key_field(50, "diffusion steps", lo=1)
    guidance: float = key_field(7.5, "classifier-free guidance scale", lo=0)
    scheduler: str = key_field("dpm", "diffusion scheduler", choices=SCHEDULER_NAMES)
    height: int = key_field(512, "image height, pixels", lo=8)
    width: int = key_field(512, "image width, pixels", lo=8)
    templates: tuple[str, ...] = key_field(("a photo of a single {name}",),
                                      "template with {name} {definition} {synonym}", flag="--prompt",
                                      min_items=1)
    prompt_file: Optional[str] = key_field(None, "per-category prompts (json or name<TAB>prompt lines)")
    negative_prompt: Optional[str] = key_field(None, "negative prompt", cli=False)
    backgrounds: int = key_field(0, "also N scene images for paste canvases", lo=0)

    def _check(self) -> None:
        from xpaste.generate.prompts import template_fields

        for template in self.templates:
            try:
                template_fields(template)
            except XPasteError as e:
                raise ConfigError(f"config key {getattr(self, '_prefix', '')}templates: {e.message}",
                                  hint=e.hint) from None


@dataclass(frozen=True)
class RetrieveConfig(Section):
    enabled: bool = key_field(False, "run this stage in `xpaste run`", cli=False)
    folder: Optional[str] = key_field(None, "image folder or list file")
    labelled: bool = key_field(False, "folder/<category name>/... holds each category's images (no CLIP ranking)")
    knn_url: Optional[str] = key_field(None, "clip-retrieval service URL, e.g. http://host:1234/knn-service")
    knn_indice: str = key_field("laion5B-L-14", "index name of the clip-retrieval service")
    per_category: int = key_field(20, "images per category", lo=1)
    min_score: Optional[float] = key_field(None, "keep images scoring at least this (100 x cosine)")
    simple_background: Optional[float] = key_field(None, "keep images whose modal colour covers this fraction "
                                                   "(e.g. 0.4)", lo=0, hi=1)
    max_bytes: int = key_field(20 * 2**20, "largest download, bytes", lo=1, cli=False)


@dataclass(frozen=True)
class SegmentConfig(Section):
    segmenters: tuple[str, ...] = key_field(("grabcut", "rembg:u2net", "clipseg"),
                                       "grabcut | rembg[:model|:file.onnx] | clipseg[:folder]",
                                       flag="--segmenter", split=",", min_items=1)
    batch_size: int = key_field(8, "images per segmenter call", lo=1)

    def _check(self) -> None:
        from xpaste.segment import parse_spec

        for spec in self.segmenters:
            try:
                parse_spec(spec)
            except XPasteError as e:
                prefix = getattr(self, "_prefix", "")
                raise ConfigError(f"config key {prefix}segmenters: {e.message}", hint=e.hint) from None


@dataclass(frozen=True)
class ScoreConfig(Section):
    clip: Optional[str] = key_field("ViT-L-14", "ViT-L-14 | hf-hub:org/name | local-dir:/folder; null: no CLIP scores")
    pretrained: Optional[str] = key_field("openai", "open_clip pretrained tag")
    batch_size: int = key_field(32, "cut-outs per CLIP call", lo=1)


@dataclass(frozen=True)
class BuildPoolConfig(Section):
    """X-Paste's filter (method.md, Stage 3): CLIP bar min(t, max - d), area-fraction range, optional dedup and
    DiverGen filter. Options left null take the value of `preset`, whose documented values live in
    `xpaste.pipeline.build_pool.PRESETS` (xpaste: t 21, d 1, area [0.05, 0.95], no dedup)."""

    preset: Optional[str] = key_field(None, "documented option bundle (default xpaste)", choices=BUILD_POOL_PRESETS)
    out: Optional[str] = key_field(None, "pool folder (default RUN/pool)")
    t: Optional[float] = key_field(None, "CLIP bar cap, 100 x cosine (preset xpaste: 21)", unset=True)
    d: Optional[float] = key_field(None, "bar = min(t, max - d) (preset xpaste: 1)", lo=0, unset=True)
    area_min: Optional[float] = key_field(None, "smallest mask area fraction kept (preset xpaste: 0.05)", lo=0, hi=1,
                                     unset=True)
    area_max: Optional[float] = key_field(None, "largest mask area fraction kept (preset xpaste: 0.95)", lo=0, hi=1,
                                     unset=True)
    dedup: Optional[float] = key_field(None, "embedding cosine above which two cut-outs are duplicates (default off)",
                                  lo=-1, hi=1)
    real_pool: Optional[str] = key_field(None, "DiverGen filter against this pool of real instances")
    real_min_similarity: Optional[float] = key_field(None, "DiverGen: least mean cosine to the real instances "
                                                "(preset: 0.6)", lo=-1, hi=1, cli=False, unset=True)
    flush_every: int = key_field(256, "pool rows per index shard while building", lo=1, cli=False)

    def _check(self) -> None:
        if self.area_min is not None and self.area_max is not None and self.area_min > self.area_max:
            prefix = getattr(self, "_prefix", "")
            raise ConfigError(f"config keys {prefix}area_min/area_max: need area_min <= area_max, got "
                              f"{self.area_min} > {self.area_max}")


@dataclass(frozen=True)
class AugmentConfig(Section):
    """`xpaste run` ends with augment when enabled: the dataset pasted with the pool build-pool wrote. Options
    left out take `xpaste.augment.augment_dataset`'s defaults; the paste options are `PasteConfig`'s (one home)."""

    enabled: bool = key_field(False, "run augment after build-pool in `xpaste run`", cli=False)
    dataset: Optional[str] = key_field(None, "COCO/LVIS annotation json to augment", cli=False)
    images: Optional[str] = key_field(None, "folder the json's file_name entries are relative to", cli=False)
    out: Optional[str] = key_field(None, "output folder (default RUN/augmented)", cli=False)
    copies: Optional[int] = key_field(None, "augmented copies per image", lo=1, cli=False, unset=True)
    seed: Optional[int] = key_field(None, "seed of the paste plans", lo=0, cli=False, unset=True)
    scale_prior: Optional[str] = key_field(None, "'dataset', 'none', or an `xpaste stats` json", cli=False, unset=True)
    image_format: Optional[str] = key_field(None, "auto (png stays png, else jpg) | png", choices=("auto", "png"),
                                       cli=False, unset=True)
    max_images: Optional[int] = key_field(None, "only the first N images (a subset run)", lo=1, cli=False)
    paste: Any = field(default=None, metadata={"convert": _paste_config})

    def _check(self) -> None:
        prefix = getattr(self, "_prefix", "")
        if self.enabled and not (self.dataset and self.images):
            raise ConfigError(f"config key {prefix}enabled: augment needs {prefix}dataset and {prefix}images")


@dataclass(frozen=True)
class PipelineConfig(Section):
    """The whole pipeline (`xpaste run CONFIG`). Build with `load_config` or `PipelineConfig.from_dict`."""

    run_dir: str = key_field("xpaste_run", "run folder", flag="--run")
    engine: str = key_field("local", "where stages run", choices=ENGINES)
    ray_address: Optional[str] = key_field(None, "Ray cluster address (engine ray); null starts a local Ray")
    shard_size: int = key_field(32, "work items per shard (the unit of resume)", lo=1, cli=False)
    workers: int = key_field(1, "processes for engine local (the output does not depend on it)", lo=1)
    device: Optional[str] = key_field(None, "cuda | cpu | cuda:1 ... (default: cuda when available)")
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
        hint = hints_of(cls)[part]
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
        default = default_of(f)
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
