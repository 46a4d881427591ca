"""`xpaste generate | retrieve | segment | score | build-pool | run`: the instance-generation pipeline.

Every flag is a config key: each stage module (`xpaste.stages.STAGES`) lists the keys its command offers
(`CLI_KEYS`) and its help line (`HELP`); the flags, their types, help and choices are derived from the config
fields (`xpaste.stages.config.cli_options`), never spelled here. `--config FILE` gives them all at once and
`--set a.b=v` overrides anything. The whole config is checked before any stage runs or is written. Each
stage resumes where it stopped; `--fresh` redoes a stage from scratch. `--plan PLAN` (generate, retrieve,
run) makes the images an `xpaste plan` json asks for per category, as a round added to the run's
(`xpaste.stages.candidates`). (`xpaste augment` has its own command module: its inputs are a dataset and a
pool, not a run folder.)
"""
from __future__ import annotations

import inspect
import typing
from pathlib import Path
from typing import List, Optional

import typer

from xpaste.commands.app import app, example
from xpaste.stages import STAGES, stage_module
from xpaste.stages.config import cli_options, load_config, merge, nested
from xpaste.stages.run import run_pipeline, run_stage_job

COMMON = ["run_dir", "engine", "ray_address", "device"]

#: Each command's example, shown at the end of its --help.
EXAMPLES = {
    "generate": ["xpaste generate --run runs/lvis --categories lvis_v1_train.json "
                 "--model stable-diffusion-v1-5/stable-diffusion-v1-5 --per-category 8 --seed 0",
                 "xpaste generate --run runs/lvis --plan plan.json   (a round of the plan's count per category, "
                 "added to the run's)"],
    "retrieve": ["xpaste retrieve --run runs/offline --categories train.json --folder photos/ --labelled",
                 "xpaste retrieve --run runs/web --categories cup,dog --folder web_images/ --per-category 20 "
                 "--clip ViT-L-14 --pretrained openai",
                 "xpaste retrieve --run runs/web --folder web_images/ --plan plan.json   (the next-best images, "
                 "the plan's count per category)"],
    "segment": ["xpaste segment --run runs/offline --segmenter grabcut",
                "xpaste segment --run runs/offline --segmenter grabcut --segmenter rembg:u2net   "
                "(added to a run: only rembg runs)"],
    "score": ["xpaste score --run runs/web --clip ViT-L-14 --pretrained openai"],
    "build-pool": ["xpaste build-pool --run runs/web", "xpaste build-pool --run runs/offline --set score.clip=null   "
                   "(no CLIP scores: per image the first segmenter whose mask area is in range)"],
}

#: Stages whose inputs are a dataset, not a run folder: each has its own command module (commands/augment.py,
#: commands/masks_from_boxes.py), with --dataset, --images and --out instead of --run.
OWN_COMMANDS = ("augment", "masks-from-boxes")

#: command -> (the config keys it offers as flags, its help line), from each stage's module.
STAGE_FLAGS: dict[str, tuple[list[str], str]] = {
    name: (COMMON + list(stage_module(name).CLI_KEYS), stage_module(name).HELP)
    for name in STAGES if name not in OWN_COMMANDS}

CONFIG_OPTION = typer.Option(None, "--config", help="YAML config (keys as in `xpaste run`; see examples/pipeline.yaml "
                             "and examples/pipeline_offline.yaml)")
SET_OPTION = typer.Option(None, "--set", metavar="KEY=VALUE",
                          help="override a config key, the value read as YAML: --set generate.per_category=8 "
                               "(repeatable)")
FRESH_OPTION = typer.Option(False, "--fresh", help="discard this stage's earlier outputs and redo it (a rerun with "
                            "other options or inputs is otherwise refused; added work needs no --fresh: an added "
                            "segmenter, a planned round's new candidates)")
BUILD_FRESH_OPTION = typer.Option(False, "--fresh", help="discard the earlier pool and decisions of this run and "
                                  "rebuild them (a rerun with other options or inputs is otherwise refused)")


def _param(name: str, annotation, default) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


def _flag_params(keys: list[str]) -> tuple[list[inspect.Parameter], dict[str, str], dict[str, str]]:
    """typer parameters for config keys: (parameters, python name -> key, key -> flag). Values arrive as text
    (or a list of text for list keys, a bool for true/false keys) and are coerced by the config loader, so a
    wrong value is refused in one line naming the flag, its key and the expected type."""
    params, names, flags = [], {}, {}
    for opt in cli_options(keys):
        name = "cfg_" + opt["key"].replace(".", "__")
        hint = opt["hint"]
        inner = typing.get_args(hint)[0] if typing.get_origin(hint) is typing.Union else hint
        if typing.get_origin(inner) is tuple:
            annotation, extra = Optional[List[str]], " (repeatable)"
        elif inner is bool:
            annotation, extra = Optional[bool], ""
        else:
            annotation, extra = Optional[str], ""
        flag = opt["flag"]
        decls = [f"{flag}/--no-{flag[2:]}"] if inner is bool else [flag]
        option = typer.Option(None, *decls, help=opt["help"] + extra,
                              metavar=None if inner is bool else opt["metavar"],
                              show_default=opt["default"] if opt["default"] is not None else False)
        params.append(_param(name, annotation, option))
        names[name] = opt["key"]
        flags[opt["key"]] = flag
    return params, names, flags


def _flag_updates(values: dict, names: dict[str, str]) -> dict:
    """Flags given on the command line -> one nested config update (None means 'not given')."""
    out: dict = {}
    for name, value in values.items():
        if value is None or (isinstance(value, (list, tuple)) and len(value) == 0):
            continue
        out = merge(out, nested(names[name], list(value) if isinstance(value, (list, tuple)) else value))
    return out


def _load(config_file, overrides, values: dict, names: dict, flags: dict):
    return load_config(config_file, list(overrides or []), [_flag_updates(values, names)], labels=flags)


def _echo_report(report) -> None:
    for line in report.lines():
        typer.echo(line)


def _make_stage_command(command: str, keys: list[str], help_text: str):
    params, names, flags = _flag_params(keys)

    def stage_command(**kwargs) -> None:
        fresh = kwargs.pop("fresh", False)
        config = _load(kwargs.pop("config"), kwargs.pop("set_"), kwargs, names, flags)
        _echo_report(run_stage_job(command, config, fresh=fresh))

    signature = [_param("config", Optional[Path], CONFIG_OPTION), _param("set_", Optional[List[str]], SET_OPTION)]
    signature.append(_param("fresh", bool, BUILD_FRESH_OPTION if command == "build-pool" else FRESH_OPTION))
    signature += params
    stage_command.__signature__ = inspect.Signature(signature)  # type: ignore[attr-defined]
    stage_command.__annotations__ = {p.name: p.annotation for p in signature} | {"return": None}
    stage_command.__doc__ = help_text
    stage_command.__name__ = f"{command.replace('-', '_')}_cmd"
    app.command(command, epilog=example(*EXAMPLES.get(command, [])) if command in EXAMPLES else None)(stage_command)
    return stage_command


for _command, (_keys, _help) in STAGE_FLAGS.items():
    _make_stage_command(_command, _keys, _help)


@app.command("run", epilog=example("xpaste run examples/pipeline_offline.yaml   (no model weights: after make demo)",
                                   "xpaste run examples/pipeline.yaml --set generate.per_category=8 --set engine=ray",
                                   "xpaste run examples/pipeline.yaml --plan plan.json   (the next round: the plan's "
                                   "count per category, added to the run's)"))
def run_cmd(
    config: Path = typer.Argument(..., help="YAML config (see examples/pipeline.yaml, examples/pipeline_offline.yaml); "
                                  "a run's own RUN/config.yaml reruns its latest settings"),
    set_: Optional[List[str]] = SET_OPTION,
    plan: Optional[Path] = typer.Option(None, "--plan", help="an `xpaste plan` json: generate and retrieve (those "
                                        "enabled) make its `generate` count per category instead of per_category, "
                                        "as a round added to the run's; the same plan again resumes it (config "
                                        "keys generate.plan, retrieve.plan)"),
) -> None:
    """Run the enabled stages in order (generate, retrieve, segment, score, build-pool), each resumable.

    With --plan, generate and retrieve make the next round of the closed loop (`xpaste plan`): the plan's count
    per category, added to what the run already has; segment, score and build-pool then take the new images in."""
    report = run_pipeline(load_config(config, list(set_ or [])), plan=plan)
    _echo_report(report)
    typer.echo("stage times: " + ", ".join(f"{p.job} {p.seconds:.1f} s" for p in report.parts))
