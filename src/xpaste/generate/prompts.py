"""Prompts and seeds for text-to-image generation.

Every generated image is named by (category, index): its prompt and its seed are pure functions of those,
the model and the run's base seed. That is what makes a run resumable and reproducible: a resumed, reordered
or differently batched / parallelised run regenerates exactly the images it would have made anyway.
"""
from __future__ import annotations

import difflib
import hashlib
import os
import re
import string
from pathlib import Path
from typing import Any, Mapping, Sequence

from xpaste.categories import NAME_RULE, Category, match_name
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
            if not isinstance(prompts, list) or not prompts or \
                    not all(isinstance(p, str) and p.strip() for p in prompts):
                raise XPasteError(f"prompts for {key!r} must be a non-empty string or a non-empty list of them",
                                  path)
            if str(key).strip() in out:
                raise XPasteError(f"key {key!r} appears twice (keys are compared without surrounding spaces)",
                                  path, "merge their prompts under one key")
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


def _key_matches(key: str, categories: Sequence[Category]) -> list[Category]:
    """The categories a prompt-file key names: by id (a key of digits), and by name under the package's one
    name rule (`xpaste.categories.match_name`: the exact name first, else case, '_', '-' and spacing
    ignored). Several back means the key is ambiguous."""
    by_name = match_name(key, [(k, c.name) for k, c in enumerate(categories)])
    found = [categories[k] for k in by_name]
    if key.isdigit():
        found += [c for c in categories if c.id == int(key) and c not in found]
    return found


def resolve_prompt_keys(per_category: Mapping[str, Sequence[str]], categories: Sequence[Category],
                        path: str | os.PathLike | None = None) -> dict[int, list[str]]:
    """{category id: prompts} of a prompt file (`load_prompt_file`) for `categories`.

    A key names a category by its id or by its name under `xpaste.categories.match_name` ("Cup" is "cup",
    "fire hydrant" is "fire_hydrant"); a category without a key keeps the templates. Refused in one line
    (XPasteError naming `path`), never silently dropped: keys that name no category (listing them and the
    categories that exist), a key naming several categories (ambiguous), two keys naming the same category.
    """
    resolved: dict[int, list[str]] = {}
    key_of: dict[int, str] = {}
    unknown: list[str] = []
    for raw, prompts in per_category.items():
        key = str(raw).strip()
        found = _key_matches(key, categories)
        if not found:
            unknown.append(key)
            continue
        if len(found) > 1:
            listed = ", ".join(f"{c.id} {c.name!r}" for c in found)
            raise XPasteError(f"prompt key {key!r} is ambiguous: it names {len(found)} categories ({listed})",
                              path, f"key the prompts by category id, e.g. {found[0].id}")
        cat = found[0]
        if cat.id in resolved:
            raise XPasteError(f"prompt keys {key_of[cat.id]!r} and {key!r} both name category {cat.id} "
                              f"{cat.name!r} (names compared ignoring {NAME_RULE})", path,
                              "merge their prompts under one key")
        resolved[cat.id], key_of[cat.id] = list(prompts), key
    if unknown:
        more = f" (+{len(unknown) - 10} more)" if len(unknown) > 10 else ""
        shown = ", ".join(repr(k) for k in unknown[:10]) + more
        names = [c.name for c in categories]
        close = sorted({m for k in unknown for m in difflib.get_close_matches(k, names, n=2, cutoff=0.6)})
        known = ", ".join(f"{c.id} {c.name!r}" for c in categories[:10]) + \
            (f", ... ({len(categories)} in all)" if len(categories) > 10 else "")
        hint = (f"did you mean {', '.join(repr(n) for n in close)}? " if close else "") + \
            f"keys are category names (ignoring {NAME_RULE}) or ids; this run's categories: {known}"
        raise XPasteError(f"prompt keys for unknown categories: {shown}", path, hint)
    return resolved


def check_prompt_keys(per_category: Mapping[str, Sequence[str]], categories: Sequence[Category],
                      path: str | os.PathLike | None = None) -> None:
    """Refuse keys that match no category, or several, or the same one as another key: a typo would otherwise
    silently fall back to the templates (`resolve_prompt_keys` gives the rule)."""
    resolve_prompt_keys(per_category, categories, path)


def _lookup(category: Category, per_category: Mapping[Any, Sequence[str]]) -> Sequence[str] | None:
    """The prompts of `category` in `per_category`: keyed by category id (int, as `resolve_prompt_keys` gives),
    or by the file's own keys (id as text, or the name under `match_name`). Keys that name the category in
    two ways are refused (XPasteError), as `resolve_prompt_keys` does."""
    if category.id in per_category:
        return per_category[category.id]
    keys = [k for k in per_category if isinstance(k, str)]
    found = [k for k in keys if k.strip() == str(category.id)]
    found += [keys[i] for i in match_name(category.name, [(i, k.strip()) for i, k in enumerate(keys)])
              if keys[i] not in found]
    if len(found) > 1:
        raise XPasteError(f"prompt keys {', '.join(repr(k) for k in found)} all name category {category.id} "
                          f"{category.name!r} (names compared ignoring {NAME_RULE})", hint="keep one of them")
    return per_category[found[0]] if found else None


def prompt_for(category: Category, index: int, templates: Sequence[str] | None = None,
               per_category: Mapping[Any, Sequence[str]] | None = None) -> str:
    """The prompt of image `index` of a category: its own prompts if any, else the templates, rotating.

    per_category: {category id: prompts} (`resolve_prompt_keys`, which also refuses keys naming no category),
    or a prompt file's own {key: prompts}, a key being the category's id or its name under
    `xpaste.categories.match_name`.

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


def image_seed(base_seed: int, model: str, category_id: int, index: int, plan_round: str = "") -> int:
    """A 63-bit seed from sha256(base_seed, model, category_id, index[, plan_round]).

    It depends only on what the image is, never on batch size, order or worker count. 63 bits keep it a
    non-negative int64 (Parquet columns, torch.Generator.manual_seed). plan_round: the digest naming a planned
    round (`xpaste generate --plan`), so image i of a category in that round has a seed of its own, distinct
    from image i of the run's other rounds; "" (the round without a plan) gives the seeds runs always had.
    """
    key = f"xpaste-seed\x1f{int(base_seed)}\x1f{model}\x1f{int(category_id)}\x1f{int(index)}"
    key = (key + (f"\x1f{plan_round}" if plan_round else "")).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") >> 1
