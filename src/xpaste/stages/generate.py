"""Stage 1: acquire object images, by generation (diffusers) or retrieval (a folder or a k-NN service)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from xpaste.errors import XPasteError
from xpaste.io import copy_file_atomic
from xpaste.pipeline.rundir import resolve_categories, save_png
from xpaste.pipeline.runner import Stage

CANDIDATE_FIELDS = [("candidate_id", "string"), ("kind", "string"), ("category_id", "int64"),
                    ("category", "string"), ("path", "string"), ("source", "string"), ("model", "string"),
                    ("prompt", "string"), ("seed", "int64"), ("steps", "int64"), ("guidance", "float64"),
                    ("width", "int64"), ("height", "int64"), ("url", "string"), ("retrieval_score", "float64")]


def candidate_schema():
    import pyarrow as pa

    return pa.schema([(name, getattr(pa, typ)()) for name, typ in CANDIDATE_FIELDS])


def candidate_row(**values) -> dict:
    row = {name: None for name, _ in CANDIDATE_FIELDS}
    row.update(values)
    return row


def model_tag(model: str) -> str:
    return hashlib.sha1(model.encode()).hexdigest()[:8]


class GenerateStage(Stage):
    """Text-to-image generation: `per_category` images per category and model, deterministic seeds."""

    name = "generate"
    _model_attrs = ("_generator",)

    def __init__(self, run_dir: Path, config: dict):
        super().__init__(run_dir, config)
        self.categories = resolve_categories(self.run_dir, config, self._refuse_same_prompts)
        self._generator = None
        self._generator_model = None

    def schema(self):
        return candidate_schema()

    def fingerprint(self) -> dict:
        g = {k: v for k, v in self.config["generate"].items() if k not in ("batch_size", "enabled")}
        return {"generate": g, "shard_size": self.config["shard_size"]}

    def plan(self) -> list[dict]:
        from xpaste.generate.prompts import BACKGROUND_PROMPTS, image_seed, load_prompt_file, prompt_for

        g = self.config["generate"]
        per_category = load_prompt_file(g["prompt_file"]) if g["prompt_file"] else None
        items = []
        for model in g["models"]:
            tag = model_tag(model)
            for cat in self.categories:
                for i in range(int(g["per_category"])):
                    cid = f"gen-{tag}-{cat.id}-{i:06d}"
                    items.append({"candidate_id": cid, "kind": "object", "category_id": cat.id,
                                  "category": cat.name, "model": model,
                                  "prompt": prompt_for(cat, i, g["templates"], per_category),
                                  "seed": image_seed(int(g["seed"]), model, cat.id, i),
                                  "path": f"images/generated/{cat.dir_name}/{cid}.png"})
            for i in range(int(g["backgrounds"])):
                cid = f"bg-{tag}-{i:06d}"
                items.append({"candidate_id": cid, "kind": "background", "category_id": 0, "category": "",
                              "model": model, "prompt": BACKGROUND_PROMPTS[i % len(BACKGROUND_PROMPTS)],
                              "seed": image_seed(int(g["seed"]), model, 0, i),
                              "path": f"images/backgrounds/{cid}.png"})
        return items

    def _refuse_same_prompts(self, categories) -> None:
        """Same-name categories are refused only when their prompts coincide too (no id-keyed prompts, no
        differing definition or synonyms in the templates): their images would be alike under two ids.
        Compared ignoring case and spacing: Stable Diffusion's CLIP tokenizer lowercases the prompt."""
        from xpaste.categories import require_distinct_names, same_name_groups
        from xpaste.generate.prompts import load_prompt_file, prompt_for

        g = self.config["generate"]
        if not same_name_groups(categories) or int(g["per_category"]) < 1:
            return
        per_category = load_prompt_file(g["prompt_file"]) if g["prompt_file"] else None

        def prompts(cat):
            return [" ".join(prompt_for(cat, i, g["templates"], per_category).lower().split())
                    for i in range(int(g["per_category"]))]

        require_distinct_names(categories, "generation prompts by name", self.config["categories"]["source"],
                               same=lambda a, b: prompts(a) == prompts(b))

    def _generator_for(self, model: str):
        if self._generator_model != model:
            from xpaste.generate import build_generator

            g = self.config["generate"]
            self._generator = None  # free the previous model before loading the next
            self._generator = build_generator(
                "diffusers", model=model, device=self.config["device"], scheduler=g["scheduler"], steps=int(g["steps"]),
                guidance=float(g["guidance"]), height=int(g["height"]), width=int(g["width"]),
                negative_prompt=g["negative_prompt"], batch_size=int(g["batch_size"]))
            self._generator_model = model
            from xpaste.pipeline.determinism import restore_threads

            restore_threads()  # model imports may change torch's thread count (see determinism.py)
        return self._generator

    def process(self, items: list[dict]) -> tuple[list[dict], list[dict]]:
        g = self.config["generate"]
        rows = []
        for model in dict.fromkeys(item["model"] for item in items):
            group = [item for item in items if item["model"] == model]
            images = self._generator_for(model).generate([i["prompt"] for i in group], [i["seed"] for i in group])
            for item, image in zip(group, images):
                rgb = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, dtype=np.uint8)
                save_png(self.run_dir, item["path"], rgb)
                rows.append(candidate_row(
                    candidate_id=item["candidate_id"], kind=item["kind"], category_id=item["category_id"],
                    category=item["category"], path=item["path"], source="generated", model=model,
                    prompt=item["prompt"], seed=item["seed"], steps=int(g["steps"]), guidance=float(g["guidance"]),
                    width=int(rgb.shape[1]), height=int(rgb.shape[0]), url=""))
        return rows, []


class RetrieveStage(Stage):
    """Candidate images per category from a local collection (ranked by CLIP) or a clip-retrieval service."""

    name = "retrieve"
    _model_attrs = ("_scorer", "_ranking")

    def __init__(self, run_dir: Path, config: dict):
        super().__init__(run_dir, config)
        from xpaste.categories import require_distinct_names

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
            from xpaste.registry import load_backend
            from xpaste.score import SCORERS

            s = self.config["score"]
            scorer_cls = load_backend(SCORERS["clip"], "clip")
            self._scorer = scorer_cls(s["clip"], s["pretrained"], device=self.config["device"],
                                      batch_size=int(s["batch_size"]))
        return self._scorer

    def _folder_ranking(self):
        """Rank the whole collection once per process (every shard of categories reads from it)."""
        if self._ranking is None:
            from xpaste.retrieve.folder import list_images, rank_folder

            r = self.config["retrieve"]
            paths = list_images(r["folder"])
            self._ranking = rank_folder(paths, [c.text for c in self.categories], self._scorer_instance(),
                                        top_k=int(r["per_category"]), min_score=r["min_score"],
                                        simple_background=r["simple_background"], progress=False)
        return self._ranking

    def _labelled_candidates(self, items: list[dict]) -> list[dict]:
        """A labelled collection: folder/<category name or dir name>/** are that category's images, as they are."""
        from xpaste.retrieve.folder import labelled_folder, list_images

        root = Path(self.config["retrieve"]["folder"])
        rows = []
        for item in items:
            folder = labelled_folder(root, (item["category"], item["dir"]))  # never a folder outside root
            for path in list_images(folder) if folder is not None else []:
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
            rows.extend(self._labelled_candidates(items))
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
