"""`xpaste generate | retrieve | segment | score | build-pool | run`: the instance-generation pipeline.

Every flag is a config key (shown in its help); `--config FILE` gives them all at once and `--set a.b=v`
overrides anything. Each stage resumes where it stopped; `--fresh` redoes a stage from scratch.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from xpaste.commands.app import app

CONFIG = typer.Option(None, "--config", help="YAML config (keys as in `xpaste run`)")
RUN = typer.Option(None, "--run", help="run folder [run_dir]")
SET = typer.Option(None, "--set", help="override a config key: --set generate.per_category=8 (repeatable)")
FRESH = typer.Option(False, "--fresh", help="discard this stage's earlier outputs and redo it")
ENGINE = typer.Option(None, "--engine", help="local | ray [engine]")
RAY_ADDRESS = typer.Option(None, "--ray-address", help="Ray cluster address [ray_address]")
CATEGORIES = typer.Option(None, "--categories",
                          help="COCO/LVIS json, text file (one name per line) or 'a,b,c' [categories.source]")
DEVICE = typer.Option(None, "--device", help="cuda | cpu | cuda:1 ... [device]")


def _updates(pairs: dict) -> dict:
    """Flags given on the command line -> a nested config update (None means 'not given')."""
    from xpaste.pipeline.config import nested

    out: dict = {}
    for key, value in pairs.items():
        if value is None or value == [] or value == ():
            continue
        if isinstance(value, Path):
            value = str(value)
        update = nested(key.split("."), list(value) if isinstance(value, (list, tuple)) else value)
        top = next(iter(update))
        if isinstance(update[top], dict):
            out.setdefault(top, {}).update(update[top])
        else:
            out[top] = update[top]
    return out


def _config(config_path, overrides, **flags) -> dict:
    from xpaste.pipeline.config import load_config

    return load_config(config_path, overrides or [], [_updates(flags)])


def _run_stage(name: str, config: dict, fresh: bool) -> None:
    from xpaste.pipeline.rundir import record_invocation
    from xpaste.pipeline.runner import run_stage
    from xpaste.pipeline.stages import make_stage

    run_dir = Path(config["run_dir"])
    record_invocation(run_dir, name, config)
    report = run_stage(make_stage(name, run_dir, config), engine=config["engine"], fresh=fresh,
                       ray_address=config["ray_address"])
    typer.echo(report.summary())
    for entry in report.skipped[:10]:
        typer.echo(f"  skipped {entry['item']}: {entry['reason']}")
    if len(report.skipped) > 10:
        typer.echo(f"  ... {len(report.skipped) - 10} more in {run_dir / name}/shard-*.skipped.json")


@app.command("generate")
def generate_cmd(
    config: Optional[Path] = CONFIG, run: Optional[Path] = RUN, set_: Optional[List[str]] = SET,
    fresh: bool = FRESH, engine: Optional[str] = ENGINE, ray_address: Optional[str] = RAY_ADDRESS,
    categories: Optional[str] = CATEGORIES, device: Optional[str] = DEVICE,
    model: Optional[List[str]] = typer.Option(None, "--model", help="hub id or local folder, repeatable [generate.models]"),
    per_category: Optional[int] = typer.Option(None, "--per-category", help="[generate.per_category]"),
    seed: Optional[int] = typer.Option(None, "--seed", help="[generate.seed]"),
    prompt: Optional[List[str]] = typer.Option(None, "--prompt", help="template with {name} {definition} {synonym}, repeatable [generate.templates]"),
    prompt_file: Optional[Path] = typer.Option(None, "--prompt-file", help="per-category prompts [generate.prompt_file]"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="[generate.batch_size]"),
    steps: Optional[int] = typer.Option(None, "--steps", help="[generate.steps]"),
    guidance: Optional[float] = typer.Option(None, "--guidance", help="[generate.guidance]"),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="dpm | ddim | euler | euler_a | pndm | lms [generate.scheduler]"),
    height: Optional[int] = typer.Option(None, "--height", help="[generate.height]"),
    width: Optional[int] = typer.Option(None, "--width", help="[generate.width]"),
    backgrounds: Optional[int] = typer.Option(None, "--backgrounds", help="also N scene images for paste canvases [generate.backgrounds]"),
) -> None:
    """Generate object images per category with a diffusers text-to-image model."""
    cfg = _config(config, set_, run_dir=run, engine=engine, ray_address=ray_address, device=device,
                  **{"categories.source": categories, "generate.models": model, "generate.per_category": per_category,
                     "generate.seed": seed, "generate.templates": prompt, "generate.prompt_file": prompt_file,
                     "generate.batch_size": batch_size, "generate.steps": steps, "generate.guidance": guidance,
                     "generate.scheduler": scheduler, "generate.height": height, "generate.width": width,
                     "generate.backgrounds": backgrounds})
    _run_stage("generate", cfg, fresh)


@app.command("retrieve")
def retrieve_cmd(
    config: Optional[Path] = CONFIG, run: Optional[Path] = RUN, set_: Optional[List[str]] = SET,
    fresh: bool = FRESH, engine: Optional[str] = ENGINE, ray_address: Optional[str] = RAY_ADDRESS,
    categories: Optional[str] = CATEGORIES, device: Optional[str] = DEVICE,
    folder: Optional[Path] = typer.Option(None, "--folder", help="image folder or list file [retrieve.folder]"),
    knn_url: Optional[str] = typer.Option(None, "--knn-url", help="clip-retrieval service URL [retrieve.knn_url]"),
    knn_indice: Optional[str] = typer.Option(None, "--knn-indice", help="[retrieve.knn_indice]"),
    per_category: Optional[int] = typer.Option(None, "--per-category", help="[retrieve.per_category]"),
    min_score: Optional[float] = typer.Option(None, "--min-score", help="100 x cosine [retrieve.min_score]"),
    simple_background: Optional[float] = typer.Option(None, "--simple-background", help="e.g. 0.4 [retrieve.simple_background]"),
    clip: Optional[str] = typer.Option(None, "--clip", help="[score.clip]"),
    pretrained: Optional[str] = typer.Option(None, "--pretrained", help="[score.pretrained]"),
) -> None:
    """Retrieve candidate images per category from a local collection or a CLIP k-NN service."""
    cfg = _config(config, set_, run_dir=run, engine=engine, ray_address=ray_address, device=device,
                  **{"categories.source": categories, "retrieve.folder": folder, "retrieve.knn_url": knn_url,
                     "retrieve.knn_indice": knn_indice, "retrieve.per_category": per_category,
                     "retrieve.min_score": min_score, "retrieve.simple_background": simple_background,
                     "score.clip": clip, "score.pretrained": pretrained})
    _run_stage("retrieve", cfg, fresh)


@app.command("segment")
def segment_cmd(
    config: Optional[Path] = CONFIG, run: Optional[Path] = RUN, set_: Optional[List[str]] = SET,
    fresh: bool = FRESH, engine: Optional[str] = ENGINE, ray_address: Optional[str] = RAY_ADDRESS,
    device: Optional[str] = DEVICE,
    segmenter: Optional[List[str]] = typer.Option(None, "--segmenter", help="grabcut | rembg[:model|:file.onnx] | clipseg[:folder], repeatable [segment.segmenters]"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="[segment.batch_size]"),
) -> None:
    """Cut out every candidate image with each segmenter (soft masks are stored)."""
    cfg = _config(config, set_, run_dir=run, engine=engine, ray_address=ray_address, device=device,
                  **{"segment.segmenters": segmenter, "segment.batch_size": batch_size})
    _run_stage("segment", cfg, fresh)


@app.command("score")
def score_cmd(
    config: Optional[Path] = CONFIG, run: Optional[Path] = RUN, set_: Optional[List[str]] = SET,
    fresh: bool = FRESH, engine: Optional[str] = ENGINE, ray_address: Optional[str] = RAY_ADDRESS,
    device: Optional[str] = DEVICE,
    clip: Optional[str] = typer.Option(None, "--clip", help="ViT-L-14 | hf-hub:org/name | local-dir:/folder [score.clip]"),
    pretrained: Optional[str] = typer.Option(None, "--pretrained", help="open_clip pretrained tag [score.pretrained]"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="[score.batch_size]"),
) -> None:
    """Score every cut-out (composited on white) with CLIP against 'a photo of {name}'."""
    cfg = _config(config, set_, run_dir=run, engine=engine, ray_address=ray_address, device=device,
                  **{"score.clip": clip, "score.pretrained": pretrained, "score.batch_size": batch_size})
    _run_stage("score", cfg, fresh)


@app.command("build-pool")
def build_pool_cmd(
    config: Optional[Path] = CONFIG, run: Optional[Path] = RUN, set_: Optional[List[str]] = SET,
    device: Optional[str] = DEVICE,
    engine: Optional[str] = typer.Option(
        None, "--engine", help="local | ray: accepted so one command line serves every stage; build-pool is "
        "light (a filter over the score tables plus PNG crops) and always runs here, on the driver [engine]"),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="accepted and unused, as --engine [ray_address]"),
    out: Optional[Path] = typer.Option(None, "--out", help="pool folder (default RUN/pool) [build_pool.out]"),
    t: Optional[float] = typer.Option(None, "--t", help="CLIP bar cap (paper: 21) [build_pool.t]"),
    d: Optional[float] = typer.Option(None, "--d", help="bar = min(t, max - d) [build_pool.d]"),
    area_min: Optional[float] = typer.Option(None, "--area-min", help="[build_pool.area_min]"),
    area_max: Optional[float] = typer.Option(None, "--area-max", help="[build_pool.area_max]"),
    dedup: Optional[float] = typer.Option(None, "--dedup", help="embedding cosine for duplicates [build_pool.dedup]"),
    real_pool: Optional[Path] = typer.Option(None, "--real-pool", help="DiverGen filter against real instances [build_pool.real_pool]"),
) -> None:
    """Select the best cut-out per image, filter by CLIP bar, area and duplicates, and write the pool."""
    from xpaste.pipeline.build_pool import build_pool
    from xpaste.pipeline.rundir import record_invocation

    cfg = _config(config, set_, run_dir=run, device=device, engine=engine, ray_address=ray_address,
                  **{"build_pool.out": out, "build_pool.t": t, "build_pool.d": d, "build_pool.area_min": area_min,
                     "build_pool.area_max": area_max, "build_pool.dedup": dedup, "build_pool.real_pool": real_pool})
    record_invocation(Path(cfg["run_dir"]), "build-pool", cfg)
    summary = build_pool(cfg["run_dir"], cfg)
    typer.echo(f"{summary['pool']}: {summary['added']} instances added from {summary['candidates']} candidates "
               f"{summary['decisions']}")


@app.command("run")
def run_cmd(
    config: Path = typer.Argument(..., help="YAML config"),
    set_: Optional[List[str]] = SET,
) -> None:
    """Run the enabled stages in order (generate, retrieve, segment, score, build-pool), each resumable."""
    import time

    from xpaste.pipeline.build_pool import build_pool
    from xpaste.pipeline.config import load_config
    from xpaste.pipeline.rundir import record_invocation

    cfg = load_config(config, set_ or [])
    times = {}
    for name in ("generate", "retrieve", "segment", "score"):
        if name in ("generate", "retrieve") and not cfg[name]["enabled"]:
            continue
        if name == "score" and cfg["score"]["clip"] is None:
            typer.echo("== score: skipped (score.clip is null: the pool is built without CLIP scores)")
            continue
        typer.echo(f"== {name}")
        start = time.perf_counter()
        _run_stage(name, cfg, fresh=False)
        times[name] = time.perf_counter() - start
    typer.echo("== build-pool")
    start = time.perf_counter()
    record_invocation(Path(cfg["run_dir"]), "build-pool", cfg)
    summary = build_pool(cfg["run_dir"], cfg)
    times["build-pool"] = time.perf_counter() - start
    typer.echo(f"{summary['pool']}: {summary['added']} instances added {summary['decisions']}")
    typer.echo("stage times: " + ", ".join(f"{k} {v:.1f} s" for k, v in times.items()))
