"""`xpaste augment`: write an augmented COCO/LVIS dataset.

The paste flags (`--max-paste`, `--blend`, ...) are derived from `xpaste.paste.config.PasteConfig`, the one
home of every paste option, its default and its help; only the flags given on the command line are passed
on, and `PasteConfig` converts and checks them (one line naming the option, before anything is written).
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Optional

import typer

from xpaste.commands.app import app
from xpaste.paste.config import PRESETS, PasteConfig
from xpaste.stages.augment import augment_dataset


def augment_cmd(
    dataset: Path = typer.Option(..., "--dataset", help="COCO/LVIS annotation json"),
    images: Path = typer.Option(..., "--images", help="folder the json's file_name entries are relative to"),
    pool: Path = typer.Option(..., "--pool", help="instance pool folder"),
    out: Path = typer.Option(..., "--out", help="output folder (images/ and annotations.json)"),
    copies: int = typer.Option(1, "--copies", help="augmented copies per image"),
    seed: int = typer.Option(0, "--seed"),
    workers: int = typer.Option(1, "--workers", help="processes; the output does not depend on it"),
    scale_prior: str = typer.Option("dataset", "--scale-prior",
                                    help="'dataset' (measured on --dataset's original annotations), 'none', "
                                         "an `xpaste stats` json or another COCO/LVIS json"),
    preset: str = typer.Option("xpaste", "--preset", help=f"bundle of paste defaults: {' | '.join(PRESETS)}; "
                                                          "explicit paste flags win"),
    image_format: str = typer.Option("auto", "--image-format", help="auto (png stays png, else jpg) | png"),
    max_images: Optional[int] = typer.Option(None, "--max-images", help="only the first N images (a subset run)"),
    engine: str = typer.Option("local", "--engine", help="local | ray (tasks on Ray actors; same output)"),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Ray cluster address (engine ray)"),
    fresh: bool = typer.Option(False, "--fresh", help="discard this --out's earlier outputs and start over "
                               "(needed when an input or option changed since it was started)"),
    **paste_options: Optional[str],
) -> None:
    """Paste pool instances into every image, K times, and write images plus a COCO/LVIS json (RLE masks).

    Every option is checked before anything is written. A killed or interrupted run resumes when rerun
    with the same command; a rerun whose inputs or options changed is refused (or starts over with --fresh).
    """
    given = {k: v for k, v in paste_options.items() if v is not None}
    report = augment_dataset(
        dataset, images, pool, out, copies=copies, seed=seed, workers=workers, scale_prior=scale_prior,
        image_format=image_format, max_images=max_images, engine=engine, ray_address=ray_address, fresh=fresh,
        paste=PasteConfig.preset(preset, **given),
    )
    typer.echo(f"{out}: {report.summary()}")
    if report.failed:
        typer.echo(f"see {out / 'augment_log.json'} for the {len(report.failed)} failed images")


# 'weighted' sampling needs per-category weights, a mapping no flag can carry (Python: CopyPaste(...,
# category_weights=...)); augment refuses it in one line, so the help does not offer it.
CLI_EXCLUDED_CHOICES = {"sampling": ("weighted",)}


def _type_name(hint) -> str:
    text = getattr(hint, "__name__", None) or str(hint)
    return {"tuple": "low,high", "Optional": "int"}.get(text, text.replace("typing.", "").replace("Optional[int]", "int"))


def _paste_parameters() -> list[inspect.Parameter]:
    """One `--flag` per PasteConfig field: a string converted by PasteConfig, None when not given."""
    params = []
    for opt in PasteConfig.options():
        choices = tuple(c for c in opt["choices"] or () if c not in CLI_EXCLUDED_CHOICES.get(opt["name"], ()))
        help_text = opt["help"].split(":")[0] if opt["name"] == "sampling" else opt["help"]
        help_text += f" ({' | '.join(choices)})" if choices else ""
        default = opt["default"]
        shown = ",".join(str(v) for v in default) if isinstance(default, tuple) else str(default)
        params.append(inspect.Parameter(
            opt["name"], inspect.Parameter.KEYWORD_ONLY, annotation=Optional[str],
            default=typer.Option(None, opt["flag"], help=help_text, show_default=shown,
                                 metavar=f"<{_type_name(opt['type'])}>", rich_help_panel="Paste options")))
    return params


_signature = inspect.signature(augment_cmd)
augment_cmd.__signature__ = _signature.replace(parameters=[
    *(p for p in _signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD),
    *_paste_parameters()])
app.command("augment")(augment_cmd)
