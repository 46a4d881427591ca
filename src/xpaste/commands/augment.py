"""`xpaste augment`: write an augmented COCO/LVIS dataset."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from xpaste.commands.app import app


@app.command("augment")
def augment_cmd(
    dataset: Path = typer.Option(..., "--dataset", help="COCO/LVIS annotation json"),
    images: Path = typer.Option(..., "--images", help="folder the json's file_name entries are relative to"),
    pool: Path = typer.Option(..., "--pool", help="instance pool folder"),
    out: Path = typer.Option(..., "--out", help="output folder (images/ and annotations.json)"),
    copies: int = typer.Option(1, "--copies", help="augmented copies per image"),
    seed: int = typer.Option(0, "--seed"),
    workers: int = typer.Option(1, "--workers", help="processes; the output does not depend on it"),
    max_paste: int = typer.Option(20, "--max-paste", help="paste count ~ U[0, max_paste)"),
    num_paste: Optional[int] = typer.Option(None, "--num-paste", help="fixed paste count instead"),
    sampling: str = typer.Option("balanced", "--sampling", help="balanced | uniform | present"),
    blend: str = typer.Option("hard", "--blend", help="hard | alpha | gaussian | poisson"),
    scale_prior: str = typer.Option("dataset", "--scale-prior",
                                    help="'dataset' (measured on --dataset), 'none', or an `xpaste stats` json"),
    max_rotation: float = typer.Option(0.0, "--max-rotation", help="degrees; 0 disables rotation"),
    color_jitter: float = typer.Option(0.0, "--color-jitter", help="brightness/contrast/saturation +- this"),
    flip_prob: float = typer.Option(0.5, "--flip-prob"),
    image_format: str = typer.Option("auto", "--image-format", help="auto (png stays png, else jpg) | png"),
    max_images: Optional[int] = typer.Option(None, "--max-images", help="only the first N images (a subset run)"),
    engine: str = typer.Option("local", "--engine", help="local | ray (tasks on Ray actors; same output)"),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Ray cluster address (engine ray)"),
    fresh: bool = typer.Option(False, "--fresh", help="discard this --out's earlier outputs and start over "
                               "(needed when an input or option changed since it was started)"),
) -> None:
    """Paste pool instances into every image, K times, and write images plus a COCO/LVIS json (RLE masks).

    Every option is checked before anything is written. A killed or interrupted run resumes when rerun
    with the same command; a rerun whose inputs or options changed is refused (or starts over with --fresh).
    """
    from xpaste.augment import augment_dataset

    report = augment_dataset(
        dataset, images, pool, out, copies=copies, seed=seed, workers=workers, scale_prior=scale_prior,
        image_format=image_format, max_images=max_images, engine=engine, ray_address=ray_address, fresh=fresh,
        max_paste=max_paste, num_paste=num_paste,
        sampling=sampling, blend=blend,
        max_rotation=max_rotation, color_jitter=color_jitter, flip_prob=flip_prob,
    )
    typer.echo(f"{out}: {report.summary()}")
    if report.failed:
        typer.echo(f"see {out / 'augment_log.json'} for the {len(report.failed)} failed images")
