"""Stage 2: a soft foreground mask per (candidate image, segmenter), and a CLIP score per cut-out.

Rules (method.md, Stage 2): every segmenter's output is min-max normalised per image to 0-255 and binarised
at > 128 (`xpaste.ops.masks.normalize_soft` / `binarize`); each cut-out is scored as the whole image with white
outside its binary mask (`xpaste.score.composite_on_white`), through CLIP's own preprocessing (resize 224,
centre crop), against `a photo of {name}`, as 100 x cosine.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from xpaste.errors import XPasteError
from xpaste.io import safe_name
from xpaste.pipeline.rundir import load_mask, load_rgb, save_png
from xpaste.pipeline.runner import Stage
from xpaste.pipeline.shards import read_stage


def read_candidates(run_dir: Path):
    """Object candidates from generate and retrieve, sorted by id (the order every later stage uses)."""
    import pyarrow as pa

    from xpaste.pipeline.acquire import candidate_schema

    tables = [read_stage(run_dir / name, candidate_schema()) for name in ("generate", "retrieve")]
    table = pa.concat_tables(tables, promote_options="default")
    rows = [r for r in table.to_pylist() if r["kind"] == "object"]
    return sorted(rows, key=lambda r: r["candidate_id"])


def segment_rows_with_paths(run_dir: Path) -> list[dict]:
    """Segment rows joined with their candidate (image path, category name), in (candidate, segmenter) order."""
    candidates = {r["candidate_id"]: r for r in read_candidates(run_dir)}
    out = []
    for row in read_stage(run_dir / "segment", SegmentStage.schema(None)).to_pylist():
        cand = candidates.get(row["candidate_id"])
        if cand is not None:
            out.append({**row, "path": cand["path"], "category": cand["category"]})
    return out


class SegmentStage(Stage):
    name = "segment"
    _model_attrs = ("_segmenters",)
    upstream = ("generate", "retrieve")  # the candidate images it cuts out

    def __init__(self, run_dir: Path, config: dict):
        super().__init__(run_dir, config)
        self._segmenters = None

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

    def setup(self) -> None:
        if self._segmenters is None:
            from xpaste.segment import build_segmenter

            self._segmenters = [(spec, build_segmenter(spec)) for spec in self.config["segment"]["segmenters"]]

    def process(self, items: list[dict]) -> tuple[list[dict], list[dict]]:
        from xpaste.ops.masks import binarize, count_components, normalize_soft

        self.setup()
        batch = int(self.config["segment"]["batch_size"])
        loaded, skipped = [], []
        for item in items:
            try:
                loaded.append((item, load_rgb(self.run_dir, item["path"])))
            except XPasteError as e:
                skipped.append({"item": item["candidate_id"], "reason": str(e)})
        rows = []
        for spec, segmenter in self._segmenters:
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

    def setup(self) -> None:
        if self._scorer is None:
            from xpaste.registry import load_backend
            from xpaste.score import SCORERS

            s = self.config["score"]
            scorer_cls = load_backend(SCORERS["clip"], "clip")
            self._scorer = scorer_cls(s["clip"], s["pretrained"], device=self.config["device"],
                                      batch_size=int(s["batch_size"]))

    def process(self, items: list[dict]) -> tuple[list[dict], list[dict]]:
        from xpaste.score import composite_on_white, prompt_for

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
