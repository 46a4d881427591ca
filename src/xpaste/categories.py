"""The categories a run works on: loaded from a COCO/LVIS json, a text file, or a list of names.

Every stage keys its outputs by category, so a `Category` carries the two forms those outputs need: `text`
(what goes into a prompt or a CLIP query) and `dir_name` (a folder name that is safe on every file system
and unique even when two names sanitise to the same string, because it starts with the id).

The package's one rule for whether two category names are the same lives here too (`normalize_name`,
`match_name`): selection, the same-name checks, pool <-> dataset matching and the adapters' label maps use it.
"""
from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, TypeVar

from xpaste.errors import XPasteError
from xpaste.io import safe_name

K = TypeVar("K")
_SEPARATORS = re.compile(r"[\s_\-]+")
#: How `normalize_name` compares names, for messages: "(ignoring {NAME_RULE})".
NAME_RULE = "case, '_', '-' and spacing"


# ------------------------------------------------------------------------------------------ the name rule
def normalize_name(name: object) -> str:
    """The form in which two category names are compared: the one rule for every place that matches
    categories by name (selection, same-name checks, pool <-> dataset matching, framework label maps).

    Folded: case (`str.casefold`, so "Traffic Light" = "traffic light"); `_`, `-` and runs of whitespace,
    each run becoming one space ("traffic_light", "traffic-light", " traffic  light " -> "traffic light");
    leading and trailing space. Why: LVIS writes words with `_` ("fire_hydrant", "bow_(weapon)"), COCO
    and prompts with spaces ("fire hydrant"), and users, YOLO data.yaml files and mmdet class lists write
    either, or `-`, with any case. Kept: every other character, parentheses, `/` and digits included, so
    LVIS' "bow_(weapon)" -> "bow (weapon)", "bow_(decorative_ribbons)" and "bow-tie" -> "bow tie" stay
    three names, as do "cup" and "cups". No Unicode compatibility folding (NFKC) is done.

    Where a name must pick one category and several fold to it, the match is refused as ambiguous, never
    guessed: `select_categories` (XPasteError), `require_distinct_names` (XPasteError),
    `xpaste.pool.categories.match_categories(by_name=True)` (XPasteError), and
    `xpaste.integrations.common.label_map_from_names` (ValueError). `name` is any object (`str()` of it).
    (Before, `pool/categories.py` folded exactly this, selection did not fold `-`, and the adapters'
    label maps compared names exactly.)
    """
    return _SEPARATORS.sub(" ", str(name)).strip().casefold()


def match_name(name: object, candidates: Mapping[K, object] | Iterable[tuple[K, object]]) -> list[K]:
    """The keys of the `candidates` ({key: name} or (key, name) pairs) that `name` names: those whose name
    equals it exactly when there are any, else those equal under `normalize_name`; in candidate order, []
    when none. More than one key back means `name` is ambiguous: the caller refuses it."""
    items = list(candidates.items() if isinstance(candidates, Mapping) else candidates)
    exact = [key for key, other in items if str(other) == str(name)]
    if exact:
        return exact
    norm = normalize_name(name)
    return [key for key, other in items if normalize_name(other) == norm]


@dataclass(frozen=True)
class Category:
    """One category. `synonyms`, `definition` and `frequency` (r/c/f) are filled from LVIS when present."""

    id: int
    name: str
    synonyms: tuple[str, ...] = ()
    definition: str = ""
    frequency: str = ""

    def __post_init__(self):
        # bool is an int subclass and numpy ints are not ints: accept the latter, refuse the former.
        if isinstance(self.id, bool) or not hasattr(self.id, "__index__"):
            raise XPasteError(f"category id {self.id!r} is not an integer (name {self.name!r})")
        object.__setattr__(self, "id", int(self.id))
        if self.id < 0:
            raise XPasteError(f"category id {self.id} is negative (name {self.name!r})")
        if not isinstance(self.name, str) or not self.name.strip():
            raise XPasteError(f"category {self.id} has an empty or non-string name: {self.name!r}")
        # Rows read back from Parquet hold numpy arrays or lists; normalise so instances stay hashable.
        syn = self.synonyms
        syn = () if syn is None else (syn,) if isinstance(syn, str) else syn
        object.__setattr__(self, "synonyms", tuple(str(s) for s in syn))
        object.__setattr__(self, "definition", str(self.definition or ""))
        object.__setattr__(self, "frequency", str(self.frequency or ""))

    @property
    def text(self) -> str:
        """The name as words: LVIS' `fire_hydrant` -> `fire hydrant`; `bow_(weapon)` -> `bow (weapon)`."""
        return " ".join(self.name.replace("_", " ").split())

    @property
    def dir_name(self) -> str:
        """A unique, file-name-safe folder name: `00003_fire_hydrant`, `00002_cat_dog` for `cat/dog`."""
        return f"{self.id:05d}_{safe_name(self.name)}"


# ----------------------------------------------------------------------------------------------- loaders
def _check_unique(cats: list[Category], where: str | os.PathLike | None) -> list[Category]:
    ids: set[int] = set()
    for c in cats:
        if c.id in ids:
            raise XPasteError(f"duplicate category id {c.id}", where)
        ids.add(c.id)
    return cats


def categories_from_coco(path: str | os.PathLike) -> list[Category]:
    """The categories of a COCO / LVIS instances json (LVIS' synonyms, def and frequency kept)."""
    from xpaste.data.coco import load_coco  # deferred: the dataset module pulls in the mask ops

    dataset = load_coco(path)
    cats = []
    for raw in dataset.categories:
        cats.append(Category(raw["id"], raw["name"], raw.get("synonyms") or (), raw.get("def") or "",
                             raw.get("frequency") or ""))
    if not cats:
        raise XPasteError("the dataset has no categories", path)
    return _check_unique(cats, path)


def categories_from_text(path: str | os.PathLike) -> list[Category]:
    """One name per line; blank lines and lines starting with '#' are skipped; ids are 1..N in file order."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: files saved by Windows editors start with a BOM
    except FileNotFoundError:
        raise XPasteError("category file not found", path) from None
    except UnicodeDecodeError as e:
        raise XPasteError(f"category file is not UTF-8 text: {e}", path) from None
    cats: list[Category] = []
    first_line: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        name = line.strip()
        if not name or name.startswith("#"):
            continue
        if name in first_line:
            raise XPasteError(f"line {lineno}: duplicate category {name!r} (first on line {first_line[name]})",
                              path)
        first_line[name] = lineno
        cats.append(Category(len(cats) + 1, name))
    if not cats:
        raise XPasteError("category file lists no names", path, "one category name per line")
    return cats


def categories_from_names(names: Iterable[str]) -> list[Category]:
    """Categories from names in the given order, ids 1..N. Duplicates and empty names are errors."""
    names = list(names)
    cats: list[Category] = []
    seen: set[str] = set()
    for raw in names:
        name = str(raw).strip()
        if not name:
            raise XPasteError(f"empty category name in {names!r}")
        if name in seen:
            raise XPasteError(f"duplicate category name {name!r}")
        seen.add(name)
        cats.append(Category(len(cats) + 1, name))
    if not cats:
        raise XPasteError("no category names given")
    return cats


def load_categories(source: str | os.PathLike) -> list[Category]:
    """Categories from a .json dataset, an existing text file, or a comma-separated list of names."""
    text = str(source)
    path = Path(os.path.expanduser(text))
    if text.lower().endswith(".json"):
        return categories_from_coco(path)
    if path.is_file():
        return categories_from_text(path)
    if path.is_dir():
        raise XPasteError("expected a category file or a comma-separated list of names, got a folder", path)
    if text.lower().endswith((".txt", ".csv", ".tsv", ".names")):
        # Reading a mistyped file name as a one-category list would silently run the wrong job.
        raise XPasteError("category file not found", path,
                          "pass an existing .txt/.json file or a comma-separated list of names")
    return categories_from_names(part for part in text.split(",") if part.strip())


# --------------------------------------------------------------------------------------------- selection
def same_name_groups(cats: Iterable[Category]) -> list[list[Category]]:
    """Groups of two or more categories whose names coincide under `normalize_name` (case, `_`, `-`,
    spacing: `Cup` / `cup`, `fire_hydrant` / `fire hydrant` / `fire-hydrant`), in catalogue order."""
    groups: dict[str, list[Category]] = {}
    for c in cats:
        groups.setdefault(normalize_name(c.name), []).append(c)
    return [g for g in groups.values() if len(g) > 1]


def require_distinct_names(cats: Iterable[Category], why: str, where: str | os.PathLike | None = None,
                           same: Any = None) -> None:
    """Refuse (one line) categories that share a name when a stage matches them by name.

    why: what the stage does by name, e.g. "retrieval looks images up by category name".
    same: optional `same(a, b) -> bool` that narrows a clash to the pairs whose outputs would coincide (e.g.
        generation, whose prompts may still differ by id-keyed prompts or definitions); default: every pair.
    """
    for group in same_name_groups(cats):
        clash = [c for c in group[1:] if same is None or same(group[0], c)]
        if clash:
            listed = ", ".join(f"{c.id} {c.name!r}" for c in [group[0], *clash])
            raise XPasteError(f"categories {listed} have the same name (ignoring {NAME_RULE}), and {why}: they "
                              "would get the same images under different ids", where,
                              "rename one of them, or keep one with --set categories.select=<ids>")


def _ambiguous(key: str, found: list[Category], how: str) -> XPasteError:
    listed = ", ".join(f"{c.id} {c.name!r}" for c in found)
    return XPasteError(f"category {key!r} is ambiguous: {how} {len(found)} categories ({listed})",
                       hint="select it by its id")


def _match(key: str, cats: list[Category], by_id: dict[int, Category]) -> Category | None:
    """The one category `key` names, None when it names none; XPasteError when it names several."""
    exact = [c for c in cats if c.name == key]
    as_id = by_id.get(int(key)) if key.lstrip("-").isdigit() else None
    if len(exact) > 1:
        raise _ambiguous(key, exact, "the exact name of")
    if exact and as_id is not None and as_id is not exact[0]:
        raise _ambiguous(key, [exact[0], as_id], "the name of one and the id of another:")
    if exact or as_id is not None:
        return exact[0] if exact else as_id
    norm = normalize_name(key)
    for how, found in ((f"the name (ignoring {NAME_RULE}) of", [c for c in cats if normalize_name(c.name) == norm]),
                       ("a synonym of", [c for c in cats if any(normalize_name(s) == norm for s in c.synonyms)])):
        if len(found) > 1:
            raise _ambiguous(key, found, how)
        if found:
            return found[0]
    return None


def select_categories(cats: list[Category], names_or_ids: list[str] | None,
                      where: str | os.PathLike | None = None) -> list[Category]:
    """The categories named in `names_or_ids`, each by exact name, id, name under `normalize_name` (case,
    `_`, `-` and spacing ignored), or (LVIS) synonym under the same rule, tried in that order.

    None or an empty list selects everything. The result keeps the catalogue's order, without repeats, so
    the same selection written in another order gives the same run. Raises XPasteError (one line) for an
    unknown name (all of them, with close matches and the known categories as hint; `where` names the source
    in the message) and for an ambiguous one: a name two categories share at the first level that matches,
    or a key that is one category's exact name and another's id.
    """
    if not names_or_ids:
        return list(cats)
    by_id = {c.id: c for c in cats}
    chosen: set[int] = set()
    unknown: list[str] = []
    for item in names_or_ids:
        key = str(item).strip()
        found = _match(key, cats, by_id)
        if found is None:
            if key not in unknown:
                unknown.append(key)
            continue
        chosen.add(found.id)
    if unknown:  # every entry that matches nothing, in one line: none is ever silently dropped
        names = [c.name for c in cats]
        close = [m for key in unknown for m in difflib.get_close_matches(key, names, n=3, cutoff=0.5)]
        known = ", ".join(f"{c.id} {c.name!r}" for c in cats[:8]) + (f", ... ({len(cats)} in all)"
                                                                     if len(cats) > 8 else "")
        hint = (f"did you mean {', '.join(repr(n) for n in dict.fromkeys(close))}? " if close else "") + \
            f"known: {known}"
        more = f" (+{len(unknown) - 10} more)" if len(unknown) > 10 else ""
        shown = ", ".join(repr(k) for k in unknown[:10]) + more
        raise XPasteError(f"categories.select: unknown {'category' if len(unknown) == 1 else 'categories'} {shown}",
                          where, hint)
    return [c for c in cats if c.id in chosen]


# ------------------------------------------------------------------------------------------------ tables
def categories_to_rows(cats: Iterable[Category]) -> list[dict[str, Any]]:
    """Plain dicts (json / Parquet friendly) with keys id, name, synonyms, definition, frequency."""
    return [{"id": c.id, "name": c.name, "synonyms": list(c.synonyms), "definition": c.definition,
             "frequency": c.frequency} for c in cats]


def categories_from_rows(rows: Iterable[dict[str, Any]]) -> list[Category]:
    """Inverse of `categories_to_rows`; also accepts LVIS-style rows (`def` instead of `definition`)."""
    cats = []
    for row in rows:
        if "id" not in row or "name" not in row:
            raise XPasteError(f"category row {row!r} needs at least 'id' and 'name'")
        definition = row.get("definition", row.get("def", "")) or ""
        cats.append(Category(row["id"], row["name"], row.get("synonyms"), definition, row.get("frequency") or ""))
    return _check_unique(cats, None)
