"""The retrieve stage: candidate images per category from a local collection (ranked by CLIP, or a labelled
folder taken as it is) or a clip-retrieval k-NN service (method.md, Stage 1, web images). One module: its
config section (`RetrieveConfig`), its sharded `RetrieveStage` (copies the images under RUN/images/retrieved/,
writes RUN/retrieve/ shard tables in `candidate_schema`) and its job (`run_job`). Backends:
`xpaste.retrieve.folder`, `xpaste.retrieve.knn`, the CLIP scorer `xpaste.score.clip`.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from xpaste.categories import require_distinct_names
from xpaste.errors import XPasteError
from xpaste.io import copy_file_atomic
from xpaste.jobs import JobReport
from xpaste.pipeline.rundir import resolve_categories
from xpaste.pipeline.runner import Stage, run_sharded_job
from xpaste.registry import load_backend
from xpaste.score import SCORERS
from xpaste.stages.candidates import candidate_row, candidate_schema
from xpaste.typed import Section, key_field

NAME = "retrieve"
#: The config keys `xpaste retrieve` offers as flags (besides the run's common ones), and its help line.
CLI_KEYS = ["workers", "categories.source", "retrieve.folder", "retrieve.labelled", "retrieve.knn_url",
            "retrieve.knn_indice", "retrieve.per_category", "retrieve.min_score", "retrieve.simple_background",
            "score.clip", "score.pretrained"]
HELP = "Retrieve candidate images per category from a local collection or a CLIP k-NN service."


@dataclass(frozen=True)
class RetrieveConfig(Section):
    enabled: bool = key_field(False, "run this stage in `xpaste run`", cli=False)
    folder: Optional[str] = key_field(None, "image folder or list file")
    labelled: bool = key_field(False, "folder/<category name>/... holds each category's images (no CLIP ranking)")
    knn_url: Optional[str] = key_field(None, "clip-retrieval service URL, e.g. http://host:1234/knn-service")
    knn_indice: str = key_field("laion5B-L-14", "index name of the clip-retrieval service")
    per_category: int = key_field(20, "images per category", lo=1)
    min_score: Optional[float] = key_field(None, "keep images scoring at least this (100 x cosine)")
    simple_background: Optional[float] = key_field(None, "keep images whose modal colour covers this fraction "
                                                   "(e.g. 0.4)", lo=0, hi=1)
    max_bytes: int = key_field(20 * 2**20, "largest download, bytes", lo=1, cli=False)



class RetrieveStage(Stage):
    """Candidate images per category from a local collection (ranked by CLIP) or a clip-retrieval service."""

    name = "retrieve"
    _model_attrs = ("_scorer", "_ranking")

    def __init__(self, run_dir: Path, config: dict):
        super().__init__(run_dir, config)
        self.categories = resolve_categories(self.run_dir, config, lambda cats: require_distinct_names(
            cats, "retrieval finds images by category name", config["categories"]["source"]))
        r = config["retrieve"]
        if not r["folder"] and not r["knn_url"]:
            raise XPasteError("retrieve needs retrieve.folder (a folder or list file) or retrieve.knn_url")
        self._scorer = None
        self._ranking = None

    def schema(self):
        return candidate_schema()

    def fingerprint(self) -> dict:
        r = {k: v for k, v in self.config["retrieve"].items() if k != "enabled"}
        s = {} if r["labelled"] else {k: self.config["score"][k] for k in ("clip", "pretrained")}
        return {"retrieve": r, "score": s, "shard_size": self.config["shard_size"]}

    def plan(self) -> list[dict]:
        return [{"category_id": c.id, "category": c.name, "text": c.text, "dir": c.dir_name}
                for c in self.categories]

    def _scorer_instance(self):
        if self._scorer is None:
            s = self.config["score"]
            scorer_cls = load_backend(SCORERS["clip"], "clip")
            self._scorer = scorer_cls(s["clip"], s["pretrained"], device=self.config["device"],
                                      batch_size=int(s["batch_size"]))
        return self._scorer

    def _folder_ranking(self):
        """Rank the whole collection once per process (every shard of categories reads from it)."""
        if self._ranking is None:
            r = self.config["retrieve"]
            from xpaste.retrieve.folder import rank_folder, scan_images  # a backend (Pillow): imported to run

            listing = scan_images(r["folder"])
            self._ranking = rank_folder(listing.paths, [c.text for c in self.categories], self._scorer_instance(),
                                        top_k=int(r["per_category"]), min_score=r["min_score"],
                                        simple_background=r["simple_background"], progress=False)
            self._ranking.skipped[:0] = listing.skipped  # links leaving the folder, dangling ones: reported too
        return self._ranking

    def _labelled_candidates(self, items: list[dict], skipped: list[dict]) -> list[dict]:
        """A labelled collection: folder/<category name or dir name>/** are that category's images, as they are.
        Symlinked images are followed wherever they resolve inside --folder (a blob store beside the category
        folders); those leaving it, and dangling ones, are appended to `skipped` with the reason."""
        from xpaste.retrieve.folder import labelled_folder, scan_images  # a backend (Pillow): imported to run

        root = Path(self.config["retrieve"]["folder"])
        rows = []
        for item in items:
            folder = labelled_folder(root, (item["category"], item["dir"]))  # never a folder outside root
            if folder is None:
                skipped.append({"item": f"category {item['category_id']} {item['category']!r}",
                                "reason": f"no folder {item['category']!r} or {item['dir']!r} inside {root}"})
                continue
            listing = scan_images(folder, root=root)
            skipped.extend({"item": path, "reason": why} for path, why in listing.skipped)
            for path in listing.paths:
                rows.append(self._copy_candidate(item, path, "folder", float("nan"), 0, 0))
        return rows

    def _copy_candidate(self, item: dict, path: Path, source: str, score: float, width: int, height: int) -> dict:
        cid = f"ret-{item['category_id']}-{hashlib.sha1(str(path).encode()).hexdigest()[:12]}"
        rel = f"images/retrieved/{item['dir']}/{cid}{Path(path).suffix.lower()}"
        copy_file_atomic(path, self.run_dir / rel)
        return candidate_row(candidate_id=cid, kind="object", category_id=item["category_id"],
                             category=item["category"], path=rel, source=source, model="", prompt=item["text"],
                             seed=-1, steps=0, guidance=0.0, width=int(width), height=int(height), url=str(path),
                             retrieval_score=float(score))

    def process(self, items: list[dict]) -> tuple[list[dict], list[dict]]:
        r = self.config["retrieve"]
        rows, skipped = [], []
        index_of = {c.id: k for k, c in enumerate(self.categories)}
        if r["folder"] and r["labelled"]:
            rows.extend(self._labelled_candidates(items, skipped))
        elif r["folder"]:
            ranking = self._folder_ranking()
            # unreadable collection files concern every category: log them once, with the first shard
            skipped.extend({"item": p, "reason": why} for p, why in ranking.skipped
                           if items and items[0]["category_id"] == self.categories[0].id)
            for item in items:
                for cand in ranking.candidates.get(index_of[item["category_id"]], []):
                    rows.append(self._copy_candidate(item, Path(cand.path), "folder", cand.score, cand.width,
                                                     cand.height))
        if r["knn_url"]:
            from xpaste.retrieve.knn import KnnClient, download

            client = KnnClient(r["knn_url"], r["knn_indice"])
            for item in items:
                results = client.query(f"a photo of {item['text']}", int(r["per_category"]))
                folder = self.run_dir / "images" / "retrieved" / item["dir"]
                for d in download(results, folder, max_bytes=int(r["max_bytes"])):
                    if d.path is None:
                        skipped.append({"item": d.url, "reason": d.status})
                        continue
                    rel = str(Path(d.path).resolve().relative_to(self.run_dir.resolve()))
                    cid = f"knn-{item['category_id']}-{hashlib.sha1(d.url.encode()).hexdigest()[:12]}"
                    rows.append(candidate_row(
                        candidate_id=cid, kind="object", category_id=item["category_id"], category=item["category"],
                        path=rel, source="knn", model="", prompt=item["text"], seed=-1, steps=0, guidance=0.0,
                        width=int(getattr(d, "width", 0) or 0), height=int(getattr(d, "height", 0) or 0),
                        url=d.url, retrieval_score=float(d.similarity if d.similarity is not None else np.nan)))
        return rows, skipped


def run_job(config: Any, fresh: bool = False, progress: bool = True) -> JobReport:
    """Run the retrieve stage in `config.run_dir` (resuming finished shards; `fresh` redoes it)."""
    return run_sharded_job(RetrieveStage, config, fresh, progress)
