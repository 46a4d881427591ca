"""The retrieve stage: candidate images per category from a local collection (ranked by CLIP, or a labelled
folder taken as it is) or a clip-retrieval k-NN service (method.md, Stage 1, web images). One module: its
config section (`RetrieveConfig`), its sharded `RetrieveStage` (copies the images under RUN/images/retrieved/,
writes RUN/retrieve/ shard tables in `candidate_schema`) and its job (`run_job`). Backends:
`xpaste.retrieve.folder`, `xpaste.retrieve.knn`, the CLIP scorer `xpaste.score.clip`.

With a plan (`retrieve.plan`, `xpaste retrieve --plan PLAN`, `xpaste run CONFIG --plan PLAN`: an `xpaste plan`
json whose categories are the run's), the plan's `generate` count of category c replaces `per_category` for c
(0: c is not queried), as a round of its own added to the run's earlier rounds (`xpaste.stages.candidates`):
from each source (the CLIP-ranked folder, the k-NN service), at most that many images the run does not have
yet: the best-ranked ones after those its other rounds took (every round skips the images another round
holds, so no image is a candidate twice). At most: the `min_score` and `simple_background` filters and failed
downloads can leave fewer. A labelled folder (`retrieve.labelled`) is taken whole: it has no count to plan,
and --plan is refused with it (`check_plan`).
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
from xpaste.pipeline.runner import ShardPlan, Stage, run_sharded_job
from xpaste.registry import load_backend
from xpaste.score import SCORERS
from xpaste.stages.candidates import (candidate_row, candidate_schema, extend_rounds, ids_in_shards, planned_round,
                                      round_tag)
from xpaste.typed import Section, key_field

NAME = "retrieve"
#: The config keys `xpaste retrieve` offers as flags (besides the run's common ones), and its help line.
CLI_KEYS = ["workers", "categories.source", "retrieve.folder", "retrieve.labelled", "retrieve.knn_url",
            "retrieve.knn_indice", "retrieve.per_category", "retrieve.plan", "retrieve.min_score",
            "retrieve.simple_background",
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
    plan: Optional[str] = key_field(None, "an `xpaste plan` json: retrieve its `generate` count per category "
                                    "instead of per_category, the next-best images the run does not have yet")


def check_plan(config: dict) -> None:
    """Refuse (XPasteError, one line) `retrieve.plan` with `retrieve.labelled`: a labelled folder is taken whole,
    so there is no per-category count for the plan to set. `config`: the pipeline config as a dict."""
    r = config["retrieve"]
    if r.get("plan") and r["labelled"]:
        raise XPasteError("--plan sets how many images to retrieve per category, but a labelled folder "
                          "(retrieve.labelled) is taken whole, with no count to plan", r["plan"],
                          "retrieve without the plan (with `xpaste run`, give it to generate alone: "
                          "--set generate.plan=PLAN instead of --plan), or rank the folder with CLIP (--no-labelled)")


def _retrieved_id(prefix: str, category_id: int, source: str) -> str:
    """The candidate id of an image retrieved for a category: its path (folder) or url (k-NN), hashed."""
    return f"{prefix}-{category_id}-{hashlib.sha1(str(source).encode()).hexdigest()[:12]}"


def _result_url(result: object) -> str | None:
    """The url of a k-NN result (a dict's "url", or a bare url string); None for a malformed one."""
    url = result.get("url") if isinstance(result, dict) else result
    return url if isinstance(url, str) and url else None



class RetrieveStage(Stage):
    """Candidate images per category from a local collection (ranked by CLIP) or a clip-retrieval service; with
    a plan, the plan's count per category as a round of its own (module docstring)."""

    name = "retrieve"
    _model_attrs = ("_scorer", "_ranking", "_taken")
    #: the fingerprint key that sizes the round without a plan (`candidates.split_round`)
    sizes = ("per_category",)

    def __init__(self, run_dir: Path, config: dict):
        super().__init__(run_dir, config)
        r = config["retrieve"]
        if not r["folder"] and not r["knn_url"]:
            raise XPasteError("retrieve needs retrieve.folder (a folder or list file) or retrieve.knn_url")
        check_plan(config)
        self._round: dict | None = None  # the planned round of this run (`candidates.planned_round`)
        self.categories = resolve_categories(self.run_dir, config, self._check_categories)
        self._scorer = None
        self._ranking = None
        self._top = int(r["per_category"])  # the largest count of this run's round (`plan`)
        self._first = self.categories[0].id if self.categories else None  # the first category this run queries
        self._other_shards: list[int] = []  # the shards of the run's other rounds (`extend`)
        self._taken: dict[int, set[str]] | None = None  # {category id: candidate ids of the other rounds}

    def _check_categories(self, categories) -> None:
        require_distinct_names(categories, "retrieval finds images by category name",
                               self.config["categories"]["source"])
        if self.config["retrieve"].get("plan"):  # refused here, before the categories are recorded
            self._round = planned_round(self.config["retrieve"]["plan"], categories)

    def schema(self):
        return candidate_schema()

    def fingerprint(self) -> dict:
        r = {k: v for k, v in self.config["retrieve"].items() if k not in ("enabled", "plan")}
        s = {} if r["labelled"] else {k: self.config["score"][k] for k in ("clip", "pretrained")}
        if self._round is None:
            return {"retrieve": r, "score": s, "shard_size": self.config["shard_size"]}
        r = {k: v for k, v in r.items() if k not in self.sizes}  # the plan's counts size this round
        return {"retrieve": r, "score": s, "shard_size": self.config["shard_size"], "round": self._round}

    def plan(self) -> list[dict]:
        items = self._items_of(self._round if self._round is not None else {})
        self._top = max(map(self._count, items), default=0)
        self._first = items[0]["category_id"] if items else None  # its shard reports the collection's skips
        return items

    def _items_of(self, round_: dict) -> list[dict]:
        """One item per category: the round without a plan queries every category (per_category each, the
        items runs always had); a planned round the categories it asks images of, with their count."""
        if "plan" not in round_:
            return [{"category_id": c.id, "category": c.name, "text": c.text, "dir": c.dir_name}
                    for c in self.categories]
        counts, tag = dict(map(tuple, round_["counts"])), round_tag(round_)
        return [{"category_id": c.id, "category": c.name, "text": c.text, "dir": c.dir_name,
                 "count": int(counts[c.id]), "round": tag} for c in self.categories if counts.get(c.id, 0) > 0]

    def extend(self, previous: dict, record: dict, plan: ShardPlan):
        """Rounds (`candidates.extend_rounds`): a new plan adds a round after the earlier ones; this run's round
        then skips the images the other rounds hold."""
        extended, kept, index, shards = extend_rounds(self, previous, record, plan, self._items_of, "retrieve",
                                                       self.sizes)
        self._other_shards = [k for j, part in enumerate(shards) if j != index for k in part]
        return extended, kept

    def _count(self, item: dict) -> int:
        """Images to retrieve for an item: its planned count, else per_category."""
        return int(item.get("count", self.config["retrieve"]["per_category"]))

    def _taken_ids(self) -> dict[int, set[str]]:
        """{category id: candidate ids} the run's other rounds hold (read once per process)."""
        if self._taken is None:
            self._taken = ids_in_shards(self.stage_dir, self._other_shards)
        return self._taken

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
            # this round's largest count, past the images other rounds took (each category skips its own)
            top_k = max(1, self._top + max(map(len, self._taken_ids().values()), default=0))
            self._ranking = rank_folder(listing.paths, [c.text for c in self.categories], self._scorer_instance(),
                                        top_k=top_k, min_score=r["min_score"],
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
        cid = _retrieved_id("ret", item["category_id"], str(path))
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
                           if items and items[0]["category_id"] == self._first)
            for item in items:
                taken = self._taken_ids().get(item["category_id"], set())
                ranked = [cand for cand in ranking.candidates.get(index_of[item["category_id"]], [])
                          if _retrieved_id("ret", item["category_id"], cand.path) not in taken]
                for cand in ranked[:self._count(item)]:
                    rows.append(self._copy_candidate(item, Path(cand.path), "folder", cand.score, cand.width,
                                                     cand.height))
        if r["knn_url"]:
            from xpaste.retrieve.knn import KnnClient, download

            client = KnnClient(r["knn_url"], r["knn_indice"])
            for item in items:
                taken = self._taken_ids().get(item["category_id"], set())
                results = client.query(f"a photo of {item['text']}", self._count(item) + len(taken))
                results = [res for res in results if _result_url(res) is None
                           or _retrieved_id("knn", item["category_id"], _result_url(res)) not in taken]
                results = results[:self._count(item)]
                folder = self.run_dir / "images" / "retrieved" / item["dir"]
                for d in download(results, folder, max_bytes=int(r["max_bytes"])):
                    if d.path is None:
                        skipped.append({"item": d.url, "reason": d.status})
                        continue
                    rel = str(Path(d.path).resolve().relative_to(self.run_dir.resolve()))
                    cid = _retrieved_id("knn", item["category_id"], d.url)
                    rows.append(candidate_row(
                        candidate_id=cid, kind="object", category_id=item["category_id"], category=item["category"],
                        path=rel, source="knn", model="", prompt=item["text"], seed=-1, steps=0, guidance=0.0,
                        width=int(getattr(d, "width", 0) or 0), height=int(getattr(d, "height", 0) or 0),
                        url=d.url, retrieval_score=float(d.similarity if d.similarity is not None else np.nan)))
        return rows, skipped


def run_job(config: Any, fresh: bool = False, progress: bool = True) -> JobReport:
    """Run the retrieve stage in `config.run_dir` (resuming finished shards; `fresh` redoes it)."""
    return run_sharded_job(RetrieveStage, config, fresh, progress)
