"""The segment stage: a soft foreground mask per (candidate image, segmenter) (method.md, Stage 2).

Rule: every segmenter's output is min-max normalised per image to 0-255 and binarised at > 128
(`xpaste.ops.masks.normalize_soft` / `binarize`). One module: its config section (`SegmentConfig`), its
sharded `SegmentStage` (writes RUN/masks/<segmenter>/ PNGs and RUN/segment/ shard tables) and its job
(`run_job`).

Work added to a started run runs alone (`SegmentStage.extend`, the rule in `xpaste.stages.additions`): a
segmenter added to the config runs on every candidate, candidates that generate / retrieve added (a planned
round) run with the earlier segmenters; their rows go to new shards after the earlier ones, and
RUN/segment/stage.json lists each addition under "added". A removed or reordered segmenter, or upstream
outputs that changed otherwise than by added shards, is refused as any other changed input (`--fresh` redoes
the stage). Backends, one file each behind the registry: `xpaste.segment` (grabcut, rembg sessions, clipseg,
sam, sam2, sam3).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xpaste.errors import XPasteError
from xpaste.io import safe_name
from xpaste.jobs import JobReport
from xpaste.ops.masks import binarize, count_components, normalize_soft
from xpaste.pipeline.rundir import load_rgb, save_png
from xpaste.pipeline.runner import ShardPlan, Stage, run_sharded_job
from xpaste.pipeline.shards import read_stage
from xpaste.segment import build_segmenter, parse_spec
from xpaste.stages.additions import extend_segment
from xpaste.stages.candidates import read_candidates
from xpaste.typed import Section, key_field

NAME = "segment"
#: The config keys `xpaste segment` offers as flags (besides the run's common ones), and its help line.
CLI_KEYS = ["workers", "segment.segmenters", "segment.batch_size"]
HELP = "Cut out every candidate image with each segmenter (soft masks are stored)."


@dataclass(frozen=True)
class SegmentConfig(Section):
    segmenters: tuple[str, ...] = key_field(("grabcut", "rembg:u2net", "clipseg"),
                                       "grabcut | clipseg[:model] | rembg[:session|:file.onnx] | "
                                       "sam[:model] | sam2[:model] | sam3[:model] (model: hub id or "
                                       "folder; sam/sam2: corner background points, sam3: the category "
                                       "name; see README)",
                                       flag="--segmenter", split=",", min_items=1, each=parse_spec)
    batch_size: int = key_field(8, "images per segmenter call", lo=1)



class SegmentStage(Stage):
    name = "segment"
    _model_attrs = ("_segmenters",)
    upstream = ("generate", "retrieve")  # the candidate images it cuts out

    def __init__(self, run_dir: Path, config: dict):
        super().__init__(run_dir, config)
        self._segmenters = None  # [(spec, segmenter)], built in the process that uses them
        self._passes = None  # [(segmenters, shard indices)] of each part of a run that took in added work

    def schema(self):
        import pyarrow as pa

        return pa.schema([("candidate_id", pa.string()), ("category_id", pa.int64()), ("segmenter", pa.string()),
                          ("mask_path", pa.string()), ("area_frac", pa.float64()), ("components", pa.int64())])

    #: The masks' rule, part of the fingerprint: outputs made under an older rule are not resumed silently.
    rule = "per-image min-max to 0-255; foreground > 128"
    change_labels = {"rule": "the mask rule (per-image min-max normalisation)"}

    def fingerprint(self) -> dict:
        return {"segmenters": list(self.config["segment"]["segmenters"]), "shard_size": self.config["shard_size"],
                "rule": self.rule}

    def plan(self) -> list[dict]:
        items = [{"candidate_id": r["candidate_id"], "category_id": r["category_id"], "category": r["category"],
                  "path": r["path"]} for r in read_candidates(self.run_dir)]
        if not items:
            raise XPasteError("no candidate images to segment", self.run_dir, "run `xpaste generate` or `retrieve` first")
        return items

    def extend(self, previous: dict, record: dict, plan: ShardPlan) -> tuple[ShardPlan, dict] | None:
        """Work added to a started run, run alone in shards of its own after the earlier ones (`PartedPlan`):
        candidates that generate / retrieve added (a planned round) run with the segmenters known before them;
        added segmenters run on every candidate. stage.json keeps the first part as it was and lists each
        addition under "added". The rule (what counts as only added), the record and the refusals (a segmenter
        removed or reordered, other settings, upstream outputs that did not only grow: one line, `--fresh`
        redoes the stage): `xpaste.stages.additions`."""
        extended, kept, self._passes = extend_segment(self, previous, record, plan)
        return extended, kept

    def _needed(self) -> list[str]:
        """The segmenters this run uses: all of them, or after an addition those of the parts not finished."""
        if self._passes is None:
            return list(self.config["segment"]["segmenters"])
        needed = [spec for specs, shards in self._passes if not all(self.is_done(k) for k in shards) for spec in specs]
        return list(dict.fromkeys(needed))

    def setup(self) -> None:
        if self._segmenters is None:
            self._segmenters = [(spec, build_segmenter(spec, device=self.config.get("device")))
                                for spec in self._needed()]

    def _segmenter(self, spec: str):
        for name, segmenter in self._segmenters or []:
            if name == spec:
                return segmenter
        segmenter = build_segmenter(spec, device=self.config.get("device"))
        self._segmenters = [*(self._segmenters or []), (spec, segmenter)]
        return segmenter

    def process(self, items: list[dict]) -> tuple[list[dict], list[dict]]:
        self.setup()
        batch = int(self.config["segment"]["batch_size"])
        loaded, skipped = [], []
        for item in items:
            try:
                loaded.append((item, load_rgb(self.run_dir, item["path"])))
            except XPasteError as e:
                skipped.append({"item": item["candidate_id"], "reason": str(e)})
        rows = []
        # an added segmenter's shards name it in their items; the first part's items run the first segmenters
        specs = (items[0].get("segmenters") if items else None) or (
            self._passes[0][0] if self._passes else self.config["segment"]["segmenters"])
        for spec in specs:
            segmenter = self._segmenter(spec)
            # readable and collision-free: specs may be long paths that share a prefix
            folder = f"{safe_name(spec, 40)}-{hashlib.sha1(spec.encode()).hexdigest()[:8]}"
            for start in range(0, len(loaded), batch):
                part = loaded[start : start + batch]
                soft_masks = segmenter.segment([img for _, img in part],
                                               [it["category"].replace("_", " ") for it, _ in part])
                for (item, image), soft in zip(part, soft_masks):
                    rel = f"masks/{folder}/{item['category_id']}/{item['candidate_id']}.png"
                    # the backends normalise already; done again (idempotent) for third-party segmenters
                    soft = normalize_soft(soft)
                    save_png(self.run_dir, rel, soft)
                    binary = binarize(soft)
                    rows.append({"candidate_id": item["candidate_id"], "category_id": item["category_id"],
                                 "segmenter": spec, "mask_path": rel, "area_frac": float(binary.mean()),
                                 "components": count_components(binary)})
        rows.sort(key=lambda r: (r["candidate_id"], self.config["segment"]["segmenters"].index(r["segmenter"])))
        return rows, skipped


def segment_rows_with_paths(run_dir: Path) -> list[dict]:
    """Segment rows joined with their candidate (image path, category name), in (candidate, segmenter) order."""
    candidates = {r["candidate_id"]: r for r in read_candidates(run_dir)}
    out = []
    for row in read_stage(run_dir / "segment", SegmentStage.schema(None)).to_pylist():
        cand = candidates.get(row["candidate_id"])
        if cand is not None:
            out.append({**row, "path": cand["path"], "category": cand["category"]})
    return out


def run_job(config: Any, fresh: bool = False, progress: bool = True) -> JobReport:
    """Run the segment stage in `config.run_dir` (resuming finished shards; `fresh` redoes it)."""
    return run_sharded_job(SegmentStage, config, fresh, progress)
