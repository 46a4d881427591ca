"""The pool header (`pool.json`): constants, type checks, category normalisation.

Every field a reader uses is type-checked on open, so a damaged or hand-edited header gives one
`XPasteError` naming the field and the file instead of a traceback deep inside sampling or pasting.

Header fields (version 2; version 1 has no `codec` and no `incomplete`):
    format       "xpaste-pool"
    version      int, 1 (one PNG per cut-out) or 2 (cut-outs packed into data shards, see `xpaste.pool.layout`)
    categories   list of {"id": int, "name": str, ...}; ids unique; other keys kept, the LVIS ones type-checked
                 (`CATEGORY_FIELDS`: "synonyms" a list of strings, "frequency" "f"/"c"/"r", ...)
    config       dict, how the pool was made (free form)
    codec        str (version 2): how each cut-out's raw RGBA bytes are compressed, one of `CODECS`
    incomplete   dict or absent: present while a writer has the pool open; left behind when a write was
                 interrupted (Ctrl-C, kill, crash), so `xpaste pool info` can say the pool is partial
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

from xpaste.errors import XPasteError
from xpaste.io import read_json
from xpaste.pool.layout import HEADER

POOL_FORMAT = "xpaste-pool"
READ_VERSIONS = (1, 2)
WRITE_VERSION = 2
# Codecs of raw RGBA bytes, all built into pyarrow (no extra dependency); chosen with
# benchmarks/pool_throughput.py: lz4_raw decodes a 170 px photo-like cut-out in ~21 us (PNG: ~750 us).
CODECS = ("lz4_raw", "zstd", "raw")
DEFAULT_CODEC = "lz4_raw"
_HINT = "the pool header is damaged: restore pool.json from a backup or rebuild the pool"
# Optional category fields that xpaste reads (LVIS v1 names; `definition` as xpaste.categories writes it):
# field -> (check, what it must be); null is taken as absent
CATEGORY_FIELDS = {
    "synonyms": (lambda v: isinstance(v, list) and all(isinstance(s, str) for s in v), "a list of strings"),
    "frequency": (lambda v: isinstance(v, str) and v in ("f", "c", "r", ""), 'one of "f", "c", "r" (or "")'),
    "def": (lambda v: isinstance(v, str), "a string"),
    "definition": (lambda v: isinstance(v, str), "a string"),
    "synset": (lambda v: isinstance(v, str), "a string"),
    "image_count": (lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
    "instance_count": (lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def validate_header(header: Any, path: str | os.PathLike, hint: str = _HINT) -> dict:
    """Check the types of every field a reader uses; return the header. Raises XPasteError naming the field,
    with `hint` (default: the header is damaged; the writer checks the categories it is given with its own)."""
    path = Path(path)
    if not isinstance(header, dict):
        raise XPasteError(f"pool.json must be an object {{\"format\": \"{POOL_FORMAT}\", ...}}, got "
                          f"{_type_name(header)}", path, hint)
    if header.get("format") != POOL_FORMAT:
        raise XPasteError(f"pool.json field 'format' must be {POOL_FORMAT!r}, got {header.get('format')!r}: not an "
                          f"xpaste pool header", path, hint)
    version = header.get("version")
    if not _is_int(version):
        raise XPasteError(f"pool.json field 'version' must be an integer, got {_type_name(version)} {version!r}",
                          path, hint)
    if version > max(READ_VERSIONS):
        raise XPasteError(f"pool format version {version} is newer than this xpaste reads ({max(READ_VERSIONS)})",
                          path, "upgrade xpaste")
    if version not in READ_VERSIONS:
        raise XPasteError(f"pool.json field 'version' is {version}; this xpaste reads versions {READ_VERSIONS}",
                          path, hint)
    cats = header.get("categories")
    if not isinstance(cats, list):
        raise XPasteError(f"pool.json field 'categories' must be a list of {{id, name}} objects, got "
                          f"{_type_name(cats)}", path, hint)
    seen: set[int] = set()
    for i, c in enumerate(cats):
        if not isinstance(c, dict):
            raise XPasteError(f"pool.json field 'categories[{i}]' must be an object, got {_type_name(c)}", path, hint)
        if not _is_int(c.get("id")):
            raise XPasteError(f"pool.json field 'categories[{i}].id' must be an integer, got "
                              f"{_type_name(c.get('id'))} {c.get('id')!r}", path, hint)
        if not isinstance(c.get("name"), str):
            raise XPasteError(f"pool.json field 'categories[{i}].name' must be a string, got "
                              f"{_type_name(c.get('name'))}", path, hint)
        for key, (ok, must) in CATEGORY_FIELDS.items():
            if c.get(key) is not None and not ok(c[key]):  # null: as if absent
                raise XPasteError(f"pool.json field 'categories[{i}].{key}' must be {must}, got "
                                  f"{_type_name(c[key])} {_short(c[key])}", path, hint)
        if c["id"] in seen:
            raise XPasteError(f"pool.json field 'categories' lists id {c['id']} twice", path, hint)
        seen.add(c["id"])
    if "config" in header and not isinstance(header["config"], dict):
        raise XPasteError(f"pool.json field 'config' must be an object, got {_type_name(header['config'])}",
                          path, hint)
    if version >= 2:
        codec = header.get("codec")
        if codec not in CODECS:
            raise XPasteError(f"pool.json field 'codec' must be one of {CODECS}, got {codec!r}", path, hint)
    if header.get("incomplete") is not None and not isinstance(header["incomplete"], dict):
        raise XPasteError(f"pool.json field 'incomplete' must be an object, got {_type_name(header['incomplete'])}",
                          path, hint)
    return header


def read_header(root: str | os.PathLike) -> dict:
    """Read and type-check `root/pool.json`. Raises XPasteError when it is missing, malformed or mistyped."""
    root = Path(root)
    if not (root / HEADER).exists():
        raise XPasteError("not an xpaste pool (no pool.json)", root,
                          "create one with `xpaste build-pool` or `xpaste pool import-coco`")
    try:
        header = read_json(root / HEADER)
    except XPasteError as e:  # malformed json, or gone since the check above
        raise XPasteError(e.message, e.path, e.hint or _HINT) from None
    except OSError as e:
        raise XPasteError(f"pool.json cannot be read: {e.strerror or e}", root / HEADER,
                          "check the file's permissions") from None
    return validate_header(header, root / HEADER)


def normalise_categories(categories: Iterable[dict] | dict[int, str] | None) -> list[dict]:
    """[{"id": int, "name": str, ...}] from a list of category dicts or an {id: name} dict; ids unique.

    Raises ValueError on a duplicate id or an id that is not an integer.
    """
    if categories is None:
        return []
    if isinstance(categories, dict):
        categories = [{"id": k, "name": str(v)} for k, v in categories.items()]
    out, seen = [], set()
    for c in categories:
        raw = c["id"]
        if isinstance(raw, bool) or not isinstance(raw, (int, str)) and not hasattr(raw, "__index__"):
            raise ValueError(f"category id {raw!r} is not an integer")
        cid = int(raw)
        if cid in seen:
            raise ValueError(f"duplicate category id {cid}")
        seen.add(cid)
        out.append({**c, "id": cid, "name": str(c.get("name", cid))})
    return out
