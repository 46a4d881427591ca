"""Category loading (COCO/LVIS json, text file, name list), file-safe folder names, and selection."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from xpaste.categories import (Category, categories_from_coco, categories_from_names, categories_from_rows,
                               categories_from_text, categories_to_rows, load_categories, select_categories)
from xpaste.errors import XPasteError

LVIS_CATS = [
    {"id": 1, "name": "fire_hydrant", "synonyms": ["fire_hydrant", "hydrant"], "def": "an outlet from a water main",
     "frequency": "f"},
    {"id": 3, "name": "bow_(weapon)", "synonyms": ["bow_(weapon)"], "def": "a weapon for shooting arrows",
     "frequency": "r"},
    {"id": 7, "name": "cat/dog", "synonyms": [], "def": "", "frequency": "c"},
]


def write_json(path, categories):
    path.write_text(json.dumps({"images": [], "annotations": [], "categories": categories}), encoding="utf-8")
    return path


def test_coco_loader_keeps_lvis_fields(tmp_path):
    cats = categories_from_coco(write_json(tmp_path / "lvis.json", LVIS_CATS))
    assert [c.id for c in cats] == [1, 3, 7]
    hydrant, bow, catdog = cats
    assert hydrant.synonyms == ("fire_hydrant", "hydrant")
    assert hydrant.definition == "an outlet from a water main" and hydrant.frequency == "f"
    assert hydrant.text == "fire hydrant"
    assert bow.text == "bow (weapon)"  # LVIS disambiguation suffix kept
    assert catdog.dir_name == "00007_cat_dog"
    # plain COCO categories (no LVIS fields)
    coco = categories_from_coco(write_json(tmp_path / "coco.json", [{"id": 18, "name": "dog",
                                                                     "supercategory": "animal"}]))
    assert coco == [Category(18, "dog")]


def test_coco_loader_errors(tmp_path):
    with pytest.raises(XPasteError, match="missing.json"):
        categories_from_coco(tmp_path / "missing.json")
    with pytest.raises(XPasteError, match="no categories"):
        categories_from_coco(write_json(tmp_path / "empty.json", []))


def test_text_loader(tmp_path):
    path = tmp_path / "names.txt"
    path.write_text("\ufeff# my classes\n\ncup\n  fire_hydrant  \n# comment\nünïcode 猫\n", encoding="utf-8")
    cats = categories_from_text(path)
    assert [(c.id, c.name) for c in cats] == [(1, "cup"), (2, "fire_hydrant"), (3, "ünïcode 猫")]
    assert load_categories(str(path)) == cats


def test_text_loader_duplicates_name_file_and_line(tmp_path):
    path = tmp_path / "dups.txt"
    path.write_text("cup\ndog\n\ncup\n", encoding="utf-8")
    with pytest.raises(XPasteError) as info:
        categories_from_text(path)
    message = str(info.value)
    assert "dups.txt" in message and "line 4" in message and "line 1" in message and "'cup'" in message
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n", encoding="utf-8")
    with pytest.raises(XPasteError, match="no names"):
        categories_from_text(empty)


def test_names_and_dispatch(tmp_path):
    cats = load_categories("cup, fire_hydrant ,dog")
    assert [(c.id, c.name) for c in cats] == [(1, "cup"), (2, "fire_hydrant"), (3, "dog")]
    assert categories_from_names(["a", "b"]) == [Category(1, "a"), Category(2, "b")]
    with pytest.raises(XPasteError, match="duplicate"):
        load_categories("cup,dog,cup")
    with pytest.raises(XPasteError, match="duplicate"):
        categories_from_names(["cup", " cup "])
    with pytest.raises(XPasteError, match="empty"):
        categories_from_names(["cup", ""])
    # a mistyped file name is an error, not a category called "classes.txt"
    with pytest.raises(XPasteError, match="not found"):
        load_categories(str(tmp_path / "classes.txt"))
    with pytest.raises(XPasteError, match="not found"):
        load_categories(str(tmp_path / "missing.json"))
    with pytest.raises(XPasteError, match="folder"):
        load_categories(str(tmp_path))
    assert load_categories(str(write_json(tmp_path / "d.json", LVIS_CATS)))[0].name == "fire_hydrant"


WEIRD = ["cat/dog", "../../etc/passwd", "..", ".", "a\x00b", "x" * 300, "ünï/cödé ☃", "猫", "a b", "a_b", "a/b",
         "\\windows\\path", "CON", "   spaced   ", "dots...", "-leading-dash", "tab\tname", "new\nline"]


def test_dir_names_are_safe_and_unique():
    cats = [Category(i + 1, n) for i, n in enumerate(WEIRD)]
    names = [c.dir_name for c in cats]
    assert len(set(names)) == len(names)  # "a b", "a_b" and "a/b" all sanitise to "a_b"
    assert len({n.split("_", 1)[1] for n in names}) < len(names)  # ... which is why the id prefix matters
    for c, d in zip(cats, names):
        assert d.startswith(f"{c.id:05d}_")
        assert "/" not in d and "\\" not in d and "\x00" not in d and "\n" not in d and "\t" not in d
        assert d not in (".", "..") and ".." not in d.split(os.sep)
        assert len(d.encode("utf-8")) <= 255  # the common file-name byte limit
        assert os.path.basename(d) == d
    big = Category(123456, "x")
    assert big.dir_name == "123456_x"


def test_dir_names_create_real_folders(tmp_path):
    for i, n in enumerate(WEIRD):
        path = tmp_path / Category(i + 1, n).dir_name
        path.mkdir()
        assert path.parent == tmp_path
    assert len(list(tmp_path.iterdir())) == len(WEIRD)


def test_category_validation():
    with pytest.raises(XPasteError):
        Category(True, "x")
    with pytest.raises(XPasteError):
        Category(-1, "x")
    with pytest.raises(XPasteError):
        Category(1, "  ")
    c = Category(np.int64(5), "cup", synonyms=np.array(["cup", "mug"]), definition=None)
    assert c.id == 5 and type(c.id) is int and c.synonyms == ("cup", "mug") and c.definition == ""
    assert hash(c) == hash(Category(5, "cup", ("cup", "mug")))
    assert Category(1, "mug", synonyms="cup").synonyms == ("cup",)  # not split into characters


def test_select_categories(tmp_path):
    cats = categories_from_coco(write_json(tmp_path / "lvis.json", LVIS_CATS))
    assert select_categories(cats, None) == cats
    assert select_categories(cats, []) == cats
    # by id, exact name, or ignoring case and '_' vs ' '; catalogue order, no repeats
    picked = select_categories(cats, ["7", "Fire Hydrant", "fire_hydrant"])
    assert [c.id for c in picked] == [1, 7]
    assert select_categories(cats, ["bow (weapon)"])[0].id == 3
    with pytest.raises(XPasteError) as info:
        select_categories(cats, ["fire_hydrnt"])
    assert "fire_hydrnt" in str(info.value) and "'fire_hydrant'" in str(info.value)  # closest name suggested
    with pytest.raises(XPasteError, match="unknown category '99'"):
        select_categories(cats, ["99"])
    ambiguous = [Category(1, "Cup"), Category(2, "cup")]
    assert select_categories(ambiguous, ["cup"]) == [Category(2, "cup")]  # exact name wins
    with pytest.raises(XPasteError, match="ambiguous"):
        select_categories(ambiguous, ["CUP"])


def test_rows_round_trip(tmp_path):
    cats = categories_from_coco(write_json(tmp_path / "lvis.json", LVIS_CATS))
    rows = categories_to_rows(cats)
    assert json.loads(json.dumps(rows)) == rows  # json-serialisable
    assert categories_from_rows(rows) == cats
    assert categories_from_rows(LVIS_CATS) == cats  # raw LVIS dicts ("def") are accepted too
    with pytest.raises(XPasteError, match="duplicate category id"):
        categories_from_rows(rows + rows[:1])
    with pytest.raises(XPasteError, match="needs at least"):
        categories_from_rows([{"name": "x"}])


@pytest.mark.parametrize("cats, key, words", [
    ([Category(1, "cup"), Category(2, "cup")], "cup", "exact name of 2 categories (1 'cup', 2 'cup')"),
    ([Category(3, "7"), Category(7, "dog")], "7", "name of one and the id of another"),
    ([Category(1, "mug", synonyms=("cup",)), Category(2, "beaker", synonyms=("cup", "glass"))], "Cup",
     "a synonym of 2 categories"),
    ([Category(1, "Fire_Hydrant"), Category(2, "fire hydrant ")], "FIRE HYDRANT", "ignoring case"),
])
def test_ambiguous_selection_refused_in_one_line(cats, key, words):
    with pytest.raises(XPasteError) as info:
        select_categories(cats, [key])
    assert words in str(info.value) and "\n" not in str(info.value) and "id" in str(info.value.hint)


def test_selection_by_synonym_and_unambiguous_levels():
    cats = [Category(1, "mug", synonyms=("coffee_cup",)), Category(2, "cup"), Category(3, "7")]
    assert select_categories(cats, ["Coffee Cup"]) == [cats[0]]
    assert select_categories(cats, ["cup"]) == [cats[1]]  # exact name before anyone's synonym
    assert select_categories(cats, ["7"]) == [cats[2]]  # no category has id 7: the name is meant
    assert select_categories(cats, ["2", "mug"]) == [cats[0], cats[1]]


def test_ambiguous_selection_from_a_dataset(tmp_path):
    """A COCO file with a repeated name loads, and selecting that name is refused, naming both ids."""
    import json

    doc = {"images": [], "annotations": [], "categories": [{"id": 4, "name": "person"}, {"id": 9, "name": "person"}]}
    path = tmp_path / "d.json"
    path.write_text(json.dumps(doc))
    cats = load_categories(path)
    assert [c.id for c in select_categories(cats, ["9"])] == [9]
    with pytest.raises(XPasteError, match=r"4 'person', 9 'person'"):
        select_categories(cats, ["person"])


# ------------------------------------------------------------------ same-name categories where names are matched
def _disc_png(path, seed):
    from PIL import Image

    img = np.full((40, 40, 3), 255, np.uint8)
    img[10:30, 10:30] = (seed * 40 % 200, 80, 120)
    Image.fromarray(img).save(path)


@pytest.mark.parametrize("names, groups", [
    (["cup", "dog", "cup"], [[0, 2]]),
    (["Cup", "dog", "cup"], [[0, 2]]),
    (["fire_hydrant", "fire hydrant", "FIRE  HYDRANT", "dog"], [[0, 1, 2]]),
    (["a", "b", "A", "B"], [[0, 2], [1, 3]]),
    (["cup", "cups", "bow_(weapon)", "bow_(ribbon)"], []),
])
def test_same_name_groups(names, groups):
    from xpaste.categories import same_name_groups

    cats = [Category(i + 1, n) for i, n in enumerate(names)]
    assert [[c.id - 1 for c in g] for g in same_name_groups(cats)] == groups


def test_require_distinct_names_one_line_naming_both():
    from xpaste.categories import require_distinct_names

    cats = [Category(1, "cup"), Category(3, "dog"), Category(5, "Cup")]
    with pytest.raises(XPasteError, match=r"1 'cup', 5 'Cup' have the same name") as info:
        require_distinct_names(cats, "retrieval finds images by category name", "x.json")
    assert "\n" not in str(info.value)
    require_distinct_names(cats[:2], "retrieval finds images by category name")  # distinct: accepted
    # `same` narrows the clash to pairs whose outputs would coincide
    require_distinct_names(cats, "generation prompts by name", same=lambda a, b: False)


SAMENAME = [{"id": 1, "name": "cup"}, {"id": 2, "name": "dog"}, {"id": 5, "name": "cup"}]


@pytest.mark.parametrize("source", ["json", "cup,Cup", "cup,fire_hydrant,fire hydrant", "text"])
def test_labelled_retrieval_refuses_same_name_categories(tmp_path, capsys, source):
    """The user's case: a json with categories 1 and 5 both 'cup' put the same image into both folders."""
    import pyarrow.parquet as pq

    from xpaste.cli import main

    coll = tmp_path / "collection"
    for name in ("cup", "dog", "fire_hydrant"):
        (coll / name).mkdir(parents=True)
        _disc_png(coll / name / "a.png", len(name))
    if source == "json":
        source = str(write_json(tmp_path / "samename.json", SAMENAME))
    elif source == "text":
        (tmp_path / "names.txt").write_text("dog\nCUP\ncup\n", encoding="utf-8")
        source = str(tmp_path / "names.txt")
    run = tmp_path / "run"
    code = main(["retrieve", "--run", str(run), "--categories", source, "--folder", str(coll),
                 "--set", "retrieve.labelled=true"])
    err = capsys.readouterr().err
    assert code == 2
    assert "have the same name" in err and "retrieval" in err
    assert not list(run.rglob("*.png"))  # nothing copied
    # nothing recorded either: the corrected categories are accepted in the same run folder
    if source.endswith(".json"):
        write_json(tmp_path / "samename.json", [*SAMENAME[:2], {"id": 5, "name": "mug"}])
        (coll / "mug").mkdir()
        _disc_png(coll / "mug" / "m.png", 9)
        assert main(["retrieve", "--run", str(run), "--categories", source, "--folder", str(coll),
                     "--set", "retrieve.labelled=true"]) == 0
        rows = pq.read_table(run / "retrieve" / "shard-000000.parquet").to_pylist()
        assert sorted((r["category_id"], r["category"]) for r in rows) == [(1, "cup"), (2, "dog"), (5, "mug")]
        write_json(tmp_path / "samename.json", SAMENAME)
    # selecting one of the two by id is accepted and retrieves that one category's images
    if source.endswith(".json"):
        assert main(["retrieve", "--run", str(tmp_path / "run2"), "--categories", source, "--folder", str(coll),
                     "--set", "retrieve.labelled=true", "--set", "categories.select=5,2"]) == 0
        rows = pq.read_table(tmp_path / "run2" / "retrieve" / "shard-000000.parquet").to_pylist()
        assert sorted((r["category_id"], r["category"]) for r in rows) == [(2, "dog"), (5, "cup")]


def _generate_plan(tmp_path, source, **generate):
    from xpaste.stages.generate import GenerateStage
    from xpaste.stages.config import load_config

    overrides = [f"categories.source={source}", f"run_dir={tmp_path / 'run'}", "generate.models=m",
                 "generate.per_category=2", "generate.backgrounds=0"]
    overrides += [f"generate.{k}={v}" for k, v in generate.items()]
    config = load_config(overrides=overrides).to_dict()
    return GenerateStage(tmp_path / "run", config).plan()


def test_generation_refuses_same_name_categories_whose_prompts_coincide(tmp_path):
    source = write_json(tmp_path / "samename.json", SAMENAME)
    with pytest.raises(XPasteError, match=r"1 'cup', 5 'cup' have the same name.*generation"):
        _generate_plan(tmp_path, source)
    assert not (tmp_path / "run" / "categories.json").exists()  # refused before anything is recorded
    assert {i["category_id"] for i in _generate_plan(tmp_path, source, per_category=0)} == set()  # nothing alike


def test_generation_accepts_same_name_categories_whose_prompts_differ(tmp_path):
    """Generation prompts by name, but id-keyed prompts or differing definitions make the images differ."""
    cats = [{"id": 1, "name": "bat", "def": "a flying mammal"}, {"id": 5, "name": "Bat", "def": "a club for baseball"}]
    source = write_json(tmp_path / "bats.json", cats)
    items = _generate_plan(tmp_path, source, templates='["a photo of a single {name}, {definition}"]')
    assert {i["category_id"]: i["prompt"] for i in items} == {1: "a photo of a single bat, a flying mammal",
                                                              5: "a photo of a single Bat, a club for baseball"}
    # the default template gives "a photo of a single bat" twice (SD's CLIP tokenizer lowercases "Bat")
    with pytest.raises(XPasteError, match="have the same name"):
        _generate_plan(tmp_path / "b", source)


def test_generation_accepts_same_name_categories_with_id_keyed_prompts(tmp_path):
    source = write_json(tmp_path / "samename.json", SAMENAME)
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"1": ["a cup of tea"], "5": "the world cup trophy"}), encoding="utf-8")
    items = _generate_plan(tmp_path, source, prompt_file=str(prompts))
    assert {(i["category_id"], i["prompt"]) for i in items} == {
        (1, "a cup of tea"), (2, "a photo of a single dog"), (5, "the world cup trophy")}
