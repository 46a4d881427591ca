"""`xpaste export-yolo`: write a COCO / LVIS dataset (e.g. `xpaste augment` output) in the YOLO-seg layout."""
from __future__ import annotations

from pathlib import Path

import typer

from xpaste.commands.app import app, example


@app.command("export-yolo", epilog=example(
    "xpaste export-yolo --dataset augmented/annotations.json --images augmented/images --out yolo/ --val-fraction 0.1"))
def export_yolo_cmd(
    dataset: Path = typer.Option(..., "--dataset", help="COCO/LVIS annotation json"),
    images: Path = typer.Option(..., "--images", help="folder the json's file_name entries are relative to"),
    out: Path = typer.Option(..., "--out", help="output folder: images/, labels/ and data.yaml"),
    val_fraction: float = typer.Option(0.0, "--val-fraction",
                                       help="share of images moved to a val split (0: val = train), "
                                       "grouped by source image: every copy of one source image, and the "
                                       "source itself, on one side (source: an image's source_file_name, as "
                                       "augment writes it, else its own file_name)"),
    split: str = typer.Option("train", "--split", help="name of the main split folder"),
    seed: int = typer.Option(0, "--seed", help="seed of the train/val split"),
    fresh: bool = typer.Option(False, "--fresh", help="replace an existing export in --out (never an input: an "
                               "--out overlapping --dataset or --images is refused)"),
    overwrite: bool = typer.Option(False, "--overwrite", hidden=True, help="the earlier name of --fresh"),
) -> None:
    """Polygon labels for ultralytics YOLO-seg (classes 0..K-1 in category-id order; crowd regions skipped).

    The val split is grouped by source image, so augmented copies of one image never sit on both sides; val is
    as close to --val-fraction as whole groups allow, and a printed note says when it is far from it.

    Resumable: after a crash, a full disk or Ctrl-C, the same command completes the export (files already
    written completely are kept)."""
    from xpaste.errors import XPasteError

    try:
        import ultralytics.data.utils  # noqa: F401  (yolo_export imports it lazily: fail here, in one line)
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] == "ultralytics":  # the AGPL extra is optional: say how to get it
            raise XPasteError("ultralytics is not installed", hint="pip install 'xpaste[ultralytics]'") from None
        raise
    from xpaste.integrations.yolo_export import export_yolo_seg
    if not 0.0 <= val_fraction < 1.0:
        raise typer.BadParameter("must be in [0, 1)", param_hint="--val-fraction")
    data_yaml = export_yolo_seg(dataset, images, out, split=split, val_fraction=val_fraction, seed=seed,
                                overwrite=fresh or overwrite)
    typer.echo(f"wrote {data_yaml}  (train with: yolo segment train data={data_yaml})")
