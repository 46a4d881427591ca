"""The one category-name rule (`xpaste.categories.normalize_name` / `match_name`), through each of its users:
selection and same-name checks (`xpaste.categories`), pool <-> dataset matching (`xpaste.pool.categories`) and
the adapters' label maps (`xpaste.integrations.common.label_map_from_names`, mmdet's `label_map_from_classes`,
ultralytics' class map).

Oracle: the expected normal forms and matches are written out by hand from the rule's definition (case folded;
`_`, `-` and runs of whitespace one space; stripped; nothing else), never computed by xpaste. Before the rule
had one home, selection did not fold `-` and the label maps compared names exactly, so "traffic-light" named a
pool category for one user and no category for another.
"""
from __future__ import annotations

import numpy as np
import pytest
from conftest import make_cutout

from xpaste.categories import (Category, match_name, normalize_name, require_distinct_names, same_name_groups,
                               select_categories)
from xpaste.errors import XPasteError
from xpaste.integrations.common import label_map_from_names
from xpaste.pool.categories import match_categories, normalise_name
from xpaste.pool.store import InstancePool

SPELLINGS = ["traffic_light", "Traffic Light", "traffic-light", " traffic  light ", "TRAFFIC_LIGHT", "Traffic-Light"]


@pytest.mark.parametrize("name, normal", [
    ("traffic_light", "traffic light"),
    ("Traffic Light", "traffic light"),
    ("traffic-light", "traffic light"),
    (" traffic  light ", "traffic light"),
    ("traffic\t_-light\n", "traffic light"),  # a run of mixed separators is one space
    ("traffic lights", "traffic lights"),  # plural kept: a different name
    ("bow_(weapon)", "bow (weapon)"),  # parentheses kept
    ("bow_(decorative_ribbons)", "bow (decorative ribbons)"),
    ("bow-tie", "bow tie"),
    ("flip-flop_(sandal)", "flip flop (sandal)"),
    ("Band_Aid", "band aid"),
    ("cat/dog", "cat/dog"),  # '/' kept
    ("Straße", "strasse"),  # casefold, not lower
    ("__", ""),
    (3, "3"),  # str() of a non-string
])
def test_normal_form_written_out(name, normal):
    assert normalize_name(name) == normal
    assert normalise_name(name) == normal  # the pool's old name is the same function


def test_old_pool_name_is_the_one_rule():
    assert normalise_name is normalize_name


def test_lvis_names_with_parentheses_stay_distinct():
    names = ["bow_(weapon)", "bow_(decorative_ribbons)", "bow-tie", "bowl", "pipe_bowl", "bowler_hat"]
    assert len({normalize_name(n) for n in names}) == 6
    cats = [Category(i + 1, n) for i, n in enumerate(names)]
    assert same_name_groups(cats) == []
    require_distinct_names(cats, "retrieval finds images by category name")  # accepted
    assert select_categories(cats, ["bow (weapon)"]) == [cats[0]]
    assert select_categories(cats, ["Bow_Tie"]) == [cats[2]]
    assert select_categories(cats, ["bow-(decorative-ribbons)"]) == [cats[1]]


def test_match_name_exact_first_then_normal_form():
    candidates = {1: "Cup", 2: "cup", 3: "traffic_light"}
    assert match_name("cup", candidates) == [2]  # the exact name wins
    assert match_name("CUP", candidates) == [1, 2]  # ambiguous: the caller refuses it
    assert match_name("traffic-light", candidates) == [3]
    assert match_name("traffic lights", candidates) == []
    assert match_name(" traffic  light ", [(7, "x"), (9, "Traffic Light")]) == [9]  # (key, name) pairs


# ----------------------------------------------------------------------------- user 1: categories.py
@pytest.mark.parametrize("key", SPELLINGS)
def test_selection_accepts_every_spelling(key):
    cats = [Category(1, "traffic_light"), Category(2, "traffic lights"), Category(3, "stop_sign")]
    assert select_categories(cats, [key]) == [cats[0]]
    assert select_categories(cats, ["Traffic-Lights"]) == [cats[1]]  # the distinct name stays distinct


def test_same_name_checks_group_every_spelling():
    cats = [Category(i + 1, n) for i, n in enumerate(SPELLINGS + ["traffic lights", "bow-tie", "bow_(weapon)"])]
    assert [[c.id for c in g] for g in same_name_groups(cats)] == [[1, 2, 3, 4, 5, 6]]
    with pytest.raises(XPasteError, match=r"1 'traffic_light', 3 'traffic-light' have the same name \(ignoring "
                                          r"case, '_', '-' and spacing\)"):
        require_distinct_names([cats[0], cats[2]], "retrieval finds images by category name")
    require_distinct_names([cats[0], cats[6]], "retrieval finds images by category name")  # distinct: accepted


def test_selection_refuses_spellings_two_categories_share():
    cats = [Category(1, "traffic_light"), Category(2, "Traffic-Light")]
    assert select_categories(cats, ["traffic_light"]) == [cats[0]]  # exact name first
    with pytest.raises(XPasteError, match=r"ambiguous: the name \(ignoring case, '_', '-' and spacing\) of 2"):
        select_categories(cats, ["traffic light"])


# ----------------------------------------------------------------------------- user 2: pool/categories.py
def _pool(categories: dict[int, str]) -> InstancePool:
    rng = np.random.default_rng(0)
    ids = sorted(categories)
    return InstancePool.from_arrays([make_cutout(rng, 12, 14) for _ in ids], ids,
                                    [{"id": c, "name": categories[c]} for c in ids])


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_pool_matches_every_spelling_by_id_and_by_name(spelling):
    pool = _pool({1: "traffic_light", 2: "bow_(weapon)"})
    dataset = {1: spelling, 2: "bow (weapon)", 3: "bow-tie"}
    assert match_categories(pool, dataset) == {1: 1, 2: 2}
    renumbered = {10: spelling, 20: "bow-tie", 30: "Bow (Weapon)"}
    assert match_categories(pool, renumbered, by_name=True) == {1: 10, 2: 30}


def test_pool_refuses_distinct_names_and_ambiguous_spellings():
    pool = _pool({1: "traffic_light", 2: "bow_(weapon)"})
    with pytest.raises(XPasteError, match="'traffic_light' in the pool but 'traffic lights'"):
        match_categories(pool, {1: "traffic lights", 2: "bow_(weapon)"})
    with pytest.raises(XPasteError, match="'bow_\\(weapon\\)' in the pool but 'bow-tie'"):
        match_categories(pool, {1: "traffic_light", 2: "bow-tie"})
    with pytest.raises(XPasteError, match=r"pool category 1 'traffic_light' matches several dataset categories "
                                          r"\[10, 11\]"):
        match_categories(pool, {10: "Traffic Light", 11: "traffic-light", 12: "bow_(weapon)"}, by_name=True)


# ----------------------------------------------------------------------------- user 3: the adapters' label maps
@pytest.mark.parametrize("spelling", SPELLINGS)
def test_label_map_matches_every_spelling(spelling):
    pool = {1: "traffic_light", 2: "bow_(weapon)", 3: "Bow Tie", 4: "traffic lights"}
    assert label_map_from_names(["stop sign", spelling, "bow-tie", "bow (weapon)"], pool) == {1: 1, 2: 3, 3: 2}
    assert label_map_from_names({5: spelling, 9: "zebra"}, {1: "traffic-light", 7: "zebra"}) == {1: 5, 7: 9}
    assert label_map_from_names([spelling], {4: "traffic lights"}) == {}  # the distinct name stays unmatched


def test_label_map_exact_first_and_ambiguous_refused():
    classes = ["Traffic Light", "traffic_light"]
    assert label_map_from_names(classes, {1: "traffic_light"}) == {1: 1}  # the exact name wins
    with pytest.raises(ValueError, match=r"pool category 1 'traffic-light' names several classes "
                                         r"\(0 'Traffic Light', 1 'traffic_light'\)"):
        label_map_from_names(classes, {1: "traffic-light"})
    with pytest.raises(ValueError, match="names several classes"):  # a class list naming one class twice
        label_map_from_names(["cup", "dog", "cup"], {1: "cup"})
    # Two pool categories of one name both get its class (many pool categories -> one label is a map).
    assert label_map_from_names(["cup"], {1: "cup", 5: "Cup"}) == {1: 0, 5: 0}


def test_mmdet_classes_use_the_rule():
    from xpaste.integrations.mmdet import label_map_from_classes

    assert label_map_from_classes(["traffic light", "bow-tie"], {1: "Traffic_Light", 2: "bow_(weapon)"}) == {1: 0}


def test_ultralytics_names_use_the_rule():
    pytest.importorskip("ultralytics")
    from xpaste.integrations.ultralytics import XPasteYOLOTransform

    pool = _pool({1: "traffic_light", 2: "bow_(weapon)"})
    names = {0: "bow (weapon)", 1: "Traffic-Light", 2: "bow-tie"}
    assert XPasteYOLOTransform(pool, names=names, scale_prior={}).class_map == {1: 1, 2: 0}
    with pytest.raises(ValueError, match=r"pool categories \[2\] have no YOLO class"):
        XPasteYOLOTransform(pool, names=["traffic light", "bow-tie"], scale_prior={})
