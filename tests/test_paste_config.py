"""The one paste configuration: validation in one line, derivation, and the scale prior by default."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from xpaste.core.sample import Sample
from xpaste.core.targets import Targets
from xpaste.errors import XPasteError
from xpaste.paste.config import PasteConfig, PasteConfigError
from xpaste.paste.transform import CopyPaste
from xpaste.pool.store import InstancePool


@pytest.mark.parametrize("bad", [
    {"blend": "hardd"}, {"sampling": "balancd"}, {"num_paste": -1}, {"max_paste": 0}, {"max_paste": "many"},
    {"flip_prob": 1.5}, {"aspect_jitter": (1.2, 0.8)}, {"uniform_scale": "0.1"}, {"max_rotation": float("nan")},
    {"alpha_threshold": 255}, {"no_prior_scale": "box"}, {"max_paste": True}, {"unknown_option": 1},
])
def test_bad_values_fail_when_built_in_one_line(bad):
    with pytest.raises(PasteConfigError) as err:
        PasteConfig.from_dict(bad)
    assert "\n" not in str(err.value)
    assert isinstance(err.value, XPasteError) and isinstance(err.value, ValueError)
    name = next(iter(bad))
    assert name in str(err.value) or name.split("_")[0] in str(err.value)


def test_strings_from_config_files_are_coerced_to_the_field_type():
    c = PasteConfig.from_dict({"max_paste": "7", "aspect_jitter": "0.7,1.3", "num_paste": "none", "flip_prob": 1})
    assert (c.max_paste, c.aspect_jitter, c.num_paste, c.flip_prob) == (7, (0.7, 1.3), None, 1.0)
    assert isinstance(c.flip_prob, float)
    assert PasteConfig.from_dict(c.to_dict()) == c
    json.dumps(c.to_dict())


def test_options_list_every_field_once_with_help():
    names = [o["name"] for o in PasteConfig.options()]
    assert names == list(PasteConfig.field_names()) and len(set(names)) == len(names)
    assert all(o["help"] for o in PasteConfig.options())
    assert {o["name"]: o["choices"] for o in PasteConfig.options()}["blend"] == ("hard", "alpha", "gaussian", "poisson")


def test_copy_paste_reads_options_from_the_config():
    pool = InstancePool.from_arrays([np.full((8, 8, 4), 255, np.uint8)], [1])
    cp = CopyPaste(pool, PasteConfig(max_paste=7), blend="alpha", scale_prior={})
    assert (cp.max_paste, cp.blend, cp.config.blend) == (7, "alpha", "alpha")
    with pytest.raises(PasteConfigError):
        CopyPaste(pool, blend="hardd", scale_prior={})


def test_divergen_preset_sizes_objects_from_the_cutout():
    pool = InstancePool.from_arrays([np.full((200, 100, 4), 255, np.uint8)], [1])
    cp = CopyPaste(pool, PasteConfig.preset("divergen"), num_paste=50, scale_prior={})
    sample = Sample(np.zeros((480, 640, 3), np.uint8), Targets.empty(480, 640))
    plan = cp.make_plan(sample, np.random.default_rng(0))
    assert len(plan.ops) == 50
    factors = np.array([op.width / 100 for op in plan.ops])
    assert factors.min() >= 0.05 - 0.01 and factors.max() <= 0.3 + 0.01
    assert all(abs(op.height - 2 * op.width) <= 1 for op in plan.ops)  # the cut-out's own aspect ratio (+-rounding)


def _write_training_json(path, n_images=30, side=640, box=36, seed=0):
    """Every object has sqrt-area fraction 36/640 = 0.05625 (the issue's measurement)."""
    r = np.random.default_rng(seed)
    images, anns = [], []
    for i in range(1, n_images + 1):
        images.append({"id": i, "file_name": f"{i}.jpg", "height": side, "width": side})
        for _ in range(3):
            x, y = (int(v) for v in r.integers(0, side - box, 2))
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": 1 + len(anns) % 2, "iscrowd": 0,
                         "bbox": [x, y, box, box], "area": box * box,
                         "segmentation": [[x, y, x + box, y, x + box, y + box, x, y + box]]})
    # pasted annotations of an augment output must not enter the prior
    anns.append({"id": len(anns) + 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "pasted": True,
                 "bbox": [0, 0, 600, 600], "area": 360000, "segmentation": [[0, 0, 600, 0, 600, 600, 0, 600]]})
    doc = {"images": images, "annotations": anns,
           "categories": [{"id": 1, "name": "cup"}, {"id": 2, "name": "dog"}]}
    path.write_text(json.dumps(doc))
    return doc


def test_pasted_sizes_follow_the_training_set_prior(tmp_path):
    """Median pasted sqrt-area fraction ~ the training set's (0.05625) when the prior is a dataset json.

    Oracle: the boxes' own sqrt(w h / (W H)), computed here from the json. Tolerance 5 %: the prior's std is
    0 so s is exact, and the only spread is the aspect jitter U(0.8, 1.2) with pixel rounding (w h = s^2 H W
    up to rounding of each side, under 2 % at 36 px). Without a prior the median is about 0.17 (U(0.05, 0.3))."""
    doc = _write_training_json(tmp_path / "train.json")
    truth = np.median([np.sqrt(a["bbox"][2] * a["bbox"][3] / (640 * 640)) for a in doc["annotations"]
                       if not a.get("pasted")])
    cut = np.zeros((50, 40, 4), np.uint8)
    cut[..., 3] = 255
    pool = InstancePool.from_arrays([cut, cut.copy()], [1, 2])
    cp = CopyPaste(pool, num_paste=10, scale_prior=tmp_path / "train.json", seed=0)
    sample = Sample(np.zeros((640, 640, 3), np.uint8), Targets.empty(640, 640))
    fractions = []
    for _ in range(30):
        plan = cp.make_plan(sample)
        fractions += [np.sqrt(op.width * op.height / (640 * 640)) for op in plan.ops]
    assert abs(np.median(fractions) - truth) / truth < 0.05
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        no_prior = CopyPaste(pool, num_paste=10, seed=0)
    fr = [np.sqrt(op.width * op.height / 640**2) for _ in range(30) for op in no_prior.make_plan(sample).ops]
    assert np.median(fr) > 2 * truth


def test_an_online_transform_without_prior_warns_once():
    import xpaste.paste.transform as tr

    tr._WARNED.clear()
    pool = InstancePool.from_arrays([np.full((8, 8, 4), 255, np.uint8)], [1])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        CopyPaste(pool)
        CopyPaste(pool)
        CopyPaste(pool, scale_prior={})
    assert len([w for w in caught if "scale_prior" in str(w.message)]) == 1


def test_prior_from_stats_file_and_bad_mapping(tmp_path):
    from xpaste.data.coco import load_coco
    from xpaste.data.stats import category_stats, resolve_scale_prior, write_stats

    _write_training_json(tmp_path / "train.json")
    write_stats(category_stats(load_coco(tmp_path / "train.json")), tmp_path / "stats.json")
    a = resolve_scale_prior(tmp_path / "stats.json")
    b = resolve_scale_prior(str(tmp_path / "train.json"))
    assert a == b and set(a) == {1, 2} and abs(a[1][0] - 36 / 640) < 1e-9
    with pytest.raises(XPasteError):
        resolve_scale_prior({1: (float("nan"), 0.1)})
    (tmp_path / "other.json").write_text("[1, 2]")
    with pytest.raises(XPasteError, match="other.json"):
        resolve_scale_prior(tmp_path / "other.json")


def test_augment_flags_are_derived_from_the_config():
    """Every PasteConfig field is an `xpaste augment` flag, with the config's default in its help."""
    import inspect

    from xpaste.commands.augment import augment_cmd

    params = inspect.signature(augment_cmd).parameters
    for opt in PasteConfig.options():
        p = params[opt["name"]]
        assert p.default.default is None  # only flags given on the command line reach PasteConfig
        assert opt["flag"] in p.default.param_decls


def test_augment_refuses_weighted_sampling_before_writing(tmp_path):
    import subprocess
    import sys

    from coco_fixtures import write_dataset

    write_dataset(tmp_path / "d", n_images=2)
    xp = [sys.executable, "-m", "xpaste"]
    subprocess.run(xp + ["pool", "import-coco", str(tmp_path / "d/annotations.json"), "--images",
                         str(tmp_path / "d/images"), "--out", str(tmp_path / "pool"), "--min-area", "100"],
                   check=True, capture_output=True)
    for flags in (["--sampling", "weighted"], ["--blend", "hardd"], ["--uniform-scale", "0.3,0.1"]):
        p = subprocess.run(xp + ["augment", "--dataset", str(tmp_path / "d/annotations.json"), "--images",
                                 str(tmp_path / "d/images"), "--pool", str(tmp_path / "pool"), "--out",
                                 str(tmp_path / "out")] + flags, capture_output=True, text=True)
        assert p.returncode == 2 and "Traceback" not in p.stderr
        assert len(p.stderr.strip().splitlines()[-1]) > 0
        assert not (tmp_path / "out").exists()
