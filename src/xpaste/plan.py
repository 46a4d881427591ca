"""The closed loop's allocation rule (`xpaste plan`): where to spend the next round's instance budget, and how
often to paste each category, from the detector's per-category AP, the training set's counts and the pool.

(Not to be confused with `xpaste.paste.plan.PastePlan`, the geometry of one paste.)

The rule, one home (version 1, `RULE`):

- repeat factor (LVIS' repeat-factor sampling: Gupta, Dollar, Girshick, "LVIS: A Dataset for Large Vocabulary
  Instance Segmentation", CVPR 2019, arXiv 1908.03195, section 4.3; detectron2's `RepeatFactorTrainingSampler`):
  r_c = max(1, sqrt(t / f_c)), f_c the fraction of training images holding category c (a category in no
  training image counts as in one), t the threshold (`DEFAULT_THRESHOLD` = 0.001, LVIS' value);
- need: w_c = r_c * max(1 - AP_c, MIN_GAP), AP_c the detector's AP of c from `xpaste eval --out` (in [0, 1];
  -1, "nothing to score" (no ground truth of c in the evaluation set), is read as 0: an unmeasured category
  is treated as not learned, so it is not starved). The gap is floored at MIN_GAP = 0.01 so a category the
  detector already masters is still pasted now and then rather than dropped from training. The AP gap is
  this project's combination, in the spirit of BSGAL (Zhu et al., "Generative Active Learning for Long-tailed
  Instance Segmentation", ICML 2024, arXiv 2406.02435: spend generation where it helps the detector) and of
  DiverGen's finding that generating more without choosing can lower rare AP; neither paper gives this
  formula;
- paste weight: paste_weight_c = w_c / max_c w_c (the probability `sampling='weighted'` draws category c is
  proportional to it; equal weights give X-Paste's balanced sampling);
- generate: the budget N is water-filled so the pool after the round is as close as it can be to proportional
  to w: generate_c = max(0, L * w_c - pool_c) with the level L where these sum to N; the real quotas are
  rounded by the largest-remainder method (ties: larger w first, then smaller id), so they sum to exactly N
  whenever some w_c > 0.

Properties (tests/test_plan.py): deterministic (no randomness; the same inputs give the same bytes), and
monotone: at equal counts (training images, pool instances) a category with a higher AP gets a paste weight
and a generate count no larger than one with a lower AP (strictly smaller weight while its gap is above
MIN_GAP). `xpaste plan` writes the plan in one atomic write, so a killed run leaves no plan and a rerun gives
the same file.

Readers: `load_plan` (validates a plan file), `plan_weights` ({category id: paste weight}, checked against the
dataset's or pool's categories): used by `xpaste augment --plan`, `integrations.common.build_copy_paste(plan=)`;
`plan_generate` ({category id: images to make}, checked against a run's categories) and `plan_digest` (what a
planned round is named by): used by `xpaste generate / retrieve / run --plan` (`stages.candidates`).
"""
from __future__ import annotations

import math
import os
from typing import Any, Iterable, Mapping

from xpaste.categories import normalize_name
from xpaste.errors import XPasteError
from xpaste.fingerprint import digest
from xpaste.io import read_json

PLAN_FORMAT = "xpaste-plan"
PLAN_VERSION = 1
RULE = "repeat-factor-ap-gap-v1"
DEFAULT_THRESHOLD = 0.001  # LVIS' repeat-factor threshold t
MIN_GAP = 0.01
RULE_TEXT = {
    "name": RULE,
    "weight": "w_c = max(1, sqrt(t / f_c)) * max(1 - AP_c, 0.01); f_c = training images with c / training images; "
              "AP_c = -1 read as 0",
    "paste_weight": "w_c / max(w)",
    "generate": "max(0, L * w_c - pool_c) with L such that the sum is the budget; largest-remainder rounding",
    "source": "repeat factor: LVIS (Gupta et al., CVPR 2019, arXiv 1908.03195); AP gap: xpaste's closed loop, "
              "after BSGAL (arXiv 2406.02435)",
}
REGENERATE = "write it with: xpaste eval --gt VAL.json --pred RESULTS.json --out metrics.json"


# ----------------------------------------------------------------------------- the rule
def repeat_factor(images: int, n_images: int, threshold: float = DEFAULT_THRESHOLD) -> float:
    """LVIS' repeat factor max(1, sqrt(t / f)), f = max(images, 1) / n_images."""
    f = max(int(images), 1) / max(int(n_images), 1)
    return max(1.0, math.sqrt(threshold / f))


def need(images: int, n_images: int, ap: float | None, threshold: float = DEFAULT_THRESHOLD) -> float:
    """w_c = repeat factor * max(1 - AP, MIN_GAP); AP None or < 0 (nothing scored) counts as 0."""
    a = 0.0 if ap is None or ap < 0 else min(float(ap), 1.0)
    return repeat_factor(images, n_images, threshold) * max(1.0 - a, MIN_GAP)


def allocate(weights: list[float], pool: list[int], budget: int, ids: list[int] | None = None) -> list[int]:
    """Integer generate counts summing to exactly `budget` (0 everywhere when no weight is positive): the budget
    water-filled towards a pool proportional to `weights` (`pool`: instances each category has now), rounded
    by the largest remainder (ties: larger weight, then smaller id)."""
    n = len(weights)
    ids = list(range(n)) if ids is None else list(ids)
    active = [i for i in range(n) if weights[i] > 0]
    if budget <= 0 or not active:
        return [0] * n
    order = sorted(active, key=lambda i: (pool[i] / weights[i], ids[i]))
    sw = sp = 0.0
    level = 0.0
    for j, i in enumerate(order):
        sw += weights[i]
        sp += pool[i]
        level = (budget + sp) / sw
        if j + 1 == len(order) or level <= pool[order[j + 1]] / weights[order[j + 1]]:
            break
    quotas = [max(0.0, round(level * weights[i] - pool[i], 9)) if weights[i] > 0 else 0.0 for i in range(n)]
    counts = [math.floor(q) for q in quotas]
    left = budget - sum(counts)
    ranked = sorted(active, key=lambda i: (-round(quotas[i] - counts[i], 9), -weights[i], ids[i]))
    k = 0
    while left > 0:  # at most len(active) steps unless rounding drifted
        counts[ranked[k % len(ranked)]] += 1
        left -= 1
        k += 1
    return counts


def make_plan(categories: list[dict], n_images: int, budget: int, threshold: float = DEFAULT_THRESHOLD) -> dict:
    """The plan of `categories` (dicts: id, name, images, frequency (optional), ap (None: not measured),
    pool (instances now)), sorted by id. See the module docstring for the rule."""
    if type(budget) is not int or budget < 0:
        raise ValueError(f"budget must be an integer >= 0, got {budget!r}")
    if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and 0 < threshold <= 1):
        raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
    cats = sorted(categories, key=lambda c: int(c["id"]))
    weights = [need(c["images"], n_images, c.get("ap"), threshold) for c in cats]
    pool = [int(c.get("pool", 0)) for c in cats]
    generate = allocate(weights, pool, budget, [int(c["id"]) for c in cats])
    top = max(weights, default=0.0)
    rows = []
    for c, w, g, p in zip(cats, weights, generate, pool):
        ap = c.get("ap")
        rows.append({"id": int(c["id"]), "name": c["name"], "generate": int(g),
                     "paste_weight": round(w / top, 12) if top > 0 else 0.0,
                     "frequency": c.get("frequency"), "images": int(c["images"]), "pool_instances": p,
                     "ap": None if ap is None or ap < 0 else float(ap),
                     "repeat_factor": round(repeat_factor(c["images"], n_images, threshold), 12)})
    return {"format": PLAN_FORMAT, "version": PLAN_VERSION, "budget": int(budget),
            "rule": {**RULE_TEXT, "threshold": float(threshold)}, "training_images": int(n_images),
            "categories": rows}


# ----------------------------------------------------------------------------- the metrics file
def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def load_metrics(path: str | os.PathLike, run: str | None = None) -> dict:
    """{'per_category': {id: AP or -1}, 'categories': {id: name}, 'run': name, 'iou_type', 'kind'} of one run
    of an `xpaste eval --out` file (`run`: its name; None: the first). Refused in one line (XPasteError naming
    the file): not an eval file, no per-category AP (an older xpaste), a run not in the file, ids that are not
    integers or not among the file's categories, APs that are not numbers in [0, 1] or -1."""
    obj = read_json(path)  # NaN / Infinity refused here, naming the line
    if not isinstance(obj, dict) or not isinstance(obj.get("runs"), list) or not obj["runs"]:
        raise XPasteError("not an `xpaste eval --out` metrics file (no 'runs' list)", path, REGENERATE)
    runs = [r for r in obj["runs"] if isinstance(r, dict)]
    if len(runs) != len(obj["runs"]):
        raise XPasteError("a run of the metrics file is not an object", path, REGENERATE)
    if run is None:
        chosen = runs[0]
    else:
        found = [r for r in runs if r.get("name") == run or r.get("pred") == run]
        if not found:
            raise XPasteError(f"no run named {run!r} (runs: {', '.join(str(r.get('name')) for r in runs)})", path)
        chosen = found[0]
    per = chosen.get("per_category")
    if not isinstance(per, dict):
        raise XPasteError(f"run {chosen.get('name')!r} has no per_category AP (written by an xpaste eval without "
                          "it?)", path, REGENERATE)
    cats = obj.get("categories")
    if not (isinstance(cats, list) and all(isinstance(c, dict) and type(c.get("id")) is int
                                           and isinstance(c.get("name"), str) for c in cats)):
        raise XPasteError("the metrics file has no 'categories' list of {id, name} (needed to check it belongs to "
                          "the dataset)", path, REGENERATE)
    names = {c["id"]: c["name"] for c in cats}
    aps: dict[int, float] = {}
    for key, value in per.items():
        try:
            cid = int(key)
        except ValueError:
            raise XPasteError(f"per_category has a non-integer category id {key!r}", path) from None
        if str(cid) != str(key).strip():
            raise XPasteError(f"per_category has a non-integer category id {key!r}", path)
        if cid not in names:
            raise XPasteError(f"per_category names category id {cid}, not among the file's categories", path,
                              REGENERATE)
        if not _is_number(value) or not (value == -1 or 0 <= value <= 1):
            raise XPasteError(f"per_category[{cid}] = {value!r}: expected an AP in [0, 1] or -1 (nothing to score)",
                              path)
        aps[cid] = float(value)
    return {"per_category": aps, "categories": names, "run": chosen.get("name"),
            "iou_type": obj.get("iou_type"), "kind": obj.get("kind")}


def check_same_categories(names: Mapping[int, str], dataset: Mapping[int, str], where: Any, what: str,
                          against: str = "the training dataset") -> None:
    """Refuse (one line) `names` ({id: name}) naming an id `dataset` lacks, or an id whose name differs from
    `dataset`'s under the package's name rule (`categories.normalize_name`): a file of another dataset."""
    unknown = sorted(set(names) - set(dataset))
    if unknown:
        raise XPasteError(f"{what} names category ids {unknown[:10]} that {against} does not define", where,
                          "it was made for another dataset")
    clash = [(cid, names[cid], dataset[cid]) for cid in sorted(names)
             if normalize_name(names[cid]) != normalize_name(dataset[cid])]
    if clash:
        listed = ", ".join(f"{c}: {a!r} vs {b!r}" for c, a, b in clash[:3])
        raise XPasteError(f"{what} names categories differently from {against} ({listed})", where,
                          "it was made for another dataset")


def plan_from_files(metrics: str | os.PathLike, dataset: str | os.PathLike, pool: str | os.PathLike | None,
                    budget: int, threshold: float = DEFAULT_THRESHOLD, run: str | None = None) -> dict:
    """The plan of a metrics file (`xpaste eval --out`), the training json (counts, r/c/f: `category_stats`) and
    the pool (instances per category now; None or an empty pool: 0 everywhere). XPasteError in one line for a
    bad or foreign metrics file, a pool of other categories."""
    from xpaste.data.coco import load_coco
    from xpaste.data.stats import category_stats
    from xpaste.pool.categories import match_categories
    from xpaste.pool.store import InstancePool

    m = load_metrics(metrics, run)
    ds = load_coco(dataset)
    rows = category_stats(ds)
    names = {r["id"]: r["name"] for r in rows}
    check_same_categories(m["categories"], names, metrics, "the metrics file")
    counts: dict[int, int] = {}
    if pool is not None:
        p = InstancePool.open(pool)
        counts = p.counts()
        if counts:
            match_categories(p, ds.categories)  # pooled ids must be the dataset's, with the same names
    cats = [{"id": r["id"], "name": r["name"], "images": r["images"], "frequency": r["frequency"],
             "ap": m["per_category"].get(r["id"]), "pool": counts.get(r["id"], 0)} for r in rows]
    plan = make_plan(cats, len(ds.images), budget, threshold)
    plan["inputs"] = {"metrics": str(metrics), "run": m["run"], "iou_type": m["iou_type"], "kind": m["kind"],
                      "dataset": str(dataset), "pool": None if pool is None else str(pool)}
    return plan


# ----------------------------------------------------------------------------- reading a plan
def load_plan(source: str | os.PathLike | Mapping) -> dict:
    """A plan (a path to `xpaste plan` output, or its parsed dict), validated; XPasteError in one line naming
    the file otherwise."""
    where = None if isinstance(source, Mapping) else source
    plan = dict(source) if isinstance(source, Mapping) else read_json(source)
    if not isinstance(plan, dict) or plan.get("format") != PLAN_FORMAT:
        raise XPasteError("not an xpaste plan", where, "write one with: xpaste plan --metrics M --dataset TRAIN.json "
                                                       "--pool POOL --budget N --out plan.json")
    if plan.get("version") != PLAN_VERSION:
        raise XPasteError(f"unsupported plan version {plan.get('version')!r} (expected {PLAN_VERSION})", where)
    budget, cats = plan.get("budget"), plan.get("categories")
    if type(budget) is not int or budget < 0:
        raise XPasteError(f"budget must be an integer >= 0, got {budget!r}", where)
    if not isinstance(cats, list):
        raise XPasteError("'categories' must be a list", where)
    seen: set[int] = set()
    for i, c in enumerate(cats):
        if not isinstance(c, dict) or type(c.get("id")) is not int or not isinstance(c.get("name"), str):
            raise XPasteError(f"category row #{i} needs an integer 'id' and a 'name'", where)
        if c["id"] in seen:
            raise XPasteError(f"category id {c['id']} appears twice", where)
        seen.add(c["id"])
        if type(c.get("generate")) is not int or c["generate"] < 0:
            raise XPasteError(f"category {c['id']}: generate must be an integer >= 0, got {c.get('generate')!r}", where)
        if not _is_number(c.get("paste_weight")) or c["paste_weight"] < 0:
            raise XPasteError(f"category {c['id']}: paste_weight must be a finite number >= 0, got "
                              f"{c.get('paste_weight')!r}", where)
    if sum(c["generate"] for c in cats) > budget:
        raise XPasteError(f"the generate counts sum to {sum(c['generate'] for c in cats)}, more than the budget "
                          f"{budget}", where)
    return plan


def plan_weights(source: str | os.PathLike | Mapping, *, categories: Iterable[Any] | None = None,
                 pool: Any = None) -> dict[int, float]:
    """{category id: paste_weight} of a plan, for `sampling='weighted'`.

    categories: the dataset's categories (dicts or {id: name}): the plan's ids and names must be theirs.
    pool: an InstancePool (or its interface: `counts()`, `categories`): every pooled category must be in the
    plan (under the same name where the pool names it), and at least one must have a weight > 0.
    XPasteError (one line naming the plan file) otherwise."""
    where = None if isinstance(source, Mapping) else source
    plan = load_plan(source)
    names = {c["id"]: c["name"] for c in plan["categories"]}
    weights = {c["id"]: float(c["paste_weight"]) for c in plan["categories"]}
    if categories is not None:
        known = ({int(k): str(v) for k, v in categories.items()} if isinstance(categories, Mapping)
                 else {int(c["id"]): str(c["name"]) for c in categories})
        check_same_categories(names, known, where, "the plan")
    if pool is not None:
        pooled = sorted(int(c) for c in pool.counts())
        missing = [c for c in pooled if c not in weights]
        if missing:
            raise XPasteError(f"the plan has no weight for the pooled categories {missing[:10]}", where,
                              "it was made for another dataset; rerun xpaste plan with this pool's dataset")
        pool_names = {int(k): str(v) for k, v in getattr(pool, "categories", {}).items()
                      if int(k) in weights and str(v) != str(k)}  # a placeholder name (the id) is not checked
        check_same_categories(pool_names, names, where, "the pool", "the plan")
        if pooled and not any(weights[c] > 0 for c in pooled):
            raise XPasteError("every pooled category has paste_weight 0 in the plan: weighted sampling would "
                              "draw nothing", where)
    return weights


def plan_digest(plan: Mapping) -> str:
    """16 hex digits naming a plan by its content (`fingerprint.digest`: sha256 of its json with sorted keys), so
    the same plan read from another path or written with other spacing has the same name."""
    return digest(dict(plan))


def plan_generate(source: str | os.PathLike | Mapping, categories: Iterable[Any] | Mapping,
                  where: Any = None) -> dict[int, int]:
    """{category id: images to make (the plan's `generate`, an int >= 0)} for every one of a run's
    `categories` (objects with `id` and `name`, dicts with those keys, or {id: name}), in their order.

    A plan made for the run's dataset has a row for each of its categories. Refused in one line (XPasteError
    naming the plan file): a row whose id is a run category under another name (`check_same_categories`), a
    run category with no row, a row asking for images (generate > 0) of a category the run does not have
    (e.g. left out by `categories.select`). Rows of other categories with generate 0 ask for nothing and are
    not read. where: the file errors name when `source` is an already parsed plan."""
    where = where if isinstance(source, Mapping) else source
    plan = load_plan(source)
    if isinstance(categories, Mapping):
        run = {int(k): str(v) for k, v in categories.items()}
    else:
        run = {}
        for c in categories:
            cid, name = (c["id"], c["name"]) if isinstance(c, Mapping) else (c.id, c.name)
            run[int(cid)] = str(name)
    rows = {c["id"]: c for c in plan["categories"]}
    check_same_categories({cid: rows[cid]["name"] for cid in rows if cid in run}, run, where, "the plan",
                          "this run's categories")
    missing = [cid for cid in run if cid not in rows]
    if missing:
        raise XPasteError(f"the plan has no row for {len(missing)} of this run's categories (ids "
                          f"{missing[:10]})", where, "it was made for another dataset; make it with the run's "
                                                     "training json: xpaste plan --dataset TRAIN.json ...")
    foreign = [cid for cid in sorted(rows) if cid not in run and rows[cid]["generate"] > 0]
    if foreign:
        n = sum(rows[cid]["generate"] for cid in foreign)
        raise XPasteError(f"the plan asks for {n} images of {len(foreign)} categories this run does not have "
                          f"(ids {foreign[:10]})", where,
                          "the run's categories are another dataset's or a selection (categories.select); "
                          "set those rows' generate to 0 or run on every category")
    return {cid: int(rows[cid]["generate"]) for cid in run}
