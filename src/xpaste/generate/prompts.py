"""Prompts and seeds for text-to-image generation.

Every generated image is named by (category, index): its prompt and its seed are pure functions of those,
the model and the run's base seed. That is what makes a run resumable and reproducible: a resumed, reordered
or differently batched / parallelised run regenerates exactly the images it would have made anyway.
"""
from __future__ import annotations

import hashlib
import os
import re
import string
from pathlib import Path
from typing import Mapping, Sequence

from xpaste.categories import Category
from xpaste.errors import XPasteError
from xpaste.io import read_json

#: X-Paste's generation prompt (LVIS names have their underscores replaced by spaces).
DEFAULT_TEMPLATES: list[str] = ["a photo of a single {name}"]

#: The successors' variant: the LVIS definition disambiguates names such as "bow (weapon)", and a plain
#: background makes the cut-out easier for the segmenters.
DEFINITION_TEMPLATES: list[str] = ["a photo of a single {name}, {definition}, in a white background"]

#: The reference code's scene prompts for background canvases (sampled uniformly there).
BACKGROUND_PROMPTS: list[str] = [
    "a photo of city scene.",
    "a photo of street.",
    "a photo in the room.",
    "a photo of nature",
    "a photo of village",
    "a photo of wild land",
]

PLACEHOLDERS = ("name", "definition", "synonym")


def _words(text: str) -> str:
    return " ".join(str(text).replace("_", " ").split())


def template_fields(template: str) -> list[str]:
    """The placeholders of a template; raises XPasteError for malformed or unknown ones."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:  # a lone "{" or "}"
        raise XPasteError(f"malformed prompt template {template!r}: {e}",
                          hint="write a literal brace as {{ or }}") from None
    fields = []
    for _, field, spec, conversion in parsed:
        if field is None:
            continue
        # Attribute/index access ({name.upper}, {name[0]}), format specs and conversions would let a
        # template reach into Python objects; only the plain placeholders are allowed.
        if field not in PLACEHOLDERS or spec or conversion:
            raise XPasteError(f"prompt template {template!r} uses unknown placeholder {{{field}}}",
                              hint=f"available: {', '.join('{' + p + '}' for p in PLACEHOLDERS)}")
        fields.append(field)
    return fields


def render_prompt(template: str, category: Category, index: int = 0) -> str:
    """Fill `{name}`, `{definition}` and `{synonym}` (synonym number `index`, cycling; the name if none).

    A category without a definition renders `{definition}` as empty and the now-dangling comma is removed,
    so one template works for LVIS and for plain name lists.
    """
    fields = template_fields(template)
    synonyms = [s for s in category.synonyms if s.strip()]
    values = {
        "name": category.text,
        "definition": " ".join(category.definition.split()),
        "synonym": _words(synonyms[index % len(synonyms)]) if synonyms else category.text,
    }
    text = template.format(**values)
    if "definition" in fields and not values["definition"]:
        text = re.sub(r"\s*,(\s*,)+", ",", text)  # "cup, , in a white background" -> "cup, in a ..."
        text = re.sub(r"^\s*,\s*|\s*,\s*$", "", text)
        text = " ".join(text.split())
    return text


def load_prompt_file(path: str | os.PathLike) -> dict[str, list[str]]:
    """Per-category prompts: json `{"name or id": ["prompt", ...] or "prompt"}` or text lines `name<TAB>prompt`.

    Prompts from this file are used as written (no placeholders): they are already specific to a category,
    and LLM-written text may contain braces.
    """
    path = Path(path)
    out: dict[str, list[str]] = {}
    if path.suffix.lower() == ".json":
        obj = read_json(path)
        if not isinstance(obj, dict):
            raise XPasteError(f"prompt file holds a {type(obj).__name__}, expected an object "
                              '{"category": ["prompt", ...]}', path)
        for key, value in obj.items():
            prompts = [value] if isinstance(value, str) else value
            if not isinstance(prompts, list) or not all(isinstance(p, str) and p.strip() for p in prompts):
                raise XPasteError(f"prompts for {key!r} must be a non-empty string or a list of them", path)
            if prompts:
                out[str(key).strip()] = [p.strip() for p in prompts]
        return out
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise XPasteError("prompt file not found", path) from None
    except UnicodeDecodeError as e:
        raise XPasteError(f"prompt file is not UTF-8 text: {e}", path) from None
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, tab, prompt = line.partition("\t")
        if not tab or not key.strip() or not prompt.strip():
            raise XPasteError(f"line {lineno}: expected 'category<TAB>prompt', got {line!r}", path)
        out.setdefault(key.strip(), []).append(prompt.strip())
    return out


def _lookup(category: Category, per_category: Mapping[str, Sequence[str]]) -> Sequence[str] | None:
    for key in (str(category.id), category.name, category.text):
        if per_category.get(key):
            return per_category[key]
    return None


def check_prompt_keys(per_category: Mapping[str, Sequence[str]], categories: Sequence[Category],
                      path: str | os.PathLike | None = None) -> None:
    """Refuse keys that match no category: a typo would otherwise silently fall back to the templates."""
    known = {k for c in categories for k in (str(c.id), c.name, c.text)}
    unknown = sorted(k for k in per_category if k not in known)
    if unknown:
        shown = ", ".join(repr(k) for k in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise XPasteError(f"prompts given for {len(unknown)} unknown categories: {shown}", path,
                          "keys must be a category name or id")


def prompt_for(category: Category, index: int, templates: Sequence[str] | None = None,
               per_category: Mapping[str, Sequence[str]] | None = None) -> str:
    """The prompt of image `index` of a category: its own prompts if any, else the templates, rotating.

    With templates, image i uses template i % T and synonym i // T, so that all (template, synonym) pairs
    are used before any repeats.
    """
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    own = _lookup(category, per_category) if per_category else None
    if own:
        return own[index % len(own)]
    templates = list(templates) if templates else DEFAULT_TEMPLATES
    return render_prompt(templates[index % len(templates)], category, index // len(templates))


def image_seed(base_seed: int, model: str, category_id: int, index: int) -> int:
    """A 63-bit seed from sha256(base_seed, model, category_id, index).

    It depends only on what the image is, never on batch size, order or worker count. 63 bits keep it a
    non-negative int64 (Parquet columns, torch.Generator.manual_seed).
    """
    key = f"xpaste-seed\x1f{int(base_seed)}\x1f{model}\x1f{int(category_id)}\x1f{int(index)}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") >> 1
