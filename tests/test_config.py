"""The typed pipeline config: every key's type, range and choices checked before anything runs or is written.

Oracles: PyYAML parses `--set` values and config files (what a user's text means), Python's int()/float() say
which texts are numbers, difflib names the nearest key, and the diffusers scheduler table / build_pool presets
are read from their own modules (by `ast`, without importing torch)."""
from __future__ import annotations

import ast
import dataclasses
import json
import typing
from pathlib import Path

import pytest
import yaml

from xpaste.cli import main
from xpaste.stages import config as C

SRC = Path(C.__file__).resolve().parents[1]


def all_keys() -> list[tuple[str, dataclasses.Field, typing.Any]]:
    out = []
    for f in dataclasses.fields(C.PipelineConfig):
        if f.name in C.SECTIONS:
            for g in dataclasses.fields(typing.get_type_hints(C.PipelineConfig)[f.name]):
                if not g.name.startswith("_") and not g.metadata.get("convert"):  # paste: PasteConfig's own test below
                    out.append((f"{f.name}.{g.name}",) + C.field_of(f"{f.name}.{g.name}"))
        else:
            out.append((f.name,) + C.field_of(f.name))
    return out


KEYS = all_keys()


def wrong_values(hint) -> list:
    """Values of the wrong type for a key of type `hint` (YAML texts, as a user would pass them to --set)."""
    inner = typing.get_args(hint)[0] if typing.get_origin(hint) is typing.Union else hint
    if typing.get_origin(inner) is tuple:
        return ["5", "{a: 1}", "[1.5, [2]]"]
    return {int: ["many", "1.5", "true", "[1]", "{a: 1}"], float: ["high", "true", "[1]", ".nan", ".inf"],
            bool: ["maybe", "2", "[true]"], str: ["5", "[a]", "{a: 1}", "true"]}[inner]


@pytest.mark.parametrize("key,field,hint", KEYS, ids=[k for k, _, _ in KEYS])
def test_every_key_refuses_values_of_the_wrong_type(key, field, hint):
    for text in wrong_values(hint):
        if key == "categories.select" and text in ("5", "[1.5, [2]]"):
            continue  # ids are accepted as text: 5 is category 5
        with pytest.raises(C.ConfigError) as e:
            C.load_config(None, [f"{key}={text}"])
        assert key in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("key,field,hint", KEYS, ids=[k for k, _, _ in KEYS])
def test_null_is_refused_exactly_where_a_key_is_not_optional(key, field, hint):
    optional = typing.get_origin(hint) is typing.Union and not field.metadata.get("unset")
    if optional:
        cfg = C.load_config(None, [f"{key}=null"])
        for part in key.split("."):
            cfg = getattr(cfg, part)
        assert cfg is None
    else:
        with pytest.raises(C.ConfigError, match=key.replace(".", r"\.")):
            C.load_config(None, [f"{key}=null"])


def test_values_are_coerced_as_yaml_and_python_read_them():
    cases = {"generate.per_category": ("8", 8), "generate.guidance": ("3", 3.0), "build_pool.t": ("2.5e1", 25.0),
             "retrieve.labelled": ("yes", True), "segment.segmenters": ("grabcut,rembg:u2net", ("grabcut", "rembg:u2net")),
             "generate.models": ("some/model", ("some/model",)), "categories.select": ("[3, cup]", ("3", "cup")),
             "build_pool.out": ("'5'", "5"), "device": ("cuda:1", "cuda:1")}
    for key, (text, expected) in cases.items():
        cfg = C.load_config(None, [f"{key}={text}"])
        section, _, name = key.partition(".")
        value = getattr(getattr(cfg, section), name) if name else getattr(cfg, section)
        assert value == expected and type(value) is type(expected), key
        parsed = yaml.safe_load(text)  # the oracle: what the YAML text means
        if isinstance(parsed, (int, float)) and not isinstance(parsed, bool) and isinstance(expected, (int, float)):
            assert value == parsed
    # flags arrive as text: int('8'), float('0.5') are the oracle
    cfg = C.load_config(None, [], [{"generate": {"steps": "8"}, "build_pool": {"area_max": "0.5"}}])
    assert (cfg.generate.steps, cfg.build_pool.area_max) == (int("8"), float("0.5"))


def test_ranges_and_choices():
    for text in ("shard_size=0", "workers=0", "generate.steps=0", "build_pool.area_min=1.5", "build_pool.dedup=2",
                 "engine=rayy", "generate.scheduler=dpmm", "build_pool.preset=xpast", "segment.segmenters=[]",
                 "segment.segmenters=grabcut,nosuch", "generate.templates=[a {nme}]",
                 "generate.templates=[a {name.upper}]", "generate.templates=[a {name]"):
        with pytest.raises(C.ConfigError) as e:
            C.load_config(None, [text])
        assert text.split("=")[0] in str(e.value)
    with pytest.raises(C.ConfigError, match="did you mean ray"):
        C.load_config(None, ["engine=rayy"])
    # checks across keys wait for the last layer, so either order of two --set works
    for order in (["build_pool.area_min=0.97", "build_pool.area_max=0.99"],
                  ["build_pool.area_max=0.99", "build_pool.area_min=0.97"]):
        assert C.load_config(None, order).build_pool.area_min == 0.97
    with pytest.raises(C.ConfigError, match="area_min <= area_max"):
        C.load_config(None, ["build_pool.area_min=0.9", "build_pool.area_max=0.1"])


def test_unknown_keys_name_the_nearest_valid_key(tmp_path):
    import difflib

    for key in ("generate.per_categry", "build_pool.area_mn", "shardsize", "segmnt.batch_size"):
        with pytest.raises(C.ConfigError) as e:
            C.load_config(None, [f"{key}=1"])
        section, _, name = key.rpartition(".")
        names = ([f.name for f in dataclasses.fields(C.PipelineConfig)] if not section or section not in C.SECTIONS
                 else [f.name for f in dataclasses.fields(typing.get_type_hints(C.PipelineConfig)[section])])
        nearest = difflib.get_close_matches(name if section in C.SECTIONS or not section else section, names, 1, 0.5)
        assert f"unknown config key {key if section in C.SECTIONS or not section else section}" in str(e.value)
        assert nearest and nearest[0] in str(e.value)
    bad = tmp_path / "bad.yaml"
    bad.write_text("generate:\n  per_categry: 3\n")
    with pytest.raises(C.ConfigError) as e:
        C.load_config(bad)
    assert str(bad) in str(e.value) and "per_category" in str(e.value)


def test_yaml_round_trip_and_frozen(tmp_path):
    cfg = C.load_config(None, ["generate.per_category=9", "segment.segmenters=[grabcut]", "build_pool.t=19"])
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    again = C.load_config(path)
    assert again == cfg and json.loads(json.dumps(again.to_dict())) == cfg.to_dict()
    assert "d" not in cfg.to_dict()["build_pool"]  # unset: the preset gives it
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.generate.per_category = 3  # type: ignore[misc]


def _ast_dict_keys(path: Path, name: str) -> list[str]:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            return [k.value for k in node.value.keys]
    raise AssertionError(f"{name} not found in {path}")


def test_choices_match_the_modules_that_implement_them():
    from xpaste.stages.generate import SCHEDULER_NAMES

    assert sorted(SCHEDULER_NAMES) == sorted(_ast_dict_keys(SRC / "generate" / "diffusers_t2i.py", "SCHEDULERS"))


def test_stage_flags_are_derived_from_the_config_fields():
    import typer.main

    from xpaste.cli import build_app
    from xpaste.commands.pipeline import STAGE_FLAGS

    group = typer.main.get_command(build_app())
    for command, (keys, _) in STAGE_FLAGS.items():
        options = {opt: p for p in group.commands[command].params for opt in p.opts}
        for spec in C.cli_options(keys):
            assert spec["flag"] in options, (command, spec["flag"])
            assert f"config key {spec['key']}" in options[spec["flag"]].help
        derived = {s["flag"] for s in C.cli_options(keys)}
        assert set(options) - derived <= {"--config", "--set", "--fresh", "--help"}


@pytest.mark.parametrize("argv", [
    ["generate", "--categories", "cup", "--per-category", "many"],
    ["generate", "--categories", "cup", "--set", "generate.per_category=many"],
    ["generate", "--categories", "cup", "--scheduler", "dpmm"],
    ["retrieve", "--categories", "cup", "--folder", "x", "--simple-background", "2"],
    ["segment", "--segmenter", "nosuch"],
    ["generate", "--categories", "cup", "--prompt", "a {nme}"],
    ["generate", "--categories", "/no/such/categories.json"],
    ["segment"],  # nothing to segment in a new run
    ["score", "--batch-size", "0"],
    ["build-pool", "--t", "high"],
    ["build-pool", "--set", "build_pool.area_min=null"],
    ["run", "CONFIG", "--set", "generate.seed=abc"],
])
def test_cli_refuses_before_writing_anything(argv, tmp_path, capsys):
    run = tmp_path / "run"
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"run_dir": str(run), "categories": {"source": "cup"}}))
    argv = [str(config) if a == "CONFIG" else a for a in argv]
    if argv[0] != "run":
        argv += ["--run", str(run)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("xpaste: error:") and "Traceback" not in err[0]
    assert not run.exists()


def test_the_example_config_loads_and_keeps_the_documented_values():
    example = yaml.safe_load((SRC.parents[1] / "examples" / "pipeline.yaml").read_text())
    cfg = C.load_config(SRC.parents[1] / "examples" / "pipeline.yaml")
    assert cfg.build_pool.preset == example["build_pool"]["preset"] == "xpaste"
    assert list(cfg.segment.segmenters) == example["segment"]["segmenters"]
    assert cfg.generate.per_category == example["generate"]["per_category"]


def test_augment_paste_options_are_paste_configs_and_checked_before_running():
    from xpaste.paste.config import PasteConfig

    assert C.PipelineConfig().augment.paste == PasteConfig()
    for opt in PasteConfig.options():
        hint = opt["type"]
        inner = typing.get_args(hint)[0] if typing.get_origin(hint) is typing.Union else hint
        wrong = {int: "many", float: "high", str: "5", bool: "maybe"}.get(inner, "{a: 1}")
        with pytest.raises(C.ConfigError) as e:
            C.load_config(None, [f"augment.paste.{opt['name']}={wrong}"])
        assert "augment.paste" in str(e.value) and opt["name"] in str(e.value)
        if opt["choices"]:
            with pytest.raises(C.ConfigError, match=opt["name"]):
                C.load_config(None, [f"augment.paste.{opt['name']}={opt['choices'][0]}x"])
    cfg = C.load_config(None, ["augment.paste.blend=poisson", "augment.paste.uniform_scale=[0.1, 0.2]"])
    assert cfg.augment.paste == PasteConfig(blend="poisson", uniform_scale=(0.1, 0.2))
    assert C.PipelineConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(C.ConfigError, match="augment.dataset"):
        C.load_config(None, ["augment.enabled=true"])
