"""The layout of issue 17: every stage one module listed in STAGES, engines as peers with one signature, options
declared once (bounds on the field), old import paths still working with a DeprecationWarning.

Oracles: Python's own `inspect` and `dataclasses` of the modules, typer's parsed command line, and values written
out by hand."""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import warnings

import pytest

from xpaste.paste.config import PasteConfig, PasteConfigError
from xpaste.stages import STAGES, stage_module
from xpaste.stages.config import PipelineConfig, cli_options
from xpaste.typed import ConfigError, check_range, key_field

SECTIONS = {"generate": "generate", "retrieve": "retrieve", "segment": "segment", "score": "score",
            "build-pool": "build_pool", "masks-from-boxes": "masks_from_boxes", "augment": "augment"}


@pytest.mark.parametrize("name", list(STAGES))
def test_each_stage_is_one_module_with_its_config_section_runner_and_job(name):
    module = stage_module(name)
    assert module.NAME == name and module.HELP and callable(module.run_job)
    section = {f.name: f.type for f in dataclasses.fields(PipelineConfig)}[SECTIONS[name]]
    section_cls = getattr(module, section if isinstance(section, str) else section.__name__)
    assert section_cls.__module__ == module.__name__  # the section is declared in the stage's own module
    runner = [v for v in vars(module).values() if isinstance(v, type) and getattr(v, "name", None) == name]
    assert runner or name == "build-pool"  # build-pool is one pass (a function), not shards
    for key in getattr(module, "CLI_KEYS", []):
        assert cli_options([key])  # every flag a command offers is a config key


def test_stages_are_listed_in_pipeline_order_and_each_has_a_command():
    from xpaste.cli import build_app

    assert list(STAGES) == ["generate", "retrieve", "segment", "score", "build-pool", "masks-from-boxes", "augment"]
    app = build_app()
    commands = {c.name for c in app.registered_commands}
    assert set(STAGES) <= commands


def test_engines_are_peers_with_one_signature():
    from xpaste.pipeline import engines

    shared = ["stage", "plan", "todo", "workers", "ray_address", "options", "progress", "resumed"]
    for fn in (engines.run_in_process, engines.run_on_processes, engines.run_on_ray):
        params = list(inspect.signature(fn).parameters)
        assert params[:3] == shared[:3] and set(shared[3:]) <= set(params), fn.__name__
    assert engines.select_engine("local", 1) is engines.run_in_process
    assert engines.select_engine("local", 3) is engines.run_on_processes
    assert engines.select_engine("ray", 1) is engines.run_on_ray
    with pytest.raises(Exception, match="engine"):
        engines.select_engine("dask", 1)


def test_augment_defaults_are_the_config_fields():
    from xpaste.pipeline.runner import RunSettings
    from xpaste.stages.augment import AugmentConfig, augment_dataset

    params = inspect.signature(augment_dataset).parameters
    assert params["copies"].default == 1 == AugmentConfig().copies
    assert params["seed"].default == 0 == AugmentConfig().seed
    assert params["scale_prior"].default == "dataset" == AugmentConfig().scale_prior
    assert params["image_format"].default == "auto" == AugmentConfig().image_format
    assert params["workers"].default == 1 == RunSettings().workers
    assert params["engine"].default == "local" == RunSettings().engine


def test_augment_flags_are_derived_from_the_config_fields():
    from xpaste.commands.augment import AUGMENT_KEYS, augment_cmd

    options = {p.default.param_decls[0]: p.default for p in augment_cmd.__signature__.parameters.values()
               if hasattr(p.default, "param_decls") and p.default.param_decls}
    for spec in cli_options(AUGMENT_KEYS):
        assert options[spec["flag"]].help == spec["help"], spec["flag"]
    assert "augmented copies per image" in options["--copies"].help


@pytest.mark.parametrize("options, bad", [
    ({"max_paste": 0}, "max_paste"), ({"color_jitter": 1.0}, "color_jitter"), ({"blend_sigma": 0}, "blend_sigma"),
    ({"uniform_scale": (0.0, 0.3)}, "uniform_scale"), ({"uniform_scale": (0.3, 0.1)}, "uniform_scale"),
    ({"max_scale": 1.5}, "max_scale"), ({"alpha_threshold": 255}, "alpha_threshold"), ({"blend": "soft"}, "blend"),
    ({"num_paste": 2**63}, "num_paste"), ({"flip_prob": float("nan")}, "flip_prob"),
])
def test_paste_bounds_live_on_the_fields(options, bad):
    with pytest.raises(PasteConfigError, match=bad) as info:
        PasteConfig(**options)
    assert info.value.option == bad and "\n" not in str(info.value)


@pytest.mark.parametrize("options", [{"max_scale": 1.0}, {"color_jitter": 0.99}, {"alpha_threshold": 254},
                                     {"uniform_scale": (0.2, 0.2)}, {"num_paste": 0}])
def test_paste_bounds_admit_their_edges(options):
    assert PasteConfig(**options)


def test_check_range_inclusive_exclusive_and_per_item():
    inclusive = key_field(0, "x", lo=0, hi=1).metadata
    exclusive = key_field(0, "x", gt=0, lt=1).metadata
    check_range("k", 0, inclusive)
    check_range("k", 1, inclusive)
    check_range("k", (0.5, 0.9), exclusive)
    for value, meta in [(-1, inclusive), (2, inclusive), (0, exclusive), (1, exclusive), ((0.5, 1.0), exclusive)]:
        with pytest.raises(ConfigError, match="config key k: must be"):
            check_range("k", value, meta)


@pytest.mark.parametrize("old, name, new", [
    ("xpaste.pipeline.masks", "SegmentStage", "xpaste.stages.segment"),
    ("xpaste.pipeline.masks", "ScoreStage", "xpaste.stages.score"),
    ("xpaste.pipeline.acquire", "RetrieveStage", "xpaste.stages.retrieve"),
    ("xpaste.pipeline.acquire", "candidate_schema", "xpaste.stages.candidates"),
    ("xpaste.pipeline.build_pool", "build_pool", "xpaste.stages.build_pool"),
    ("xpaste.pipeline.augment_stage", "file_digest", "xpaste.fingerprint"),
    ("xpaste.pipeline.config", "load_config", "xpaste.stages.config"),
    ("xpaste.pipeline.stages", "run_pipeline", "xpaste.stages.run"),
])
def test_old_paths_still_import_with_a_deprecation_warning(old, name, new):
    module = importlib.import_module(old)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        obj = getattr(module, name)
    assert obj is getattr(importlib.import_module(new), name)
    assert [w.category for w in caught] == [DeprecationWarning] and new in str(caught[0].message)
    with pytest.raises(AttributeError):
        getattr(module, "no_such_name")


def test_pipeline_entry_points_keep_their_names():
    import xpaste
    import xpaste.pipeline as pipeline

    assert pipeline.run_pipeline.__module__ == "xpaste.stages.run"
    assert pipeline.PipelineConfig is PipelineConfig and xpaste.PasteConfig is PasteConfig
