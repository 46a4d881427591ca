"""`xpaste masks-from-boxes`: give the box-only annotations of a COCO/LVIS dataset box-prompted masks.

Its own command module, as augment's: its inputs are a dataset json and an images folder and its output a json
file, not a run folder, so the run commands' --run, --config and --set do not apply. The option flags are still
derived from the config fields (`stages.masks_from_boxes.CLI_KEYS`: the `masks_from_boxes:` section and the
run-wide workers, engine, ray_address, device), never spelled here.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Optional

import typer

from xpaste.commands.app import app, example
from xpaste.commands.pipeline import _flag_params
from xpaste.stages.masks_from_boxes import (
    CLI_KEYS,
    EMPTY_REASONS,
    HELP,
    masks_from_boxes,
)

#: empty annotations listed on the console (all of them are marked in the output json)
SHOWN = 10


def masks_from_boxes_cmd(
    dataset: Path = typer.Option(..., "--dataset", help="COCO/LVIS annotation json (box-only annotations)"),
    images: Path = typer.Option(..., "--images", help="folder the json's file_name entries are relative to"),
    out: Path = typer.Option(..., "--out", help="output json: the dataset with masks"),
    fresh: bool = typer.Option(False, "--fresh", help="discard this --out's earlier work and start over (needed "
                               "when an input or the segmenter changed since it was started)"),
    **options: Optional[str],
) -> None:
    given = {_OPTION_NAMES[k]: v for k, v in options.items() if v is not None}
    report = masks_from_boxes(dataset, images, out, fresh=fresh, **given)
    typer.echo(f"masks-from-boxes: {report.summary()} -> {out}")
    for file_name, why in report.failed_images[:SHOWN]:
        typer.echo(f"  unreadable image {file_name}: {why}", err=True)
    for ann_id, reason in report.empty_annotations[:SHOWN]:
        typer.echo(f"  empty: annotation {ann_id}: {EMPTY_REASONS[reason]} ({reason})")
    if report.empty > SHOWN:
        typer.echo(f"  ... {report.empty - SHOWN} more")
    if report.empty:
        typer.echo(f"every empty annotation keeps its box and is marked mask_source \"empty\" in {out}; augment and "
                   "pool import-coco leave them out (reason no_mask_found)")


masks_from_boxes_cmd.__doc__ = HELP  # the help text lives with the stage, as every stage's does
_option_params, _names, _ = _flag_params(CLI_KEYS)
#: typer parameter name -> masks_from_boxes' argument ('cfg_masks_from_boxes__segmenter' -> 'segmenter')
_OPTION_NAMES = {name: key.rpartition(".")[2] for name, key in _names.items()}
_signature = inspect.signature(masks_from_boxes_cmd)
masks_from_boxes_cmd.__signature__ = _signature.replace(parameters=[  # type: ignore[attr-defined]
    *(p for p in _signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD), *_option_params])
app.command("masks-from-boxes", epilog=example(
    "xpaste masks-from-boxes --dataset train.json --images train_images/ --segmenter sam2 --out train_masks.json",
    "xpaste masks-from-boxes --dataset train.json --images train_images/ --segmenter sam:/models/sam-vit-base "
    "--out train_masks.json --device cuda"))(masks_from_boxes_cmd)
