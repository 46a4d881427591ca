"""Matching a pool's categories to a dataset's: by id (checked by name) or by name.

COCO and LVIS (and any two datasets) reuse small integer ids for different things: COCO 1 is "person", LVIS
1 is "aerosol_can". Pasting a pool built on one dataset into another by id alone labels fire hydrants as
trees without a word, so ids are only trusted when the names agree.

Names agree when they are equal under `xpaste.categories.normalize_name`, the package's one name rule
(case, `_`, `-` and spacing ignored, as LVIS writes "fire_hydrant" for COCO's "fire hydrant"; `normalise_name`
here is the same function, kept for old imports), or when one category's name is among the other's LVIS
`synonyms` (LVIS v1 category field). Placeholder pool names ("3", "category_3", written when a pool is built
without names, e.g. `xpaste pool import-xpaste` without `--dataset`) are accepted for their id, with one
warning per pool and process that their names could not be checked.
"""
from __future__ import annotations

import logging
from typing import Any, Iterable

# `normalise_name`: this module's former own rule, now the package's one rule under its old name (old imports).
from xpaste.categories import normalize_name, normalize_name as normalise_name  # noqa: F401
from xpaste.errors import XPasteError

log = logging.getLogger("xpaste.pool")
_warned_placeholders: set[str] = set()  # pools (by folder) already warned about in this process
# What exists to fix a mismatch: the CLI has no by-name option; Python has match_categories(by_name=True).
MISMATCH_HINT = ("use a pool built for this dataset (`xpaste pool import-coco` on it, or `xpaste pool import-xpaste "
                 "--dataset` with its json to name the ids), or map the categories by name from Python: "
                 "pool.remap_categories(match_categories(pool, dataset_categories, by_name=True))")


EMPTY_POOL_HINT = ("fill it first: `xpaste pool import-coco DATASET --images IMAGES --out POOL` (real instances; "
                   "--append adds to an existing pool) or `xpaste build-pool`")


def refuse_empty_pool(pool: Any) -> None:
    """Raise XPasteError (one line naming the pool and why) when no instance of `pool` can be drawn: the pool
    is empty (an import that found nothing, an interrupted first write) or none of its rows is sampleable."""
    drawable = pool.counts() if hasattr(pool, "counts") else len(getattr(pool, "category_ids", ()))
    if drawable:
        return
    where = getattr(pool, "root", None)
    n = len(pool) if hasattr(pool, "__len__") else 0
    why = ("the pool has no instances to paste" if not n else
           f"none of the pool's {n} instances can be pasted (no category of the dataset, or all unreadable)")
    incomplete = getattr(pool, "incomplete", None)
    if incomplete:
        why += (f"; a write to it started {incomplete.get('since', '?')} did not finish: rerun it to complete it "
                f"(or, if it left index parts, rebuild the manifest: xpaste pool repair {where})")
    raise XPasteError(why, where, EMPTY_POOL_HINT)


def _names(category: dict) -> set[str]:
    names = {normalize_name(category.get("name", ""))}
    synonyms = category.get("synonyms")
    if isinstance(synonyms, (list, tuple)):
        names.update(normalize_name(s) for s in synonyms if isinstance(s, str))
    names.discard("")
    return names


def _as_dicts(categories: Iterable[dict] | dict[int, str]) -> dict[int, dict]:
    if isinstance(categories, dict):
        return {int(k): {"id": int(k), "name": str(v)} for k, v in categories.items()}
    return {int(c["id"]): dict(c) for c in categories}


def _is_placeholder(cid: int, name: str) -> bool:
    return normalize_name(name) in (str(cid), f"category {cid}")


def match_categories(pool: Any, dataset_categories: Iterable[dict] | dict[int, str],
                     by_name: bool = False) -> dict[int, int]:
    """Map each pooled category (one with at least one instance) to a dataset category id.

    `pool`: an InstancePool (its header categories, with any `synonyms`, are used). `dataset_categories`: the
    dataset's category dicts ({"id", "name", optional "synonyms"}) or {id: name}.
    An empty pool (no instance that can be drawn) raises XPasteError (`refuse_empty_pool`).
    Default (by id): returns the identity map; raises XPasteError when a pooled id is missing from the dataset
    or its names disagree (one line listing up to 5 disagreements). `by_name=True`: each pooled category maps to
    the dataset category with an agreeing name; pooled categories without one are left out (a warning names
    them; they are never pasted); raises XPasteError when none matches or a name matches several categories.
    """
    pool_cats = {int(c["id"]): c for c in pool.header.get("categories", [])} if hasattr(pool, "header") else {}
    for cid, name in pool.categories.items():
        pool_cats.setdefault(int(cid), {"id": int(cid), "name": name})
    data = _as_dicts(dataset_categories)
    refuse_empty_pool(pool)  # nothing to paste is refused, never a run that pastes nothing without a word
    pooled = sorted(int(c) for c in pool.counts())
    where = getattr(pool, "root", None)
    if not by_name:
        missing = [c for c in pooled if c not in data]
        if missing:
            raise XPasteError(f"the pool has categories {missing[:10]} that the dataset does not define", where,
                              MISMATCH_HINT)
        clashes, unchecked = [], []
        for cid in pooled:
            mine = pool_cats.get(cid, {"name": str(cid)})
            if _is_placeholder(cid, mine.get("name", "")):
                unchecked.append(cid)
                continue
            if _names(mine) & _names(data[cid]):
                continue
            clashes.append(f"{cid} is {mine.get('name')!r} in the pool but {data[cid].get('name')!r} in the dataset")
        if clashes:
            more = f" (+{len(clashes) - 5} more)" if len(clashes) > 5 else ""
            raise XPasteError(f"the pool's category names differ from the dataset's for the same ids: "
                              f"{'; '.join(clashes[:5])}{more}", where, MISMATCH_HINT)
        if unchecked:
            _warn_unchecked(unchecked, where, str(where) if where is not None else f"memory-{id(pool)}")
        return {cid: cid for cid in pooled}
    by_norm: dict[str, set[int]] = {}
    for did, cat in data.items():
        for n in _names(cat):
            by_norm.setdefault(n, set()).add(did)
    mapping, unmatched = {}, []
    for cid in pooled:
        mine = pool_cats.get(cid, {"name": str(cid)})
        exact = by_norm.get(normalize_name(mine.get("name", "")), set())  # the name itself first, then synonyms
        hits = exact or set().union(*(by_norm.get(n, set()) for n in _names(mine)))
        if len(hits) > 1:
            raise XPasteError(f"pool category {cid} {mine.get('name')!r} matches several dataset categories "
                              f"{sorted(hits)[:5]} by name", where, "rename the categories so each name is unique")
        if hits:
            mapping[cid] = hits.pop()
        else:
            unmatched.append(f"{cid} {mine.get('name')!r}")
    if not mapping:
        raise XPasteError("no pool category name matches a dataset category name", where,
                          "check that the pool and the dataset name the same things")
    if unmatched:
        log.warning("%d pool categories have no dataset category of the same name and are not pasted: %s%s",
                    len(unmatched), ", ".join(unmatched[:5]), " ..." if len(unmatched) > 5 else "")
    return mapping


def _warn_unchecked(ids: list[int], where: Any, key: str) -> None:
    if key in _warned_placeholders:
        return
    _warned_placeholders.add(key)
    shown = ", ".join(str(c) for c in ids[:10]) + (" ..." if len(ids) > 10 else "")
    log.warning("%s: %d pool categories have placeholder names (category_N), so their ids could not be checked "
                "against the dataset's names: %s; if the pool was not made for this dataset's ids, the pastes get "
                "the wrong labels (name them: `xpaste pool import-xpaste --dataset DATASET_JSON ...`)",
                where if where is not None else "pool", len(ids), shown)
