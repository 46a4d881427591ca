"""No silent fallback (issue 20, item 4): a prompt file, a scale prior or a category selection that names
something unknown is refused in one line listing what is unknown and what exists; retrieval follows symlinks
to files inside --folder and reports every image it skips, with the reason. Right values written by hand."""
from __future__ import annotations

import io
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from xpaste.categories import Category, select_categories
from xpaste.cli import main
from xpaste.data.stats import check_prior_covers, resolve_scale_prior, write_stats
from xpaste.errors import XPasteError
from xpaste.generate.prompts import check_prompt_keys, load_prompt_file, prompt_for, resolve_prompt_keys
from xpaste.retrieve.folder import list_images, scan_images

HYDRANT = Category(1, "fire_hydrant")
CUP = Category(2, "cup")
CATS = [HYDRANT, CUP]


# --------------------------------------------------------------------------------------------- prompt keys
def test_prompt_keys_match_by_the_one_name_rule_and_by_id():
    per = {"Cup": ["a mug"], "fire hydrant": ["a red hydrant", "a yellow hydrant"]}
    assert resolve_prompt_keys(per, CATS) == {2: ["a mug"], 1: ["a red hydrant", "a yellow hydrant"]}
    assert resolve_prompt_keys({"FIRE-Hydrant": ["x"], "2": ["y"]}, CATS) == {1: ["x"], 2: ["y"]}
    resolved = resolve_prompt_keys(per, CATS)
    assert [prompt_for(HYDRANT, i, None, resolved) for i in range(3)] == \
        ["a red hydrant", "a yellow hydrant", "a red hydrant"]
    assert prompt_for(CUP, 5, None, resolved) == "a mug"
    # a category with no key keeps the templates: the file need not cover every category
    assert prompt_for(Category(3, "dog"), 0, ["a {name}"], resolved) == "a dog"
    # prompt_for on the file's own keys applies the same rule
    assert prompt_for(CUP, 0, None, {"CUP": ["raw mug"]}) == "raw mug"
    assert prompt_for(HYDRANT, 0, None, {"Fire Hydrant": ["raw hydrant"]}) == "raw hydrant"
    assert prompt_for(HYDRANT, 0, None, {"1": ["by id"]}) == "by id"


@pytest.mark.parametrize("keys, unknown", [
    ({"cupp": ["a cup"]}, ["'cupp'"]),  # a typo
    ({"zebra": ["a zebra"], "cup": ["a cup"]}, ["'zebra'"]),  # a category not in the run
    ({"3": ["x"], "cups": ["y"]}, ["'3'", "'cups'"]),  # an id not in the run; a plural is another name
])
def test_prompt_keys_naming_no_category_are_refused(tmp_path, keys, unknown):
    path = tmp_path / "prompts.json"
    with pytest.raises(XPasteError) as info:
        check_prompt_keys(keys, CATS, path)
    text = str(info.value)
    assert "\n" not in text and text.startswith(f"{path}: prompt keys for unknown categories: ")
    for key in unknown:
        assert key in text.split("(hint")[0]
    assert "1 'fire_hydrant', 2 'cup'" in text  # what exists


def test_typo_suggests_the_close_name():
    with pytest.raises(XPasteError, match=r"did you mean 'cup'\?"):
        check_prompt_keys({"cupp": ["x"]}, CATS)


def test_ambiguous_and_doubled_prompt_keys_are_refused():
    two_cups = [Category(1, "Cup"), Category(5, "cup")]
    assert resolve_prompt_keys({"cup": ["exact"]}, two_cups) == {5: ["exact"]}  # the exact name wins
    with pytest.raises(XPasteError, match=r"'CUP' is ambiguous: it names 2 categories \(1 'Cup', 5 'cup'\)"):
        check_prompt_keys({"CUP": ["x"]}, two_cups)
    # a key that is one category's id and another's name
    with pytest.raises(XPasteError, match="'7' is ambiguous"):
        check_prompt_keys({"7": ["x"]}, [Category(3, "7"), Category(7, "dog")])
    # two keys for one category: which prompts win would be a silent choice
    with pytest.raises(XPasteError, match="'cup' and '2' both name category 2 'cup'"):
        check_prompt_keys({"cup": ["x"], "2": ["y"]}, CATS)
    with pytest.raises(XPasteError, match="both name category 1"):
        check_prompt_keys({"fire_hydrant": ["x"], "Fire Hydrant": ["y"]}, CATS)
    with pytest.raises(XPasteError, match="all name category 2"):
        prompt_for(CUP, 0, None, {"Cup": ["x"], "2": ["y"]})


def test_prompt_file_entries_never_vanish(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"cup": []}))
    with pytest.raises(XPasteError, match="non-empty list"):
        load_prompt_file(path)
    path.write_text(json.dumps({"cup": ["a"], " cup ": ["b"]}))
    with pytest.raises(XPasteError, match="appears twice"):
        load_prompt_file(path)


def _generate_stage(tmp_path, prompt_file, categories="fire_hydrant,cup"):
    from xpaste.stages.config import load_config
    from xpaste.stages.generate import GenerateStage

    overrides = [f"categories.source={categories}", f"run_dir={tmp_path / 'run'}", "generate.models=m",
                 "generate.per_category=2", f"generate.prompt_file={prompt_file}"]
    config = load_config(overrides=overrides).to_dict()
    return GenerateStage(tmp_path / "run", config)


def test_generate_stage_checks_the_prompt_file_on_construction(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"fire hydrant": ["a red hydrant"], "cupp": ["a cup"], "zebra": ["a zebra"]}))
    with pytest.raises(XPasteError, match=r"bad.json: prompt keys for unknown categories: 'cupp', 'zebra'"):
        _generate_stage(tmp_path, bad)
    assert not (tmp_path / "run").exists()  # refused before anything is recorded (and before any model)

    good = tmp_path / "good.txt"
    good.write_text("Cup\ta white mug\nFIRE HYDRANT\ta red hydrant\nCup\ta blue cup\n")  # lines of a key add up
    stage = _generate_stage(tmp_path, good)
    got = {(i["category"], i["prompt"]) for i in stage.plan()}
    assert got == {("fire_hydrant", "a red hydrant"), ("cup", "a white mug"), ("cup", "a blue cup")}


def test_generate_cli_refuses_unknown_prompt_keys_before_the_model(tmp_path, capsys):
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"fire hydrant": ["a red hydrant"], "Cupp": ["a cup"]}))
    code = main(["generate", "--run", str(tmp_path / "run"), "--categories", "fire_hydrant,cup",
                 "--model", str(tmp_path / "no such model"), "--per-category", "1", "--prompt-file", str(prompts)])
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "'Cupp'" in lines[0] and "prompts.json" in lines[0] and "model" not in lines[0]
    assert "Traceback" not in err and not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------ symlinked retrieval
def png(seed: int) -> bytes:
    img = np.full((40, 50, 3), 255, np.uint8)
    img[10:30, 10:40] = np.random.default_rng(seed).integers(0, 200, 3)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _retrieve(folder, run, categories="cup"):
    code = main(["retrieve", "--run", str(run), "--folder", str(folder), "--labelled", "--categories", categories])
    rows = pq.read_table(run / "retrieve" / "shard-000000.parquet").to_pylist()
    skipped_file = run / "retrieve" / "shard-000000.skipped.json"
    skipped = json.loads(skipped_file.read_text()) if skipped_file.exists() else []
    return code, rows, skipped


def _copied(run, rows):
    return sorted((run / r["path"]).read_bytes() for r in rows)


def test_blob_store_layout_gives_the_rows_of_plain_files(tmp_path):
    plain, coll = tmp_path / "plain", tmp_path / "coll"
    (plain / "cup").mkdir(parents=True)
    (coll / "cup").mkdir(parents=True)
    (coll / "blobs" / "ab").mkdir(parents=True)
    for k in range(3):
        (plain / "cup" / f"im{k}.png").write_bytes(png(k))
        (coll / "blobs" / "ab" / f"{k}.png").write_bytes(png(k))  # the store, as the HF cache / DVC keep it
        os.symlink(f"../blobs/ab/{k}.png", coll / "cup" / f"im{k}.png")
    code_p, rows_p, skipped_p = _retrieve(plain, tmp_path / "run_plain")
    code_l, rows_l, skipped_l = _retrieve(coll, tmp_path / "run_links")
    assert code_p == code_l == 0 and skipped_p == skipped_l == []
    assert len(rows_p) == len(rows_l) == 3
    assert _copied(tmp_path / "run_plain", rows_p) == _copied(tmp_path / "run_links", rows_l) == \
        sorted(png(k) for k in range(3))
    assert sorted(os.path.basename(r["url"]) for r in rows_l) == ["im0.png", "im1.png", "im2.png"]


def test_links_leaving_the_folder_and_dangling_ones_are_reported(tmp_path, capsys):
    coll, outside = tmp_path / "coll", tmp_path / "outside"
    (coll / "cup").mkdir(parents=True)
    (coll / "blobs").mkdir()
    outside.mkdir()
    (coll / "blobs" / "a.png").write_bytes(png(1))
    (outside / "secret.png").write_bytes(png(2))
    os.symlink("../blobs/a.png", coll / "cup" / "a.png")
    os.symlink(outside / "secret.png", coll / "cup" / "secret.png")  # leaves --folder
    os.symlink("../blobs/gone.png", coll / "cup" / "gone.png")  # dangling
    os.symlink(outside, coll / "cup" / "more")  # a symlinked folder: not descended
    code, rows, skipped = _retrieve(coll, tmp_path / "run", "cup,dog")
    assert code == 0
    assert [os.path.basename(r["url"]) for r in rows] == ["a.png"]
    assert _copied(tmp_path / "run", rows) == [png(1)]  # the secret image is nowhere in the run
    reasons = {os.path.basename(s["item"]) if "/" in s["item"] else s["item"]: s["reason"] for s in skipped}
    assert set(reasons) == {"secret.png", "gone.png", "more", "category 2 'dog'"}
    assert "leaves" in reasons["secret.png"] and str(coll.resolve()) in reasons["secret.png"]
    assert "dangling" in reasons["gone.png"] and "gone.png" in reasons["gone.png"]
    assert "symlinked folder" in reasons["more"]
    assert "no folder 'dog'" in reasons["category 2 'dog'"]
    out = capsys.readouterr()
    assert "4 failed" in out.out + out.err


def test_scan_images_root_is_the_allowed_root(tmp_path):
    coll = tmp_path / "coll"
    (coll / "cup").mkdir(parents=True)
    (coll / "blobs").mkdir()
    (coll / "blobs" / "x.jpg").write_bytes(b"x")
    os.symlink("../blobs/x.jpg", coll / "cup" / "x.jpg")
    (coll / "cup" / "y.jpg").write_bytes(b"y")
    # the category folder alone as root: the link leaves it, and says so
    alone = scan_images(coll / "cup")
    assert alone.paths == [coll / "cup" / "y.jpg"]
    assert [(os.path.basename(p), "leaves" in why) for p, why in alone.skipped] == [("x.jpg", True)]
    # the collection as root: followed
    listing = scan_images(coll / "cup", root=coll)
    assert listing.paths == [coll / "cup" / "x.jpg", coll / "cup" / "y.jpg"] and listing.skipped == []
    assert list_images(coll / "cup", root=coll) == listing.paths
    with pytest.raises(XPasteError, match="not inside"):
        scan_images(coll, root=coll / "cup")


# -------------------------------------------------------------------------------------------- scale prior
def _dataset(tmp_path, cats):
    images = [{"id": 1, "file_name": "a.jpg", "height": 100, "width": 100}]
    anns = [{"id": 1, "image_id": 1, "category_id": cats[0]["id"], "bbox": [0, 0, 10, 10], "area": 100,
             "iscrowd": 0, "segmentation": [[0, 0, 10, 0, 10, 10]]},
            {"id": 2, "image_id": 1, "category_id": cats[0]["id"], "bbox": [0, 0, 30, 30], "area": 900,
             "iscrowd": 0, "segmentation": [[0, 0, 30, 0, 30, 30]]}]
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def test_scale_prior_of_another_dataset_is_refused(tmp_path):
    train = _dataset(tmp_path, [{"id": 1, "name": "cup"}, {"id": 2, "name": "dog"}])
    # scales sqrt(100/10000) = 0.1 and sqrt(900/10000) = 0.3: mean 0.2, population std 0.1
    prior = resolve_scale_prior(train, [{"id": 1, "name": "Cup"}, {"id": 2, "name": "dog"}])
    assert set(prior) == {1} and prior[1] == pytest.approx((0.2, 0.1))
    stats = tmp_path / "stats.json"
    write_stats([{"id": 101, "name": "zebra", "scale_mean": 0.2, "scale_std": 0.1},
                 {"id": 102, "name": "kite", "scale_mean": 0.3, "scale_std": 0.0}], stats)
    with pytest.raises(XPasteError) as info:
        resolve_scale_prior(stats, [{"id": 1, "name": "cup"}, {"id": 2, "name": "dog"}])
    text = str(info.value)
    assert "\n" not in text and text.startswith(str(stats))
    assert "2 category id(s) the dataset does not hold: 101, 102" in text and "1 'cup', 2 'dog'" in text
    # same ids, other names: measured on another dataset
    write_stats([{"id": 1, "name": "zebra", "scale_mean": 0.2, "scale_std": 0.1}], stats)
    with pytest.raises(XPasteError, match="names differ.*1 is 'zebra' there, 'cup' here"):
        resolve_scale_prior(stats, [{"id": 1, "name": "cup"}])
    assert resolve_scale_prior(stats, [Category(1, "Zebra")]) == {1: (0.2, 0.1)}  # the one name rule
    with pytest.raises(XPasteError, match="does not hold: 7"):
        resolve_scale_prior({7: (0.1, 0.0)}, [1, 2])


def test_scale_prior_rows_are_checked_like_a_mapping(tmp_path):
    stats = tmp_path / "stats.json"
    write_stats([{"id": 1, "name": "cup", "scale_mean": 2.0, "scale_std": 0.1}], stats)
    with pytest.raises(XPasteError, match=r"stats.json: scale_prior\[1\] = \(2.0, 0.1\)"):
        resolve_scale_prior(stats)
    write_stats([{"id": 1, "name": "cup", "scale_mean": 0.2}, {"id": 1, "name": "cup", "scale_mean": 0.3}], stats)
    with pytest.raises(XPasteError, match="category id 1 appears twice"):
        resolve_scale_prior(stats)
    with pytest.raises(XPasteError, match="names category 1 twice"):
        resolve_scale_prior({1: (0.1, 0.0), "1": (0.2, 0.0)})


def test_prior_covering_none_of_the_pool_is_refused():
    from xpaste.paste.transform import CopyPaste
    from xpaste.pool.store import InstancePool

    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[2:6, 2:6] = 200
    pool = InstancePool.from_arrays([rgba, rgba.copy()], [1, 2], {1: "cup", 2: "dog"})
    with pytest.raises(XPasteError, match=r"covers none of the pool's category ids \(1, 2\); it names 101, 102"):
        CopyPaste(pool, scale_prior={101: (0.2, 0.1), 102: (0.3, 0.0)})
    assert CopyPaste(pool, scale_prior={2: (0.2, 0.1), 102: (0.3, 0.0)}).scale_prior[2] == (0.2, 0.1)
    check_prior_covers({}, [1, 2])  # no prior at all: the explicit opt-out
    with pytest.raises(XPasteError, match="covers none"):
        check_prior_covers({5: (0.1, 0.0)}, [1])


# ------------------------------------------------------------------------------------ category selection
def test_every_unknown_selection_entry_is_listed_in_one_line():
    cats = [Category(1, "fire_hydrant"), Category(2, "cup"), Category(7, "dog")]
    assert [c.id for c in select_categories(cats, ["Fire Hydrant", "7"])] == [1, 7]
    with pytest.raises(XPasteError) as info:
        select_categories(cats, ["cupp", "dog", "99", "zebra"], "cats.txt")
    text = str(info.value)
    assert "\n" not in text and text.startswith("cats.txt: categories.select: unknown categories 'cupp', '99', "
                                                "'zebra'")
    assert "did you mean 'cup'" in text and "1 'fire_hydrant', 2 'cup', 7 'dog'" in text


def test_run_refuses_a_selection_naming_nothing(tmp_path, capsys):
    code = main(["generate", "--run", str(tmp_path / "run"), "--categories", "cup,dog", "--model", "m",
                 "--set", "categories.select=[cup, kite, bird]"])
    err = capsys.readouterr().err
    assert code == 2 and "unknown categories 'kite', 'bird'" in err and not (tmp_path / "run").exists()
