"""Per-category statistics of a COCO / LVIS dataset: counts, LVIS frequency group, and a scale prior.

The scale of an instance is sqrt(box area / image area) from the json bbox (no mask decoding), so that the
statistics of LVIS (1.27M annotations) take a second or two: the annotation fields are pulled into numpy
arrays in one pass each and everything else is `np.bincount` / `np.unique`.
"""
from __future__ import annotations

import math
import os
from typing import Any, Iterable, Mapping

import numpy as np

from xpaste.categories import normalize_name
from xpaste.errors import XPasteError
from xpaste.io import read_json, write_json_atomic

STATS_FORMAT = "xpaste-stats"
STATS_VERSION = 1


def lvis_frequency(n_images: int) -> str:
    """LVIS' frequency group from the number of training images holding the category.

    rare: 1-10 images, common: 11-100, frequent: more. A category never seen counts as rare.
    """
    if n_images <= 10:
        return "r"
    if n_images <= 100:
        return "c"
    return "f"


def _index_of(ids: np.ndarray, values: np.ndarray, what: str) -> np.ndarray:
    """Position in `ids` (unique, any order) of each of `values`; raises on unknown values."""
    if len(values) == 0:
        return np.zeros(0, np.int64)
    if len(ids) == 0:
        raise ValueError(f"annotation refers to unknown {what} id {int(values[0])}")
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    pos = np.minimum(np.searchsorted(sorted_ids, values), len(ids) - 1)
    bad = sorted_ids[pos] != values
    if bad.any():
        raise ValueError(f"annotation refers to unknown {what} id {int(values[bad][0])}")
    return order[pos]


def _bbox_wh(anns: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Box widths and heights as float64; missing or malformed boxes give NaN (they carry no scale)."""
    n = len(anns)
    if n == 0:
        return np.zeros(0), np.zeros(0)
    try:
        bb = np.array([a["bbox"] for a in anns], dtype=np.float64)
        if bb.shape == (n, 4):
            return bb[:, 2], bb[:, 3]
    except (KeyError, TypeError, ValueError):
        pass

    # Slow path, only for files with some broken boxes.
    def wh(a: dict) -> tuple[float, float]:
        b = a.get("bbox")
        if isinstance(b, (list, tuple)) and len(b) == 4 and all(type(v) in (int, float) for v in b):
            return float(b[2]), float(b[3])
        return math.nan, math.nan

    arr = np.array([wh(a) for a in anns], dtype=np.float64)
    return arr[:, 0], arr[:, 1]


def category_stats(dataset) -> list[dict[str, Any]]:
    """One row per category, in dataset order: id, name, instances, images, frequency, scale_mean, scale_std.

    Crowd annotations are left out of every count: they are regions of many objects, not instances.
    Pasted annotations (`"pasted": true`, as `xpaste augment` writes them) are left out too: the prior and
    the frequency groups describe the original training set (method.md, Stage 4).
    """
    cats, imgs = dataset.categories, dataset.images
    anns = [a for a in dataset.annotations if not a.get("pasted", False)]
    n_cat, n_img, n_ann = len(cats), len(imgs), len(anns)
    cat_ids = np.fromiter((c["id"] for c in cats), np.int64, count=n_cat)
    img_ids = np.fromiter((i["id"] for i in imgs), np.int64, count=n_img)
    img_area = np.fromiter((i["height"] * i["width"] for i in imgs), np.float64, count=n_img)

    ann_cat = np.fromiter((a["category_id"] for a in anns), np.int64, count=n_ann)
    ann_img = np.fromiter((a["image_id"] for a in anns), np.int64, count=n_ann)
    crowd = np.fromiter((bool(a.get("iscrowd", 0)) for a in anns), bool, count=n_ann)
    bw, bh = _bbox_wh(anns)

    keep = ~crowd
    ci = _index_of(cat_ids, ann_cat[keep], "category")
    ii = _index_of(img_ids, ann_img[keep], "image")
    bw, bh = bw[keep], bh[keep]

    instances = np.bincount(ci, minlength=n_cat)
    # Distinct (category, image) pairs, encoded as one int64 each.
    pairs = np.unique(ci.astype(np.int64) * max(n_img, 1) + ii)
    images = np.bincount(pairs // max(n_img, 1), minlength=n_cat)

    with np.errstate(invalid="ignore"):
        ok = np.isfinite(bw) & np.isfinite(bh) & (bw > 0) & (bh > 0)
    sc = ci[ok]
    scale = np.sqrt(bw[ok] * bh[ok] / img_area[ii[ok]])
    n_scale = np.bincount(sc, minlength=n_cat)
    denom = np.maximum(n_scale, 1)
    mean = np.bincount(sc, weights=scale, minlength=n_cat) / denom
    # Two-pass variance (sum of squared deviations from the mean): stable where E[x^2] - E[x]^2 is not.
    var = np.bincount(sc, weights=(scale - mean[sc]) ** 2, minlength=n_cat) / denom
    std = np.sqrt(var)

    rows = []
    for k, cat in enumerate(cats):
        has = n_scale[k] > 0
        rows.append({
            "id": int(cat["id"]),
            "name": cat["name"],
            "instances": int(instances[k]),
            "images": int(images[k]),
            "frequency": cat["frequency"] if "frequency" in cat else lvis_frequency(int(images[k])),
            "scale_mean": float(mean[k]) if has else None,
            "scale_std": float(std[k]) if has else None,
        })
    return rows


def scale_prior_from_stats(rows: list[dict]) -> dict[int, tuple[float, float]]:
    """{category id: (mean, std)} of the scale, for the categories that have at least one sized box."""
    return {
        int(r["id"]): (float(r["scale_mean"]), float(r.get("scale_std") or 0.0))
        for r in rows
        if r.get("scale_mean") is not None
    }


def write_stats(rows: list[dict], path: str | os.PathLike) -> None:
    write_json_atomic(path, {"format": STATS_FORMAT, "version": STATS_VERSION, "categories": rows}, indent=1)


def load_stats(path: str | os.PathLike) -> list[dict]:
    obj = read_json(path)
    if not isinstance(obj, dict) or obj.get("format") != STATS_FORMAT:
        raise XPasteError("not an xpaste stats file", path, "create one with: xpaste stats DATASET --out FILE")
    if obj.get("version") != STATS_VERSION:
        raise XPasteError(f"unsupported stats version {obj.get('version')!r} (expected {STATS_VERSION})", path)
    rows = obj.get("categories")
    if not isinstance(rows, list):
        raise XPasteError("'categories' must be a list", path)
    seen: set[int] = set()
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or type(row.get("id")) is not int:
            raise XPasteError(f"category row #{i} has no integer 'id'", path)
        if row["id"] in seen:
            raise XPasteError(f"category id {row['id']} appears twice (row #{i})", path,
                              "regenerate it with: xpaste stats DATASET --out FILE")
        seen.add(row["id"])
        for key in ("scale_mean", "scale_std"):
            value = row.get(key)
            if value is not None and type(value) not in (int, float):
                raise XPasteError(f"category id {row['id']}: {key} must be a number or null", path)
        if "name" in row and not isinstance(row["name"], str):
            raise XPasteError(f"category id {row['id']}: name must be a string", path)
    return rows


def _check_pair(key: Any, value: Any, where: str | os.PathLike | None) -> tuple[int, tuple[float, float]]:
    try:
        mean, std = (float(v) for v in value)
        key = int(key)
    except (TypeError, ValueError):
        raise XPasteError(f"scale_prior[{key!r}] must be a (mean, std) pair of numbers, got {value!r}",
                          where) from None
    if not (math.isfinite(mean) and 0 < mean <= 1 and math.isfinite(std) and std >= 0):
        raise XPasteError(f"scale_prior[{key}] = ({mean}, {std}): mean must be in (0, 1] and std >= 0", where)
    return key, (mean, std)


def _known_categories(categories: Iterable[Any]) -> dict[int, str | None]:
    """{id: name or None} of COCO category dicts, `Category` objects, (id, name) pairs or bare ids."""
    known: dict[int, str | None] = {}
    for c in categories:
        if isinstance(c, Mapping):
            known[int(c["id"])] = c.get("name")
        elif hasattr(c, "id") and hasattr(c, "name"):
            known[int(c.id)] = c.name
        elif isinstance(c, tuple):
            known[int(c[0])] = c[1]
        else:
            known[int(c)] = None
    return known


def check_prior_categories(prior: Mapping[int, Any], categories: Iterable[Any],
                           names: Mapping[int, str] | None = None, where: str | os.PathLike | None = None,
                           what: str = "the dataset") -> None:
    """Refuse (one line naming `where`) a scale prior that names a category `categories` does not hold: an id
    unknown there, or (when the prior file carries names) an id whose name differs under the package's name
    rule (`xpaste.categories.normalize_name`). Such a prior was measured on another dataset; used as it is,
    its sizes would silently go to the wrong categories or to none."""
    known = _known_categories(categories)
    unknown = sorted(k for k in prior if k not in known)
    if unknown:
        shown = ", ".join(str(k) for k in unknown[:10]) + (f" (+{len(unknown) - 10} more)" if len(unknown) > 10 else "")
        listed = ", ".join(f"{k} {v!r}" if v is not None else str(k) for k, v in list(known.items())[:10])
        more = f", ... ({len(known)} in all)" if len(known) > 10 else ""
        raise XPasteError(f"the scale prior names {len(unknown)} category id(s) {what} does not hold: {shown}",
                          where, f"{what} holds {listed or 'no categories'}{more}; measure the prior on the "
                          "training set: xpaste stats TRAIN_JSON --out FILE")
    if names:
        differ = [(k, names[k], known[k]) for k in sorted(prior) if k in names and known.get(k) is not None
                  and normalize_name(names[k]) != normalize_name(known[k])]
        if differ:
            shown = ", ".join(f"{k} is {a!r} there, {b!r} here" for k, a, b in differ[:5]) + \
                (f" (+{len(differ) - 5} more)" if len(differ) > 5 else "")
            raise XPasteError(f"the scale prior's category names differ from {what}'s ({len(differ)}): {shown}",
                              where, "measure the prior on the training set: xpaste stats TRAIN_JSON --out FILE")


def resolve_scale_prior(spec: Any, categories: Iterable[Any] | None = None,
                        what: str = "the dataset") -> dict[int, tuple[float, float]]:
    """The per-category scale prior {category id: (mean, std)} of sqrt(box area / image area), from:

    - `None` or `{}`: no prior (an empty dict);
    - a mapping {id: (mean, std)} (validated: finite mean in (0, 1], finite std >= 0);
    - a path to `xpaste stats` output (its rows validated the same way; duplicate ids refused);
    - a path to a COCO/LVIS json: measured on its original annotations (crowd and pasted ones left out).

    categories: when given (COCO category dicts, `Category` objects, (id, name) pairs or ids; `what` names
    them in messages), every id of the prior must be one of them, with the same name when the file names
    its categories (`check_prior_categories`): a prior from another dataset is refused, never silently unused.
    Raises XPasteError (one line naming the file) for unreadable files or malformed values.
    """
    if spec is None:
        return {}
    names: dict[int, str] | None = None
    where = None
    if isinstance(spec, (str, os.PathLike)):
        where = spec
        obj = read_json(spec)
        if isinstance(obj, dict) and obj.get("format") == STATS_FORMAT:
            rows = load_stats(spec)
        elif isinstance(obj, dict) and "annotations" in obj and "images" in obj:
            from xpaste.data.coco import load_coco

            rows = category_stats(load_coco(spec))
        else:
            raise XPasteError("not an `xpaste stats` file nor a COCO/LVIS json", spec,
                              "pass the training set's annotation json or `xpaste stats` output")
        names = {int(r["id"]): r["name"] for r in rows if isinstance(r.get("name"), str)}
        out = dict(_check_pair(k, v, spec) for k, v in scale_prior_from_stats(rows).items())
    elif not hasattr(spec, "items"):
        raise XPasteError(f"scale_prior must be a mapping, a stats file or a dataset json, got {type(spec).__name__}")
    else:
        out = {}
        for k, v in spec.items():
            key, pair = _check_pair(k, v, None)
            if key in out:
                raise XPasteError(f"scale_prior names category {key} twice ({k!r})")
            out[key] = pair
    if categories is not None:
        check_prior_categories(out, categories, names, where, what)
    return out


def check_prior_covers(prior: Mapping[int, Any], category_ids: Iterable[int], what: str = "the pool",
                       where: str | os.PathLike | None = None) -> None:
    """Refuse (one line) a non-empty prior that covers none of `category_ids` (the pool's): every paste would
    silently fall back to the no-prior rule. A prior covering some of them is accepted (a category without
    sized boxes in the training set has none)."""
    ids = sorted({int(c) for c in category_ids})
    if prior and ids and not any(c in prior for c in ids):
        shown = ", ".join(map(str, ids[:10])) + (f" (+{len(ids) - 10} more)" if len(ids) > 10 else "")
        theirs = sorted(prior)
        listed = ", ".join(map(str, theirs[:10])) + (f" (+{len(theirs) - 10} more)" if len(theirs) > 10 else "")
        raise XPasteError(f"the scale prior covers none of {what}'s category ids ({shown}); it names {listed}",
                          where, "measure the prior on the training set the pool's ids come from "
                          "(xpaste stats TRAIN_JSON --out FILE), or pass scale_prior={} for none")
