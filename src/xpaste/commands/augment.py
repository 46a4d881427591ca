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

from xpaste.commands.app import app, example
from xpaste.commands.pipeline import _flag_params
from xpaste.paste.config import PRESETS, PasteConfig, PasteConfigError
from xpaste.stages.augment import HELP, augment_dataset

#: The config keys `xpaste augment` offers as flags: their types, bounds, help and defaults are the fields of
#: `AugmentConfig` and `RunSettings` (declared once; `xpaste run` reads the same keys from its YAML).
AUGMENT_KEYS = ["augment.copies", "augment.seed", "workers", "augment.scale_prior", "augment.image_format",
                "augment.max_images", "augment.plan", "engine", "ray_address"]


def augment_cmd(
    dataset: Path = typer.Option(..., "--dataset", help="COCO/LVIS annotation json"),
    images: Path = typer.Option(..., "--images", help="folder the json's file_name entries are relative to"),
    pool: Path = typer.Option(..., "--pool", help="instance pool folder"),
    out: Path = typer.Option(..., "--out", help="output folder (images/ and annotations.json)"),
    preset: str = typer.Option("xpaste", "--preset", help=f"bundle of paste defaults; explicit paste flags win "
                                                          f"({' | '.join(PRESETS)})"),
    fresh: bool = typer.Option(False, "--fresh", help="discard this --out's earlier outputs and start over "
                               "(needed when an input or option changed since it was started)"),
    **options: Optional[str],
) -> None:
    run_options = {_OPTION_NAMES[k]: v for k, v in options.items() if k in _OPTION_NAMES and v is not None}
    given = {k: v for k, v in options.items() if k not in _OPTION_NAMES and v is not None}
    for name, excluded in CLI_EXCLUDED_CHOICES.items():  # the choices the help lists are the ones accepted
        value = given.get(name)
        if value is not None and value.strip() not in _cli_choices(name):
            raise PasteConfigError(f"--{name.replace('_', '-')}: must be one of {', '.join(_cli_choices(name))}, "
                                   f"got {value!r}", hint=EXCLUDED_HINTS[name] if value.strip() in excluded else None)
    try:
        paste = PasteConfig.preset(preset, **given)
    except PasteConfigError as e:  # name the flag that gave the value
        if e.option is None:
            raise
        raise PasteConfigError(f"--{e.option.replace('_', '-')}: {e.message}", hint=e.hint) from None
    report = augment_dataset(dataset, images, pool, out, fresh=fresh, paste=paste, **run_options)
    typer.echo(f"{out}: {report.summary()}")
    if report.failed:
        typer.echo(f"see {out / 'augment_log.json'} for the {len(report.failed)} failed images")


# Choices a paste flag does not offer (none now: 'weighted' sampling takes its per-category weights from --plan,
# an `xpaste plan` json; `check_options` refuses either one without the other).
CLI_EXCLUDED_CHOICES: dict[str, tuple[str, ...]] = {}
EXCLUDED_HINTS: dict[str, str] = {}


def _cli_choices(name: str) -> tuple[str, ...]:
    opt = next(o for o in PasteConfig.options() if o["name"] == name)
    return tuple(c for c in opt["choices"] or () if c not in CLI_EXCLUDED_CHOICES.get(name, ()))


def _type_name(hint) -> str:
    """The metavar of a paste option, in the CLI's one style (INTEGER, NUMBER, TEXT, LOW,HIGH)."""
    text = getattr(hint, "__name__", None) or str(hint)
    text = {"tuple": "low,high", "Optional": "int"}.get(text, text.replace("typing.", "").replace("Optional[int]", "int"))
    return {"int": "INTEGER", "float": "NUMBER", "str": "TEXT"}.get(text, text.upper())


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
            default=typer.Option(None, opt["flag"], help=help_text,
                                 show_default=shown if default is not None else False,
                                 metavar=_type_name(opt["type"]), rich_help_panel="Paste options")))
    return params


augment_cmd.__doc__ = HELP  # the help text lives with the stage, as every stage's does
_option_params, _names, _ = _flag_params(AUGMENT_KEYS)
#: typer parameter name -> augment_dataset's argument ('cfg_augment__copies' -> 'copies')
_OPTION_NAMES = {name: key.rpartition(".")[2] for name, key in _names.items()}
_signature = inspect.signature(augment_cmd)
augment_cmd.__signature__ = _signature.replace(parameters=[
    *(p for p in _signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD),
    *_option_params, *_paste_parameters()])
app.command("augment", epilog=example(
    "xpaste augment --dataset train.json --images train_images/ --pool pool/ --out augmented/ --copies 2 --seed 0",
    "xpaste augment --dataset train.json --images train_images/ --pool pool/ --out augmented/ --blend gaussian "
    "--max-paste 10 --scale-prior stats.json"))(augment_cmd)
