"""The generate stage: object images per category from a diffusers text-to-image model (method.md, Stage 1:
SD 1.5, DPM-Solver, 50 steps, guidance 7.5, 512x512), `per_category` per category and model, with
deterministic seeds (`xpaste.generate.prompts.image_seed`). One module: its config section
(`GenerateConfig`), its sharded `GenerateStage` (writes RUN/images/generated/ and RUN/generate/ shard tables
in `candidate_schema`) and its job (`run_job`). The model backend is `xpaste.generate.diffusers_t2i`.

With a plan (`generate.plan`, `xpaste generate --plan PLAN`, `xpaste run CONFIG --plan PLAN`: an `xpaste plan`
json whose categories are the run's), the run makes a planned round instead: the plan's `generate` images of
each category c in all (0: none; with several models, image i by model i mod M), object images only (the
scene images of `backgrounds` belong to the round without a plan). The round adds to the run's earlier
rounds: its ids are gen-<model tag>-<category id>-p<plan digest, 8 hex>-<i:06d> (the unplanned round's:
gen-<model tag>-<category id>-<i:06d>), its seeds `image_seed(seed, model, category, i, plan digest)`, its
prompts those of images 0, 1, ... of the category. Rerunning the same plan resumes it (nothing new once done);
another plan adds another round. Rounds and their resume rules: `xpaste.stages.candidates`.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from xpaste.categories import require_distinct_names, same_name_groups
from xpaste.generate import build_generator
from xpaste.generate.prompts import (BACKGROUND_PROMPTS, image_seed, load_prompt_file, prompt_for, resolve_prompt_keys,
                                     template_fields)
from xpaste.jobs import JobReport
from xpaste.pipeline.determinism import restore_threads
from xpaste.pipeline.rundir import resolve_categories, save_png
from xpaste.pipeline.runner import ShardPlan, Stage, run_sharded_job
from xpaste.stages.candidates import candidate_row, candidate_schema, extend_rounds, planned_round, round_tag
from xpaste.typed import Section, key_field

NAME = "generate"
#: Scheduler names of `xpaste.generate.diffusers_t2i.SCHEDULERS` (kept equal by a test; this module stays light).
SCHEDULER_NAMES = ("dpm", "ddim", "euler", "euler_a", "pndm", "lms")
#: The config keys `xpaste generate` offers as flags (besides the run's common ones), and its help line.
CLI_KEYS = ["workers", "categories.source", "generate.models", "generate.per_category", "generate.plan",
            "generate.seed", "generate.templates", "generate.prompt_file", "generate.batch_size", "generate.steps",
            "generate.guidance", "generate.scheduler", "generate.height", "generate.width", "generate.backgrounds"]
HELP = "Generate object images per category with a diffusers text-to-image model."


@dataclass(frozen=True)
class GenerateConfig(Section):
    """Text-to-image generation (method.md, Stage 1: SD 1.5, DPM-Solver, 50 steps, guidance 7.5, 512x512)."""

    enabled: bool = key_field(True, "run this stage in `xpaste run`", cli=False)
    models: tuple[str, ...] = key_field(("stable-diffusion-v1-5/stable-diffusion-v1-5",),
                                   "hub id or local folder", flag="--model", min_items=1)
    per_category: int = key_field(100, "images per category and model (the reference's default: 100)", lo=0)
    seed: int = key_field(0, "base seed; image i's seed derives from it", lo=0)
    batch_size: int = key_field(4, "images per model call", lo=1)
    steps: int = key_field(50, "diffusion steps", lo=1)
    guidance: float = key_field(7.5, "classifier-free guidance scale", lo=0)
    scheduler: str = key_field("dpm", "diffusion scheduler", choices=SCHEDULER_NAMES)
    height: int = key_field(512, "image height, pixels", lo=8)
    width: int = key_field(512, "image width, pixels", lo=8)
    templates: tuple[str, ...] = key_field(("a photo of a single {name}",),
                                           "template with {name} {definition} {synonym}", flag="--prompt",
                                           min_items=1, each=template_fields)
    prompt_file: Optional[str] = key_field(None, "per-category prompts (json or name<TAB>prompt lines)")
    negative_prompt: Optional[str] = key_field(None, "negative prompt", cli=False)
    backgrounds: int = key_field(0, "also N scene images for paste canvases", lo=0)
    plan: Optional[str] = key_field(None, "an `xpaste plan` json: make its `generate` images per category instead "
                                    "of per_category, as a round of its own added to the run's")


def model_tag(model: str) -> str:
    """8 hex digits naming a model in candidate ids (sha1 of its id or path)."""
    return hashlib.sha1(model.encode()).hexdigest()[:8]


class GenerateStage(Stage):
    """Text-to-image generation: `per_category` images per category and model, deterministic seeds; with a
    plan, the plan's count per category as a round of its own (module docstring)."""

    name = "generate"
    _model_attrs = ("_generator",)
    #: the fingerprint keys that size the round without a plan (`candidates.split_round`)
    sizes = ("per_category", "backgrounds")

    def __init__(self, run_dir: Path, config: dict):
        super().__init__(run_dir, config)
        self._prompts: dict[int, list[str]] | None = None
        self._round: dict | None = None  # the planned round of this run (`candidates.planned_round`)
        self.categories = resolve_categories(self.run_dir, config, self._check_categories)
        self._generator = None
        self._generator_model = None

    def schema(self):
        return candidate_schema()

    def fingerprint(self) -> dict:
        g = {k: v for k, v in self.config["generate"].items() if k not in ("batch_size", "enabled", "plan")}
        if self._round is None:
            return {"generate": g, "shard_size": self.config["shard_size"]}
        g = {k: v for k, v in g.items() if k not in self.sizes}  # the plan's counts size this round
        return {"generate": g, "shard_size": self.config["shard_size"], "round": self._round}

    def plan(self) -> list[dict]:
        g = self.config["generate"]
        if self._round is not None:
            return self._planned_items(self._round)
        return self._unplanned_items({"per_category": g["per_category"], "backgrounds": g["backgrounds"]})

    def extend(self, previous: dict, record: dict, plan: ShardPlan):
        """Rounds (`candidates.extend_rounds`): a new plan adds a round after the earlier ones."""
        extended, kept, _, _ = extend_rounds(self, previous, record, plan, self._items_of, "generate", self.sizes)
        return extended, kept

    def _items_of(self, round_: dict) -> list[dict]:
        return self._planned_items(round_) if "plan" in round_ else self._unplanned_items(round_)

    def _planned_items(self, round_: dict) -> list[dict]:
        """The items of a planned round: counts[c] images of category c, image i by model i mod M (models
        outermost, so a shard rarely needs two models)."""
        g = self.config["generate"]
        counts, tag_r, models = dict(map(tuple, round_["counts"])), round_tag(round_), list(g["models"])
        items = []
        for m, model in enumerate(models):
            tag = model_tag(model)
            for cat in self.categories:
                for i in range(m, int(counts.get(cat.id, 0)), len(models)):
                    cid = f"gen-{tag}-{cat.id}-{tag_r}-{i:06d}"
                    items.append({"candidate_id": cid, "kind": "object", "category_id": cat.id,
                                  "category": cat.name, "model": model,
                                  "prompt": prompt_for(cat, i, g["templates"], self._prompts),
                                  "seed": image_seed(int(g["seed"]), model, cat.id, i, round_["plan"]),
                                  "path": f"images/generated/{cat.dir_name}/{cid}.png"})
        return items

    def _unplanned_items(self, sizes: dict) -> list[dict]:
        """The items of the round without a plan: per_category images per category and model, then the
        backgrounds (`sizes`: {'per_category': n, 'backgrounds': n})."""
        g = self.config["generate"]
        per_category = self._prompts
        items = []
        for model in g["models"]:
            tag = model_tag(model)
            for cat in self.categories:
                for i in range(int(sizes["per_category"])):
                    cid = f"gen-{tag}-{cat.id}-{i:06d}"
                    items.append({"candidate_id": cid, "kind": "object", "category_id": cat.id,
                                  "category": cat.name, "model": model,
                                  "prompt": prompt_for(cat, i, g["templates"], per_category),
                                  "seed": image_seed(int(g["seed"]), model, cat.id, i),
                                  "path": f"images/generated/{cat.dir_name}/{cid}.png"})
            for i in range(int(sizes["backgrounds"] or 0)):
                cid = f"bg-{tag}-{i:06d}"
                items.append({"candidate_id": cid, "kind": "background", "category_id": 0, "category": "",
                              "model": model, "prompt": BACKGROUND_PROMPTS[i % len(BACKGROUND_PROMPTS)],
                              "seed": image_seed(int(g["seed"]), model, 0, i),
                              "path": f"images/backgrounds/{cid}.png"})
        return items

    def _check_categories(self, categories) -> None:
        """Run on the resolved categories before they are recorded and before any model loads: the prompt
        file's keys must each name one of them (`resolve_prompt_keys`: unknown, ambiguous or doubled keys are
        refused in one line, never left to fall back to the templates), then the same-name check."""
        g = self.config["generate"]
        if g["prompt_file"]:
            self._prompts = resolve_prompt_keys(load_prompt_file(g["prompt_file"]), categories, g["prompt_file"])
        if g.get("plan"):  # a plan of other categories is refused here, before anything is recorded
            self._round = planned_round(g["plan"], categories)
        self._refuse_same_prompts(categories)

    def _refuse_same_prompts(self, categories) -> None:
        """Same-name categories are refused only when their prompts coincide too (no id-keyed prompts, no
        differing definition or synonyms in the templates): their images would be alike under two ids.
        Compared ignoring case and spacing: Stable Diffusion's CLIP tokenizer lowercases the prompt."""
        g = self.config["generate"]
        n = max((c for _, c in self._round["counts"]), default=0) if self._round else int(g["per_category"])
        if not same_name_groups(categories) or n < 1:
            return
        per_category = self._prompts

        def prompts(cat):
            return [" ".join(prompt_for(cat, i, g["templates"], per_category).lower().split()) for i in range(n)]

        require_distinct_names(categories, "generation prompts by name", self.config["categories"]["source"],
                               same=lambda a, b: prompts(a) == prompts(b))

    def _generator_for(self, model: str):
        if self._generator_model != model:
            g = self.config["generate"]
            self._generator = None  # free the previous model before loading the next
            self._generator = build_generator(
                "diffusers", model=model, device=self.config["device"], scheduler=g["scheduler"], steps=int(g["steps"]),
                guidance=float(g["guidance"]), height=int(g["height"]), width=int(g["width"]),
                negative_prompt=g["negative_prompt"], batch_size=int(g["batch_size"]))
            self._generator_model = model
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


def run_job(config: Any, fresh: bool = False, progress: bool = True) -> JobReport:
    """Run the generate stage in `config.run_dir` (resuming finished shards; `fresh` redoes it)."""
    return run_sharded_job(GenerateStage, config, fresh, progress)
