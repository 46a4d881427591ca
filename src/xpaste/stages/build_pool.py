"""Stage 3: filter scored cut-outs into the instance pool, as X-Paste builds it (method.md, Stage 3).

Rules, each from method.md (X-Paste's paper and reference code) unless said otherwise:
- per candidate image, the segmenter whose cut-out has the highest CLIP score wins (an empty mask never wins);
- per category an adaptive bar `bar_c = min(t, max_score_c - d)`, the max running over EVERY (segmenter, image)
  score of the category, not only the per-image winners; reference t = 21 (cosine 0.21), d = 1;
- the winner's binary-mask area fraction must lie in [area_min, area_max] (reference [0.05, 0.95]);
- the cut-out is the largest external contour of the binary mask (> 128) with its holes filled, cropped to its
  box, saved as RGBA whose alpha is the segmenter's soft value (0-255) inside that filled region and 0 outside
  it, as the reference's `clean_pool.py` saves it (`alpha: soft`, the default; `alpha: binary` puts 255 on the
  whole region instead, xpaste's rule before issue 18) (`cutout`);
- near-duplicate removal by embedding cosine is opt-in (`dedup`, default off: the reference has none);
- DiverGen's filter (opt-in, or preset `divergen`): keep a cut-out when the mean CLIP image-image cosine to its
  category's real instances is >= 0.6, generated cut-outs shown on black and real instances as their box padded
  by 40 px with a blurred background (`xpaste.score.present`).

Every decision is written to `<run>/build_pool/decisions.parquet` (for the report) and the pool is appended in a
fixed order. Instance ids are content hashes, so a killed build resumes to the same pool AND the same decision
log: a cut-out an earlier, interrupted attempt already stored keeps its id and counts as added.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from xpaste.core.instance import content_hash, crop_to_alpha
from xpaste.errors import XPasteError
from xpaste.fingerprint import first_difference, outputs_digest, pool_digest
from xpaste.io import check_output, read_json, write_json_atomic, write_parquet_atomic
from xpaste.jobs import JobReport
from xpaste.ops.masks import binarize, largest_filled_component
from xpaste.pipeline.rundir import RunDir, load_mask, load_rgb, resolve_categories
from xpaste.pipeline.runner import as_dict
from xpaste.pipeline.shards import read_stage
from xpaste.pool.header import HEADER
from xpaste.pool.store import InstancePool
from xpaste.pool.writer import POOL_ENTRIES
from xpaste.registry import load_backend
from xpaste.score import SCORERS, composite_on_black
from xpaste.score.filters import AREA, BAR, EMPTY, KEPT, dedup_by_embedding, select_instances
from xpaste.score.present import RealViews
from xpaste.stages.candidates import candidate_schema, read_candidates
from xpaste.stages.score import ScoreStage
from xpaste.stages.segment import SegmentStage
from xpaste.typed import ConfigError, Section, key_field

__all__ = ["PRESETS", "DEFAULT_PRESET", "apply_preset", "build_pool", "cutout", "decisions_schema", "RealViews",
           "KEPT", "EMPTY", "AREA", "BAR", "DUPLICATE", "IDENTICAL", "FAR"]

log = logging.getLogger(__name__)

#: Each paper's documented defaults for the pool-building options (`build_pool.preset`). An option left unset
#: (None) takes its preset's value; a value given in the config or on the command line wins.
#: - xpaste (method.md Stage 3, X-Paste reference code): t = 21 (100 x cosine 0.21), d = 1, area fraction in
#:   [0.05, 0.95], no near-duplicate removal, no real-instance filter.
#: - divergen (DiverGen, Fan et al. CVPR 2024, as summarised in method.md Stage 3): X-Paste's filters plus the
#:   CLIP image-image filter against real instances, mean cosine >= 0.6 (needs build_pool.real_pool).
PRESETS: dict[str, dict[str, Any]] = {
    "xpaste": {"t": 21.0, "d": 1.0, "area_min": 0.05, "area_max": 0.95, "dedup": None,
               "real_filter": False, "real_min_similarity": 0.6},
    "divergen": {"t": 21.0, "d": 1.0, "area_min": 0.05, "area_max": 0.95, "dedup": None,
                 "real_filter": True, "real_min_similarity": 0.6},
}
DEFAULT_PRESET = "xpaste"

#: The cut-out alpha rules (`build_pool.alpha`, `cutout`): "soft" is the reference's (`clean_pool.py`: the
#: segmenter's 0-255 value times the filled largest region), "binary" puts 255 on the whole filled region.
ALPHA_RULES = ("soft", "binary")
DEFAULT_ALPHA = "soft"

#: Decisions a candidate can get, in the order they are checked (the first four from `select_instances`).
DUPLICATE, IDENTICAL, FAR = "near duplicate", "identical pixels", "far from real instances"


NAME = "build-pool"
#: The config keys `xpaste build-pool` offers as flags (besides the run's common ones), and its help line.
CLI_KEYS = ["build_pool.preset", "build_pool.out", "build_pool.t", "build_pool.d", "build_pool.area_min",
            "build_pool.area_max", "build_pool.dedup", "build_pool.real_pool", "build_pool.alpha"]
HELP = ("Select the best cut-out per image, filter by CLIP bar, area and duplicates, and write the pool (light: "
        "always runs here, on the driver; --engine is accepted so one command line serves every stage).")


@dataclass(frozen=True)
class BuildPoolConfig(Section):
    """X-Paste's filter (method.md, Stage 3): CLIP bar min(t, max - d), area-fraction range, optional dedup and
    DiverGen filter. Options left null take the value of `preset`, whose documented values live in
    `PRESETS` (xpaste: t 21, d 1, area [0.05, 0.95], no dedup). `alpha` is the cut-out's alpha rule (`cutout`):
    soft, the reference's, by default."""

    preset: Optional[str] = key_field(None, "documented option bundle (default xpaste)", choices=tuple(PRESETS))
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
    alpha: str = key_field(DEFAULT_ALPHA, "cut-out alpha: soft (the segmenter's value inside the filled region, as "
                           "the reference saves it) or binary (255 on the region)", choices=ALPHA_RULES)

    def _check(self) -> None:
        if self.area_min is not None and self.area_max is not None and self.area_min > self.area_max:
            prefix = getattr(self, "_prefix", "")
            raise ConfigError(f"config keys {prefix}area_min/area_max: need area_min <= area_max, got "
                              f"{self.area_min} > {self.area_max}")



def _section(config: Any, name: str) -> dict:
    """A config section as a dict, whether the config is nested dicts or (typed) dataclasses."""
    value = config[name] if isinstance(config, Mapping) else getattr(config, name)
    if isinstance(value, Mapping):
        return dict(value)

    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else dict(vars(value))


def check_outputs(run_dir: str | Path, config: Any) -> Path:
    """The run folder and the pool folder can be written (`RunDir.check_output`, `xpaste.io.check_output`: not a
    file, not under one, no foreign files; a pool, pool.json, is the build's own to resume or refuse by its
    record). XPasteError otherwise, before anything is read or written. Returns the pool folder."""
    out = _section(config, "build_pool").get("out")
    RunDir(run_dir).check_output({"build_pool": {"out": out}})
    pool = Path(out or RunDir(run_dir).default_pool_dir)
    check_output(pool, writes=POOL_ENTRIES, what="the pool folder (build_pool.out, --out)", own=(HEADER,))
    return pool


def _top(config: Any, key: str) -> Any:
    return config[key] if isinstance(config, Mapping) else getattr(config, key)


def apply_preset(options: Mapping, name: str | None = None) -> dict:
    """The build_pool options with every unset (None) option taken from the preset `name`.

    options: the `build_pool` section (t, d, area_min, area_max, dedup, real_pool, real_min_similarity, ...).
    name: "xpaste" or "divergen"; None reads options["preset"], itself defaulting to "xpaste".
    Returns a new dict with `preset` and `real_filter` (bool: the DiverGen filter runs) added, and `alpha`
    (the cut-out alpha rule, default "soft") filled in when unset.
    Raises XPasteError for an unknown preset or alpha rule, or for `divergen` without a real_pool.
    """
    name = name or options.get("preset") or DEFAULT_PRESET
    if name not in PRESETS:
        raise XPasteError(f"unknown build_pool.preset {name!r}", hint=f"choose one of {', '.join(PRESETS)}")
    out = {"out": None, "real_pool": None, "flush_every": 256, **options}  # a partial mapping is fine
    for key, value in PRESETS[name].items():
        if out.get(key) is None:
            out[key] = value
    if out.get("alpha") is None:
        out["alpha"] = DEFAULT_ALPHA
    if out["alpha"] not in ALPHA_RULES:
        raise XPasteError(f"unknown build_pool.alpha {out['alpha']!r}",
                          hint=f"choose one of {', '.join(ALPHA_RULES)}")
    out["preset"] = name
    out["real_filter"] = bool(PRESETS[name]["real_filter"] or out.get("real_pool"))
    if out["real_filter"] and not out.get("real_pool"):
        raise XPasteError(f"preset {name!r} filters cut-outs against real instances, but build_pool.real_pool "
                          "is not set", hint="make one with `xpaste pool import-coco DATASET --images DIR --out "
                          "REAL` and pass --real-pool REAL")
    if not 0 <= float(out["area_min"]) <= float(out["area_max"]) <= 1:
        raise XPasteError("build_pool.area_min/area_max must satisfy 0 <= min <= max <= 1")
    return out


def _decisions(run_dir: Path, config: Any, b: dict) -> list[dict]:
    candidates = {r["candidate_id"]: r for r in read_candidates(run_dir)}
    segments = {(r["candidate_id"], r["segmenter"]): r
                for r in read_stage(run_dir / "segment", SegmentStage.schema(None)).to_pylist()}
    scores = [r for r in read_stage(run_dir / "score", ScoreStage.schema(None)).to_pylist()
              if r["candidate_id"] in candidates and (r["candidate_id"], r["segmenter"]) in segments]
    if not scores and _section(config, "score")["clip"] is None:
        return _unscored_decisions(candidates, segments, config, b)
    if not scores:
        raise XPasteError("no CLIP scores in this run", run_dir,
                          "run `xpaste score` first, or build without CLIP: --set score.clip=null")
    # the score table as (segmenter, candidate) matrices: segmenters in config order (ties go to the earlier)
    configured = list(_section(config, "segment")["segmenters"])
    order = configured + sorted({r["segmenter"] for r in scores} - set(configured))
    row_of = {name: i for i, name in enumerate(order)}
    cids = sorted({r["candidate_id"] for r in scores})
    col_of = {cid: j for j, cid in enumerate(cids)}
    score = np.full((len(order), len(cids)), np.nan)
    area = np.zeros((len(order), len(cids)))  # a missing (segmenter, image) pair is an empty mask: never wins
    present = np.zeros((len(order), len(cids)), bool)
    by_pair = {}
    for r in scores:
        i, j = row_of[r["segmenter"]], col_of[r["candidate_id"]]
        score[i, j] = r["clip_score"]
        area[i, j] = segments[(r["candidate_id"], r["segmenter"])]["area_frac"]
        present[i, j] = True
        by_pair[(i, j)] = r
    sel = select_instances(score, area, [int(candidates[c]["category_id"]) for c in cids], float(b["t"]),
                           float(b["d"]), (float(b["area_min"]), float(b["area_max"])))
    decisions = []
    for j, cid in enumerate(cids):
        i = int(sel.winner[j]) if sel.winner[j] >= 0 else int(np.flatnonzero(present[:, j])[0])
        seg, row = segments[(cid, order[i])], by_pair[(i, j)]
        empty = sel.reason[j] == EMPTY
        decisions.append({**candidates[cid], "segmenter": order[i],
                          "clip_score": float("nan") if empty else float(row["clip_score"]),
                          "area_frac": float(seg["area_frac"]), "mask_path": seg["mask_path"],
                          "embedding": None if empty else np.asarray(row["embedding"], np.float32),
                          "decision": str(sel.reason[j]), "bar": float(sel.bar[j])})
    if b["dedup"] is not None:
        for cat_id in sorted({d["category_id"] for d in decisions}):
            kept = sorted((d for d in decisions if d["category_id"] == cat_id and d["decision"] == KEPT),
                          key=lambda d: (-d["clip_score"], d["candidate_id"]))
            if len(kept) > 1:
                keep = dedup_by_embedding(np.stack([d["embedding"] for d in kept]), float(b["dedup"]))
                for d, k in zip(kept, keep):
                    if not k:
                        d["decision"] = DUPLICATE
    return decisions


def _unscored_decisions(candidates: dict, segments: dict, config: Any, b: dict) -> list[dict]:
    """Without CLIP weights (score.clip: null): per image, the first segmenter in the config whose mask area is
    in range wins; there is no CLIP bar and no embedding dedup. Every record says clip_score NaN."""
    lo, hi = float(b["area_min"]), float(b["area_max"])
    order = list(_section(config, "segment")["segmenters"])
    by_candidate: dict[str, list[dict]] = {}
    for (cid, _), seg in segments.items():
        by_candidate.setdefault(cid, []).append(seg)
    decisions = []
    for cid in sorted(by_candidate):
        if cid not in candidates:
            continue
        segs = sorted(by_candidate[cid], key=lambda r: order.index(r["segmenter"]) if r["segmenter"] in order else 99)
        chosen = next((r for r in segs if r["area_frac"] > 0 and lo <= r["area_frac"] <= hi), segs[0])
        decision = KEPT if chosen["area_frac"] > 0 and lo <= chosen["area_frac"] <= hi else (
            EMPTY if chosen["area_frac"] <= 0 else AREA)
        decisions.append({**candidates[cid], "segmenter": chosen["segmenter"], "clip_score": float("nan"),
                          "area_frac": float(chosen["area_frac"]), "mask_path": chosen["mask_path"],
                          "embedding": None, "decision": decision, "bar": float("nan")})
    return decisions


def _real_similarity_filter(run_dir: Path, decisions: list[dict], config: Any, b: dict) -> None:
    """DiverGen: drop kept cut-outs whose mean CLIP cosine to the category's real instances is below
    b["real_min_similarity"] (0.6). Generated images are shown whole with black outside the binary mask, real
    instances through `RealViews`; both embedded by the model that scored the cut-outs. Categories without real
    instances are not filtered. Sets d["real_similarity"] on every compared decision."""

    s = _section(config, "score")
    recorded = run_dir / "score" / "stage.json"
    if recorded.exists():  # the real instances must be embedded by the model that scored the cut-outs

        s.update({k: v for k, v in read_json(recorded)["fingerprint"].items() if k in ("clip", "pretrained")})
    real = InstancePool.open(b["real_pool"])
    scorer = load_backend(SCORERS["clip"], "clip")(s["clip"], s["pretrained"], device=_top(config, "device"),
                                                   batch_size=int(s["batch_size"]))
    views = RealViews(real)
    threshold = float(b["real_min_similarity"])
    for cat_id in sorted({d["category_id"] for d in decisions if d["decision"] == KEPT}):
        rows = real.rows_of(cat_id)
        if len(rows) == 0:
            continue  # no real instances to compare with: nothing to say
        ref = scorer.embed_images([views.view(int(r)) for r in rows])
        shown, kept = [], []
        for d in decisions:
            if d["category_id"] == cat_id and d["decision"] == KEPT:
                try:
                    shown.append(composite_on_black(load_rgb(run_dir, d["path"]), load_mask(run_dir, d["mask_path"])))
                    kept.append(d)
                except (XPasteError, ValueError) as e:
                    d["decision"] = f"unreadable: {getattr(e, 'message', e)}"
        for d, emb in zip(kept, scorer.embed_images(shown)):
            d["real_similarity"] = float(np.mean(ref @ emb))
            if d["real_similarity"] < threshold:
                d["decision"] = FAR
    if views.fallbacks:
        log.warning("%d real instances were shown without their source image (DiverGen pads the box by 40 px "
                    "on the real image): make the real pool with `xpaste pool import-coco`", views.fallbacks)


def cutout(image: np.ndarray, soft: np.ndarray, alpha: str = DEFAULT_ALPHA) -> np.ndarray | None:
    """X-Paste's pool cut-out: the largest external contour of `soft > 128`, holes filled, cropped to its box.

    image: (H, W, 3) uint8 RGB; soft: (H, W) 0-255 soft mask (or bool, taken as 0 / 255). alpha: "soft" (the
    default) keeps the segmenter's soft value inside the filled region and 0 outside it, as the reference saves
    the cut-out (`clean_pool.py`: `img_RGBA[:, :, 3:] *= seg_mask`, the alpha being the segmenter's mask PNG and
    `seg_mask` the filled largest contour of `alpha > 128`); "binary" puts 255 on the whole filled region.
    With "soft", pixels of the region whose soft value is 0 (e.g. a hole the filling closed) have alpha 0, so
    they are not part of the pasted mask (alpha > `alpha_threshold`), as in the reference. Returns (h, w, 4)
    uint8 RGBA, or None when the binary mask is empty. Source: method.md Stage 3
    (`xpaste.ops.masks.largest_filled_component`).
    """
    if alpha not in ALPHA_RULES:
        raise ValueError(f"alpha must be one of {ALPHA_RULES}, got {alpha!r}")
    soft = np.asarray(soft)
    if soft.dtype == bool:
        soft = soft.astype(np.uint8) * np.uint8(255)
    region = largest_filled_component(binarize(soft))
    rows, cols = np.flatnonzero(region.any(axis=1)), np.flatnonzero(region.any(axis=0))
    if rows.size == 0:
        return None
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    rgba = np.empty((y1 - y0, x1 - x0, 4), np.uint8)
    rgba[..., :3] = image[y0:y1, x0:x1]
    inside = region[y0:y1, x0:x1]
    if alpha == "soft":
        rgba[..., 3] = np.where(inside, soft[y0:y1, x0:x1], 0).astype(np.uint8)
    else:
        rgba[..., 3] = inside * np.uint8(255)
    return rgba


def decisions_schema():
    """The columns of build_pool/decisions.parquet: the candidate's fields, then what build-pool decided."""
    import pyarrow as pa


    extra = [("segmenter", pa.string()), ("clip_score", pa.float64()), ("area_frac", pa.float64()),
             ("mask_path", pa.string()), ("decision", pa.string()), ("bar", pa.float64()),
             ("instance_id", pa.string()), ("real_similarity", pa.float64())]
    return pa.schema(list(candidate_schema()) + [pa.field(n, t) for n, t in extra])


#: The run's stages whose outputs build-pool reads (their shard tables' digests are in its record).
UPSTREAM = ("generate", "retrieve", "segment", "score")


def record_path(run_dir: Path, out: Path) -> Path:
    """RUN/build_pool/stage-<pool folder hash>.json: what that pool is being built from (`build_fingerprint`).
    One per pool folder: one run may feed several pools (e.g. one per threshold), each resumed on its own."""

    key = hashlib.sha1(str(Path(out).resolve()).encode()).hexdigest()[:12]
    return RunDir(run_dir).stage_dir("build-pool") / f"stage-{key}.json"


def build_fingerprint(run_dir: Path, config: Any, b: dict, out: Path) -> dict:
    """What a build depends on: every resolved option (the preset's values filled in, the cut-out alpha rule
    included), the pool folder, the scoring model and segmenter order, the outputs of the upstream stages and
    the real pool's content."""

    options = {k: v for k, v in b.items() if k not in ("flush_every", "out", "real_pool")}
    s = _section(config, "score")
    real = None
    if b.get("real_pool"):
        real = {"path": str(Path(b["real_pool"]).resolve()), "content": pool_digest(InstancePool.open(b["real_pool"]))}
    record = {"options": options, "out": str(Path(out).resolve()), "real_pool": real,
              "score": {k: s.get(k) for k in ("clip", "pretrained")},
              "segmenters": list(_section(config, "segment")["segmenters"]),
              "upstream": {name: outputs_digest(Path(run_dir) / name) for name in UPSTREAM}}

    return json.loads(json.dumps(record, default=str))


def _describe(path: tuple, old: Any, new: Any) -> str:
    if path[:2] == ("options", "alpha") and old is None:
        return (f"build_pool.alpha changed since this pool was built (the pool predates the option: binary "
                f"alpha; now {new!r})")
    if path[0] == "options" and len(path) > 1:
        return f"build_pool.{path[1]} changed since this pool was built ({old!r}, now {new!r})"
    if path[0] == "upstream" and len(path) > 1:
        return f"the outputs of stage '{path[1]}' changed since this pool was built (it was rerun)"
    if path[0] == "real_pool":
        return "the real pool (build_pool.real_pool) changed since this pool was built"
    if path[0] == "out":
        return f"the pool folder changed since this build was started ({old}, now {new})"
    name = ".".join(str(p) for p in path)
    return f"{name} changed since this pool was built ({old!r}, now {new!r})"


def _check_record(run_dir: Path, record: dict, out: Path, fresh: bool) -> bool:
    """Refuse a build whose inputs or options differ from the recorded ones, in one line naming what changed
    (unless `fresh`). Returns True when the existing pool and decisions must be discarded (`fresh`)."""

    path = record_path(run_dir, out)
    if fresh:
        return True
    if not path.exists():
        if (out / HEADER).exists():  # a pool this build did not start (another run, an older xpaste)
            raise XPasteError("the pool folder already holds a pool that this build did not start", out,
                              "pass --fresh to rebuild it, or choose another build_pool.out")
        return False
    change = first_difference(read_json(path), record)
    if change is not None:
        raise XPasteError(_describe(*change), out,
                          "rerun with the same inputs and options to resume, or pass --fresh to rebuild the pool")
    return False


def _discard(run_dir: Path, out: Path, protected: list) -> None:
    """`--fresh`: remove the earlier build's record, decisions and pool (only a folder that is a pool: pool.json),
    so the build starts clean; a kill from here on resumes the new build."""

    folder = RunDir(run_dir).stage_dir("build-pool")
    record_path(run_dir, out).unlink(missing_ok=True)
    for name in ("decisions.parquet", "summary.json"):
        (folder / name).unlink(missing_ok=True)
    if out.exists():
        if any(out.resolve() == Path(p).resolve() or out.resolve() in Path(p).resolve().parents
               for p in protected if p):
            raise XPasteError("the pool to rebuild is an input of this build", out, "choose another build_pool.out")
        if not (out / HEADER).exists():
            raise XPasteError("--fresh would delete a folder that is not a pool", out,
                              "choose another build_pool.out, or empty this folder")
        shutil.rmtree(out)


def build_pool(run_dir: str | Path, config: Any, progress: bool = True, fresh: bool = False) -> dict:
    """Filter the run's scored cut-outs into a pool (default RUN/pool) and log every decision.

    config: the pipeline config (nested dicts or dataclasses); its `build_pool` section goes through
    `apply_preset`. Writes RUN/build_pool/decisions.parquet (`decisions_schema`, one row per candidate) and
    RUN/build_pool/summary.json. Returns the summary: pool, preset, candidates, added (cut-outs of this build
    now in the pool, whichever attempt stored them), decisions (count per decision), seconds.
    Raises XPasteError for missing stage outputs, a bad preset, or a DiverGen filter without a real pool.

    Resume: RUN/build_pool/stage-<pool>.json records what the pool is built from (`build_fingerprint`, one record
    per pool folder), written just before the first pool write; decisions.parquet and summary.json describe the
    latest build. The same build again resumes (or is a no-op); a build whose options or inputs
    changed is refused in one line naming the change, before anything is written; `fresh` discards the earlier
    pool and decisions and builds from scratch.
    """
    import pyarrow as pa
    from tqdm import tqdm


    start = time.perf_counter()
    run_dir = Path(run_dir)
    check_outputs(run_dir, config)
    b = apply_preset(_section(config, "build_pool"))
    categories = resolve_categories(run_dir, config)
    out = Path(b["out"] or RunDir(run_dir).default_pool_dir)
    record = build_fingerprint(run_dir, config, b, out)
    discard = _check_record(run_dir, record, out, fresh)  # before anything is written
    decisions = _decisions(run_dir, config, b)
    if b["real_filter"] and _section(config, "score")["clip"] is not None:
        _real_similarity_filter(run_dir, decisions, config, b)
    if discard:
        _discard(run_dir, out, [b.get("real_pool"), run_dir])
    # recorded once the models have loaded and the decisions are made, just before the first pool write
    write_json_atomic(record_path(run_dir, out), record, indent=1)
    pool_cats = [{"id": c.id, "name": c.name} for c in categories]
    kept = [d for d in decisions if d["decision"] == KEPT]
    stored: set[str] = set()
    resumed = 0
    with InstancePool.create(out, pool_cats, config={"build_pool": _section(config, "build_pool"),
                                                     "score": _section(config, "score")}, exist_ok=True) as pool:
        for d in tqdm(kept, desc="build-pool", unit="inst", disable=not progress):
            try:
                rgba = cutout(load_rgb(run_dir, d["path"]), load_mask(run_dir, d["mask_path"]), b["alpha"])
            except XPasteError as e:
                d["decision"] = f"unreadable: {e.message}"
                continue
            if rgba is None:
                d["decision"] = EMPTY
                continue
            # the id the pool gives these pixels, known before adding: a resumed build finds the cut-outs an
            # interrupted attempt stored (pool.add returns None for them) and still records their ids
            instance_id = content_hash(np.ascontiguousarray(crop_to_alpha(rgba)))
            d["instance_id"] = instance_id
            if instance_id in stored:  # two candidates cut out to the same pixels: the pool holds one
                d["decision"] = IDENTICAL
                continue
            stored.add(instance_id)
            added = pool.add(rgba, d["category_id"], crop=True, source=d["source"], model=d["model"] or "",
                             prompt=d["prompt"] or "", seed=int(d["seed"]) if d["seed"] is not None else -1,
                             segmenter=d["segmenter"], clip_score=d["clip_score"], area_frac=d["area_frac"],
                             candidate_id=d["candidate_id"])
            if added is None:
                resumed += 1
            elif added != instance_id:
                raise RuntimeError(f"pool id {added} differs from the content hash {instance_id}")
            if pool.pending_count >= int(b["flush_every"]):
                pool.flush()
    if resumed:
        log.info("%d cut-outs were already in %s (an earlier, interrupted build stored them)", resumed, out)
    schema = decisions_schema()
    table = pa.Table.from_pylist([{k: d.get(k) for k in schema.names} for d in decisions], schema=schema)
    write_parquet_atomic(RunDir(run_dir).decisions_file, table)
    counts: dict[str, int] = {}
    for d in decisions:
        counts[d["decision"]] = counts.get(d["decision"], 0) + 1
    summary = {"pool": str(out), "preset": b["preset"], "candidates": len(decisions),
               "added": counts.get(KEPT, 0), "decisions": counts, "seconds": round(time.perf_counter() - start, 3)}
    write_json_atomic(RunDir(run_dir).build_summary_file, summary, indent=1)
    return summary


def run_job(config: Any, fresh: bool = False, progress: bool = True) -> JobReport:
    """Filter the run's scored cut-outs into the pool (`build_pool`); a rerun with the same inputs resumes, one
    with changed inputs or options is refused unless `fresh` (rebuilt)."""
    cfg = as_dict(config)
    run = RunDir(cfg["run_dir"])
    check_outputs(run.root, cfg)  # before the invocation is recorded
    run.record_invocation(NAME, cfg)
    summary = build_pool(run.root, cfg, progress=progress, fresh=fresh)
    counts = {"candidates": summary["candidates"], "added": summary["added"]}
    counts.update({k: v for k, v in summary["decisions"].items() if k != "kept"})
    return JobReport(NAME, summary["pool"], counts, [], float(summary.get("seconds", 0.0)))
