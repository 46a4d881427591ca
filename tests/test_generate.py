"""Prompts, seeds and the diffusers generator (on a tiny random Stable Diffusion built offline)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from tiny_models import build_tiny_sd

from xpaste.categories import Category
from xpaste.errors import XPasteError
from xpaste.generate import GENERATORS, build_generator
from xpaste.generate.prompts import (BACKGROUND_PROMPTS, DEFAULT_TEMPLATES, DEFINITION_TEMPLATES, check_prompt_keys,
                                     image_seed, load_prompt_file, prompt_for, render_prompt)

HYDRANT = Category(1, "fire_hydrant", ("fire_hydrant", "hydrant", "fireplug"), "an outlet from a water main", "f")
CUP = Category(2, "cup")


# ------------------------------------------------------------------------------------------------ prompts
def test_render_prompt():
    assert DEFAULT_TEMPLATES == ["a photo of a single {name}"]
    assert render_prompt(DEFAULT_TEMPLATES[0], HYDRANT) == "a photo of a single fire hydrant"
    assert render_prompt(DEFINITION_TEMPLATES[0], HYDRANT) == \
        "a photo of a single fire hydrant, an outlet from a water main, in a white background"
    # no definition: the dangling comma goes, so one template serves LVIS and plain name lists
    assert render_prompt(DEFINITION_TEMPLATES[0], CUP) == "a photo of a single cup, in a white background"
    assert render_prompt("{definition}, on a table", CUP) == "on a table"
    assert [render_prompt("a {synonym}", HYDRANT, i) for i in range(4)] == \
        ["a fire hydrant", "a hydrant", "a fireplug", "a fire hydrant"]
    assert render_prompt("a {synonym}", CUP, 5) == "a cup"  # no synonyms: the name
    assert render_prompt("{{literal}} {name}", CUP) == "{literal} cup"
    assert render_prompt("a {name}", Category(3, "bow_(weapon)")) == "a bow (weapon)"


@pytest.mark.parametrize("template", ["a {colour} {name}", "a {name.upper}", "a {name!r}", "a {name:>9}",
                                      "a {0}", "a {}", "a {name"])
def test_bad_templates_name_the_template(template):
    with pytest.raises(XPasteError) as info:
        render_prompt(template, CUP)
    assert repr(template) in str(info.value)


def test_background_prompts_are_the_reference_scenes():
    assert "a photo of city scene." in BACKGROUND_PROMPTS and "a photo of wild land" in BACKGROUND_PROMPTS
    assert len(set(BACKGROUND_PROMPTS)) == len(BACKGROUND_PROMPTS) == 6


def test_prompt_rotation():
    templates = ["a photo of a single {name}", "a {synonym} on a table"]
    got = [prompt_for(HYDRANT, i, templates) for i in range(6)]
    assert got == ["a photo of a single fire hydrant", "a fire hydrant on a table",
                   "a photo of a single fire hydrant", "a hydrant on a table",
                   "a photo of a single fire hydrant", "a fireplug on a table"]
    assert prompt_for(CUP, 7) == "a photo of a single cup"  # default template
    per_category = {"fire_hydrant": ["red hydrant {not a placeholder}", "yellow hydrant"], "2": ["blue cup"]}
    assert [prompt_for(HYDRANT, i, templates, per_category) for i in range(3)] == \
        ["red hydrant {not a placeholder}", "yellow hydrant", "red hydrant {not a placeholder}"]
    assert prompt_for(CUP, 3, templates, per_category) == "blue cup"  # keyed by id
    assert prompt_for(Category(9, "dog"), 0, templates, per_category) == "a photo of a single dog"  # fallback
    with pytest.raises(ValueError):
        prompt_for(CUP, -1)


def test_load_prompt_file(tmp_path):
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps({"cup": ["a red cup", "a mug "], "1": "a hydrant"}), encoding="utf-8")
    assert load_prompt_file(path) == {"cup": ["a red cup", "a mug"], "1": ["a hydrant"]}
    tsv = tmp_path / "prompts.txt"
    tsv.write_text("# comment\ncup\ta red cup\n\nfire hydrant\ta hydrant, {odd braces}\ncup\ta mug\n", encoding="utf-8")
    per = load_prompt_file(tsv)
    assert per == {"cup": ["a red cup", "a mug"], "fire hydrant": ["a hydrant, {odd braces}"]}
    assert prompt_for(HYDRANT, 0, None, per) == "a hydrant, {odd braces}"  # matched by its text form
    check_prompt_keys(per, [HYDRANT, CUP])
    with pytest.raises(XPasteError, match="unknown categories: 'cupp'"):
        check_prompt_keys({"cupp": ["x"]}, [HYDRANT, CUP], path)
    bad = tmp_path / "bad.txt"
    bad.write_text("cup\ta cup\ncup a cup without tab\n", encoding="utf-8")
    with pytest.raises(XPasteError, match=r"bad.txt: line 2"):
        load_prompt_file(bad)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"cup": [1, 2]}), encoding="utf-8")
    with pytest.raises(XPasteError, match="'cup'"):
        load_prompt_file(wrong)
    wrong.write_text("[]", encoding="utf-8")
    with pytest.raises(XPasteError, match="expected an object"):
        load_prompt_file(wrong)
    with pytest.raises(XPasteError, match="not found"):
        load_prompt_file(tmp_path / "missing.txt")


def test_image_seed_is_deterministic_and_spread():
    seed = image_seed(0, "sd15", 3, 7)
    assert seed == image_seed(0, "sd15", 3, 7)
    assert 0 <= seed < 2**63
    variants = {image_seed(0, "sd15", 3, 7), image_seed(1, "sd15", 3, 7), image_seed(0, "sdxl", 3, 7),
                image_seed(0, "sd15", 4, 7), image_seed(0, "sd15", 3, 8), image_seed(0, "sd15", 37, 0)}
    assert len(variants) == 6
    # a pinned value: changing the formula would silently change every seeded run (and break resumes)
    assert image_seed(0, "m", 1, 0) == 6130063568332460698
    assert image_seed(np.int64(0), "m", np.int64(1), 0) == 6130063568332460698
    assert len({image_seed(0, "m", c, i) for c in range(50) for i in range(50)}) == 2500


def test_import_generate_stays_light():
    code = ("import sys, xpaste, xpaste.generate, xpaste.categories; "
            "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'cv2') if m in sys.modules]; "
            "print(heavy); assert not heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------------- generator
@pytest.fixture(scope="session")
def tiny_sd_folder(tmp_path_factory) -> str:
    return build_tiny_sd(tmp_path_factory.mktemp("tiny_sd"))


PROMPTS = ["a photo of a single cup", "a photo of a single fire hydrant", "a photo of a single cup"]
SEEDS = [11, 11, 12]


def make(folder, **kwargs):
    kwargs = {"steps": 2, "height": 64, "width": 64, "device": "cpu", **kwargs}
    return build_generator("diffusers", model=folder, **kwargs)


def test_generates_rgb_uint8(tiny_sd_folder):
    gen = make(tiny_sd_folder)
    images = gen.generate(PROMPTS, SEEDS)
    assert len(images) == 3
    for im in images:
        assert isinstance(im, np.ndarray) and im.shape == (64, 64, 3) and im.dtype == np.uint8
        assert im.std() > 0
    assert gen.generate([], []) == []
    prov = gen.provenance
    assert prov["model"] == tiny_sd_folder and prov["steps"] == 2 and prov["guidance"] == 7.5
    assert (prov["height"], prov["width"], prov["dtype"]) == (64, 64, "float32")
    assert prov["scheduler"] == "DDIMScheduler" and prov["pipeline"] == "StableDiffusionPipeline"
    json.dumps(prov)  # stored next to every image


def test_seeds_and_prompts_determine_the_image(tiny_sd_folder):
    gen = make(tiny_sd_folder)
    a = gen.generate(PROMPTS, SEEDS)
    b = gen.generate(PROMPTS, SEEDS)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))  # same seed, same image
    assert not np.array_equal(a[0], a[2])  # same prompt, different seed
    assert not np.array_equal(a[0], a[1])  # same seed, different prompt
    again = make(tiny_sd_folder).generate(PROMPTS, SEEDS)  # a fresh load gives the same images
    assert all(np.array_equal(x, y) for x, y in zip(a, again))


def _assert_same_up_to_rounding(a, b):
    # Batched and single CPU kernels sum in different orders: float outputs differ by ~1e-6, which can flip
    # the uint8 rounding of a rare pixel. Different noise per image would differ by tens of levels everywhere.
    for x, y in zip(a, b):
        diff = np.abs(x.astype(np.int16) - y.astype(np.int16))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01


@pytest.mark.parametrize("scheduler", [None, "dpm", "ddim", "euler_a"])
def test_batch_size_does_not_change_images(tiny_sd_folder, scheduler):
    batched = make(tiny_sd_folder, batch_size=3, scheduler=scheduler)
    single = make(tiny_sd_folder, batch_size=1, scheduler=scheduler)
    prompts, seeds = PROMPTS + ["a dog"], SEEDS + [5]
    a, b = batched.generate(prompts, seeds), single.generate(prompts, seeds)
    _assert_same_up_to_rounding(a, b)
    # order independence: an image does not depend on its neighbours in the batch
    c = batched.generate(prompts[::-1], seeds[::-1])[::-1]
    _assert_same_up_to_rounding(a, c)


def test_scheduler_choice(tiny_sd_folder):
    names = {}
    for key in ["dpm", "ddim", "euler_a"]:
        gen = make(tiny_sd_folder, scheduler=key)
        names[key] = gen.provenance["scheduler"]
        assert gen.generate(PROMPTS[:1], SEEDS[:1])[0].shape == (64, 64, 3)
    assert names == {"dpm": "DPMSolverMultistepScheduler", "ddim": "DDIMScheduler",
                     "euler_a": "EulerAncestralDiscreteScheduler"}
    with pytest.raises(XPasteError, match="unknown scheduler 'heun2'"):
        make(tiny_sd_folder, scheduler="heun2")


def test_options_and_input_checks(tiny_sd_folder):
    gen = make(tiny_sd_folder, negative_prompt="blurry", guidance=3.0, scheduler="euler")
    assert gen.provenance["negative_prompt"] == "blurry"
    plain = make(tiny_sd_folder, guidance=3.0, scheduler="euler")
    assert not np.array_equal(gen.generate(PROMPTS[:1], [1])[0], plain.generate(PROMPTS[:1], [1])[0])
    with pytest.raises(ValueError, match="2 prompts but 1 seeds"):
        gen.generate(PROMPTS[:2], [1])
    for bad in [-1, 2**63, 1.5, True]:
        with pytest.raises(ValueError, match="seeds"):
            gen.generate(PROMPTS[:1], [bad])
    with pytest.raises(XPasteError, match="multiples of 8"):
        make(tiny_sd_folder, height=60)
    with pytest.raises(XPasteError, match="unknown dtype"):
        make(tiny_sd_folder, dtype="fp8")


def test_unloadable_models_name_the_model(tmp_path):
    # HF_HUB_OFFLINE=1 (tests/conftest.py): a hub id fails at once instead of downloading
    with pytest.raises(XPasteError) as info:
        make("nonexistent-org/nonexistent-model")
    message = str(info.value)
    assert "nonexistent-org/nonexistent-model" in message and "--model /path/to/folder" in message
    with pytest.raises(XPasteError, match="not found"):
        make(str(tmp_path / "missing"))
    with pytest.raises(XPasteError, match="could not load"):
        make(str(tmp_path))  # a folder with no model_index.json


def test_registry():
    assert GENERATORS == {"diffusers": "xpaste.generate.diffusers_t2i:DiffusersGenerator"}
    with pytest.raises(XPasteError, match="unknown generator"):
        build_generator("dalle")
