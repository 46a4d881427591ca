"""Pipeline configuration: one YAML file, every CLI flag a key, `--set a.b=value` overrides.

The config is a plain nested dict validated against DEFAULTS (unknown keys are errors, so a typo never
silently falls back to a default). YAML is read with `safe_load` only.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from xpaste.errors import XPasteError

DEFAULTS: dict[str, Any] = {
    "run_dir": "xpaste_run",
    "engine": "local",  # local | ray
    "ray_address": None,  # for engine: ray; None starts a local Ray instance
    "shard_size": 32,  # work items per shard; a shard is the unit of resume
    "device": None,  # None: cuda when available
    "ray": {  # engine: ray (docs/ray.md); null: the XPASTE_RAY_* environment variable, else Ray's default
        "actors": None,  # default: one per GPU, else one per CPU
        "gpus_per_actor": None,  # fractions let several actors share a GPU
        "cpus_per_actor": None,
        "num_cpus": None,  # resources of a local Ray started when no ray_address is given
        "num_gpus": None,
        "object_store_memory": None,
    },
    "categories": {
        "source": None,  # COCO/LVIS json, a text file (one name per line), or "cat,dog,..."
        "select": None,  # optional subset: list of names or ids
    },
    "generate": {
        "enabled": True,
        "models": ["stable-diffusion-v1-5/stable-diffusion-v1-5"],  # hub ids or local folders
        "per_category": 4,
        "seed": 0,
        "batch_size": 4,
        "steps": 50,
        "guidance": 7.5,
        "scheduler": "dpm",
        "height": 512,
        "width": 512,
        "templates": ["a photo of a single {name}"],
        "prompt_file": None,  # per-category prompt lists (json or name<TAB>prompt lines)
        "negative_prompt": None,
        "backgrounds": 0,  # background (scene) images to generate for paste canvases
    },
    "retrieve": {
        "enabled": False,
        "folder": None,  # a folder tree or a text file listing images
        "labelled": False,  # folder/<category name>/... holds each category's images: no CLIP ranking
        "knn_url": None,  # a clip-retrieval service, e.g. http://host:1234/knn-service
        "knn_indice": "laion5B-L-14",
        "per_category": 20,
        "min_score": None,  # 100 x cosine with "a photo of {name}"
        "simple_background": None,  # e.g. 0.4: keep images whose modal colour covers 40% of pixels
        "max_bytes": 20 * 2**20,
    },
    "segment": {
        "segmenters": ["grabcut", "rembg:u2net", "clipseg"],
        "batch_size": 8,
    },
    "score": {
        "clip": "ViT-L-14",  # built-in name, hf-hub:org/name, or local-dir:/folder; null: no CLIP scoring
        "pretrained": "openai",
        "batch_size": 32,
    },
    "build_pool": {
        "out": None,  # default: <run_dir>/pool
        "t": 21.0,
        "d": 1.0,
        "area_min": 0.05,
        "area_max": 0.95,
        "dedup": 0.95,  # cosine above which two cut-outs of a category are duplicates; null disables
        "real_pool": None,  # DiverGen filter: a pool of real instances (e.g. from `pool import-coco`)
        "real_min_similarity": 0.6,
        "flush_every": 256,  # pool rows per index shard while building
    },
}


def _merge(base: dict, update: dict, where: str) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if key not in base:
            raise XPasteError(f"unknown config key {where}{key!r}", hint=f"known keys: {', '.join(sorted(base))}")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise XPasteError(f"config key {where}{key} must be a mapping, got {value!r}")
            out[key] = _merge(base[key], value, f"{where}{key}.")
        else:
            out[key] = value
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """'generate.per_category=8' -> (['generate', 'per_category'], 8); the value is parsed as YAML."""
    import yaml

    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise XPasteError(f"--set expects key=value, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise XPasteError(f"--set {key}: cannot parse value {raw!r}: {e}") from None
    return key.strip().split("."), value


def nested(path: list[str], value: Any) -> dict:
    out: dict = {}
    cur = out
    for part in path[:-1]:
        cur = cur.setdefault(part, {})
    cur[path[-1]] = value
    return out


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None,
                updates: list[dict] | None = None) -> dict:
    """DEFAULTS <- YAML file <- `updates` (dicts from CLI flags) <- `--set` overrides."""
    import yaml

    config = copy.deepcopy(DEFAULTS)
    if path is not None:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise XPasteError("config file not found", path) from None
        except yaml.YAMLError as e:
            raise XPasteError(f"malformed YAML: {e}", path) from None
        if not isinstance(data, dict):
            raise XPasteError("the config must be a mapping of keys", path)
        try:
            config = _merge(config, data, "")
        except XPasteError as e:
            raise XPasteError(e.message, path, e.hint) from None
    for update in updates or []:
        config = _merge(config, update, "")
    for text in overrides or []:
        keys, value = parse_override(text)
        config = _merge(config, nested(keys, value), "")
    validate(config)
    return config


def validate(config: dict) -> None:
    if config["engine"] not in ("local", "ray"):
        raise XPasteError(f"engine must be 'local' or 'ray', got {config['engine']!r}")
    if int(config["shard_size"]) < 1:
        raise XPasteError("shard_size must be at least 1")
    g = config["generate"]
    if isinstance(g["models"], str):
        g["models"] = [g["models"]]
    if isinstance(g["templates"], str):
        g["templates"] = [g["templates"]]
    s = config["segment"]
    if isinstance(s["segmenters"], str):
        s["segmenters"] = [v for v in s["segmenters"].split(",") if v.strip()]
    if not s["segmenters"]:
        raise XPasteError("at least one segmenter is needed (segment.segmenters)")
    b = config["build_pool"]
    if not 0 <= float(b["area_min"]) <= float(b["area_max"]) <= 1:
        raise XPasteError("build_pool.area_min/area_max must satisfy 0 <= min <= max <= 1")
