"""The score stage: a CLIP score per cut-out (method.md, Stage 2).

Rule: each cut-out is shown to CLIP as the whole image with white outside its binary mask (> 128,
`xpaste.score.composite_on_white`), through CLIP's own preprocessing (resize 224, centre crop), against
`a photo of {name}`, scored as 100 x cosine; the image embedding is kept for near-duplicate removal. One
module: its config section (`ScoreConfig`), its sharded `ScoreStage` (RUN/score/ shard tables) and its job
(`run_job`). The CLIP backend is `xpaste.score.clip` (open_clip), reached through `xpaste.score.SCORERS`.

Masks that segment added to a started run (for candidates a planned round added, or for an added segmenter)
are scored alone, in shards of their own after the earlier ones (`ScoreStage.extend`; the rule, the record
under "added" in RUN/score/stage.json and the refusals: `xpaste.stages.additions`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from xpaste.errors import XPasteError
from xpaste.jobs import JobReport
from xpaste.pipeline.rundir import load_mask, load_rgb
from xpaste.pipeline.runner import ShardPlan, Stage, run_sharded_job
from xpaste.registry import load_backend
from xpaste.score import SCORERS, composite_on_white, prompt_for
from xpaste.stages.additions import extend_score
from xpaste.stages.segment import segment_rows_with_paths
from xpaste.typed import Section, key_field

NAME = "score"
#: The config keys `xpaste score` offers as flags (besides the run's common ones), and its help line.
CLI_KEYS = ["workers", "score.clip", "score.pretrained", "score.batch_size"]
HELP = "Score every cut-out (composited on white) with CLIP against 'a photo of {name}'."


@dataclass(frozen=True)
class ScoreConfig(Section):
    clip: Optional[str] = key_field("ViT-L-14", "ViT-L-14 | hf-hub:org/name | local-dir:/folder; null: no CLIP scores")
    pretrained: Optional[str] = key_field("openai", "open_clip pretrained tag")
    batch_size: int = key_field(32, "cut-outs per CLIP call", lo=1)



class ScoreStage(Stage):
    """Every cut-out shown as the whole image with white outside its binary mask (> 128), scored 100 x cosine
    against `a photo of {name}` (method.md, Stage 2); the image embedding is kept for near-duplicate removal."""

    name = "score"
    _model_attrs = ("_scorer",)
    upstream = ("generate", "retrieve", "segment")  # the images and the masks it scores

    def __init__(self, run_dir: Path, config: dict):
        super().__init__(run_dir, config)
        self._scorer = None

    def schema(self):
        import pyarrow as pa

        return pa.schema([("candidate_id", pa.string()), ("category_id", pa.int64()), ("segmenter", pa.string()),
                          ("clip_score", pa.float64()), ("embedding", pa.list_(pa.float32()))])

    #: What CLIP is shown, part of the fingerprint: scores made under an older rule are not resumed silently.
    rule = "whole image, white outside mask > 128, vs 'a photo of {name}'"
    change_labels = {"rule": "the scoring rule (whole image, white outside the binary mask)"}

    def fingerprint(self) -> dict:
        s = self.config["score"]
        return {"clip": s["clip"], "pretrained": s["pretrained"], "shard_size": self.config["shard_size"],
                "rule": self.rule}

    def plan(self) -> list[dict]:
        items = segment_rows_with_paths(self.run_dir)
        if not items:
            raise XPasteError("no masks to score", self.run_dir, "run `xpaste segment` first")
        return items

    def extend(self, previous: dict, record: dict, plan: ShardPlan) -> tuple[ShardPlan, dict] | None:
        """The segment rows added since the stage started (segment's shards after those it recorded) are
        scored in shards of their own after the earlier ones; stage.json lists each addition under "added".
        Other settings, or upstream outputs that did not only grow, are refused in one line
        (`xpaste.stages.additions`)."""
        return extend_score(self, previous, record, plan)

    def setup(self) -> None:
        if self._scorer is None:
            s = self.config["score"]
            scorer_cls = load_backend(SCORERS["clip"], "clip")
            self._scorer = scorer_cls(s["clip"], s["pretrained"], device=self.config["device"],
                                      batch_size=int(s["batch_size"]))

    def process(self, items: list[dict]) -> tuple[list[dict], list[dict]]:
        self.setup()
        composites, kept, skipped = [], [], []
        for item in items:
            try:
                image = load_rgb(self.run_dir, item["path"])
                mask = load_mask(self.run_dir, item["mask_path"])
            except XPasteError as e:
                skipped.append({"item": f"{item['candidate_id']}/{item['segmenter']}", "reason": str(e)})
                continue
            if mask.shape != image.shape[:2]:
                skipped.append({"item": f"{item['candidate_id']}/{item['segmenter']}",
                                "reason": f"mask {mask.shape} does not match image {image.shape[:2]}"})
                continue
            composites.append(composite_on_white(image, mask))
            kept.append(item)
        rows = []
        if kept:
            image_emb = self._scorer.embed_images(composites)
            texts = sorted({prompt_for(it["category"]) for it in kept})
            text_emb = dict(zip(texts, self._scorer.embed_texts(texts)))
            for item, emb in zip(kept, image_emb):
                score = 100.0 * float(np.dot(emb, text_emb[prompt_for(item["category"])]))
                rows.append({"candidate_id": item["candidate_id"], "category_id": item["category_id"],
                             "segmenter": item["segmenter"], "clip_score": score,
                             "embedding": emb.astype(np.float32).tolist()})
        return rows, skipped


def run_job(config: Any, fresh: bool = False, progress: bool = True) -> JobReport:
    """Run the score stage in `config.run_dir` (resuming finished shards; `fresh` redoes it)."""
    return run_sharded_job(ScoreStage, config, fresh, progress)
