"""The closed loop: per-category AP from `xpaste eval`, the allocation rule of `xpaste plan`, and weighted pasting
with a plan in every path that pastes (augment, CopyPaste, build_copy_paste and an adapter).

Oracles: pycocotools' COCOeval and lvis' LVISEval run independently here, restricted to one category
(`params.catIds = [k]`: the library's own AP summary of that category); budgets computed by hand."""
from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from coco_fixtures import write_dataset

from xpaste.errors import XPasteError
from xpaste.evaluate.metrics import evaluate
from xpaste.ops.masks import rle_encode
from xpaste.plan import MIN_GAP, allocate, load_plan, make_plan, plan_weights, repeat_factor


# ----------------------------------------------------------------------------- fixtures
def _predictions(gt: dict, iou_type: str) -> list[dict]:
    """Hand-made detections: category 1 exact boxes, category 2 boxes shifted by 20-45% of their width with
    falling scores, category 3 one false positive per image and no hit, category 4 (no ground truth) one
    false positive."""
    preds = []
    for i, a in enumerate(a for a in gt["annotations"] if not a["iscrowd"]):
        x, y, w, h = a["bbox"]
        img = next(im for im in gt["images"] if im["id"] == a["image_id"])
        if a["category_id"] == 1:
            box, score = [x, y, w, h], 0.9
        elif a["category_id"] == 2:
            box, score = [x + w * (0.2 + 0.05 * (i % 6)), y, w, h], 0.8 - 0.01 * i
        else:
            continue
        preds.append({"image_id": a["image_id"], "category_id": a["category_id"], "bbox": box, "score": score,
                      "_size": (img["height"], img["width"])})
    for img in gt["images"]:
        preds.append({"image_id": img["id"], "category_id": 3, "bbox": [0, 0, 6, 5], "score": 0.7,
                      "_size": (img["height"], img["width"])})
    img = gt["images"][0]
    preds.append({"image_id": img["id"], "category_id": 4, "bbox": [10, 10, 8, 8], "score": 0.6,
                  "_size": (img["height"], img["width"])})
    out = []
    for p in preds:
        h, w = p.pop("_size")
        if iou_type == "segm":  # the box as a mask (vs the gt ellipses: IoU about pi/4 for exact boxes)
            m = np.zeros((h, w), bool)
            x0, y0, bw, bh = p.pop("bbox")
            m[int(y0):min(h, math.ceil(y0 + bh)), int(x0):min(w, math.ceil(x0 + bw))] = True
            p["segmentation"] = rle_encode(m)
        out.append(p)
    return out


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    """A small LVIS-style training set (doubling as evaluation gt), its pool, a COCO copy and predictions."""
    from xpaste.cli import main

    root = tmp_path_factory.mktemp("loop")
    ann, images = write_dataset(root / "d", n_images=6)
    coco_ann, _ = write_dataset(root / "c", n_images=6, lvis=False)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(["pool", "import-coco", "--dataset", str(ann), "--images", str(images), "--out",
                     str(root / "pool"), "--min-area", "50"]) == 0
    files = {"ann": ann, "images": images, "coco_ann": coco_ann, "pool": root / "pool", "root": root}
    for style, gt_path in (("lvis", ann), ("coco", coco_ann)):
        gt = json.loads(gt_path.read_text())
        for iou_type in ("bbox", "segm"):
            path = root / f"pred_{style}_{iou_type}.json"
            path.write_text(json.dumps(_predictions(gt, iou_type)))
            files[f"pred_{style}_{iou_type}"] = path
    return files


def _coco_alone(gt_path, pred_path, iou_type: str, cat: int) -> float:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        ev = COCOeval(gt, gt.loadRes(str(pred_path)), iouType=iou_type)
        ev.params.catIds = [cat]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0])


def _lvis_alone(gt_path, pred_path, iou_type: str, cat: int, monkeypatch) -> float:
    import lvis

    monkeypatch.setattr(np, "float", float, raising=False)  # lvis 0.5.3 on numpy 2
    with contextlib.redirect_stdout(io.StringIO()):
        ev = lvis.LVISEval(str(gt_path), str(pred_path), iou_type=iou_type)
        ev.params.cat_ids = [cat]
        ev.run()
    monkeypatch.undo()
    return float(ev.results["AP"])


# ----------------------------------------------------------------------------- 1. per-category AP
@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_per_category_ap_equals_cocoeval_on_each_category_alone(loop, iou_type):
    result = evaluate(loop["coco_ann"], loop[f"pred_coco_{iou_type}"], iou_type=iou_type, kind="coco")
    per = result["per_category"]
    assert sorted(per) == [1, 2, 3, 4]
    for cat in (1, 2, 3, 4):
        assert per[cat] == pytest.approx(_coco_alone(loop["coco_ann"], loop[f"pred_coco_{iou_type}"], iou_type, cat),
                                         abs=1e-12), cat
    assert per[4] == -1  # no ground truth: nothing to score
    assert per[3] == 0.0  # only false positives
    if iou_type == "bbox":
        assert per[1] == pytest.approx(1.0)  # exact boxes
    assert 0 < per[2] < 1
    # the overall AP is their mean over scored categories (COCOeval's own definition)
    scored = [v for v in per.values() if v > -1]
    assert result["AP"] == pytest.approx(float(np.mean(scored)), abs=1e-12)


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_per_category_ap_equals_lvis_on_each_category_alone(loop, iou_type, monkeypatch):
    result = evaluate(loop["ann"], loop[f"pred_lvis_{iou_type}"], iou_type=iou_type)
    assert result["kind"] == "lvis"
    per = result["per_category"]
    for cat in (1, 2, 3, 4):
        assert per[cat] == pytest.approx(_lvis_alone(loop["ann"], loop[f"pred_lvis_{iou_type}"], iou_type, cat,
                                                     monkeypatch), abs=1e-12), cat
    assert per[4] == -1
    assert result["categories"] == {1: "cup", 2: "cat/dog", 3: "fire_hydrant", 4: "ünï"}


def test_eval_out_writes_per_category_and_the_categories(loop, tmp_path):
    from xpaste.cli import main

    out = tmp_path / "m.json"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["eval", "--gt", str(loop["ann"]), "--pred", str(loop["pred_lvis_bbox"]), "--iou-type", "bbox",
                     "--compare", str(loop["pred_lvis_bbox"]), "--out", str(out)]) == 0
    saved = json.loads(out.read_text())
    direct = evaluate(loop["ann"], loop["pred_lvis_bbox"], iou_type="bbox")["per_category"]
    assert saved["categories"] == [{"id": 1, "name": "cup"}, {"id": 2, "name": "cat/dog"},
                                   {"id": 3, "name": "fire_hydrant"}, {"id": 4, "name": "ünï"}]
    for run in saved["runs"]:
        assert {int(k): v for k, v in run["per_category"].items()} == direct
        assert "categories" not in run


# ----------------------------------------------------------------------------- 2. the rule
def _cats(*rows):
    return [{"id": i, "name": f"c{i}", "images": n, "ap": ap, "pool": p} for i, (n, ap, p) in enumerate(rows, 1)]


def test_budget_by_hand_equal_counts():
    # w = 1 - AP = 0.8, 0.5, 0.2 (all frequent: repeat factor 1); quotas 10 * w / 1.5 = 5.33, 3.33, 1.33;
    # floors 5, 3, 1 (9); the one left goes to the largest remainder, tied, so to the largest weight
    plan = make_plan(_cats((50, 0.2, 0), (50, 0.5, 0), (50, 0.8, 0)), n_images=100, budget=10)
    assert [c["generate"] for c in plan["categories"]] == [6, 3, 1]
    assert [c["paste_weight"] for c in plan["categories"]] == pytest.approx([1.0, 0.625, 0.25])
    assert plan["budget"] == 10 and plan["rule"]["name"] == "repeat-factor-ap-gap-v1"


def test_budget_by_hand_with_repeat_factor_and_pool():
    # t = 0.04, 1000 images: c1 in 10 (f = 0.01, r = sqrt(4) = 2), c2 in 40 (r = 1), c3 in 250 (r = 1)
    # w = 2 * 0.5, 1 * 0.5, 1 * 1.0 = 1.0, 0.5, 1.0; pool 0, 0, 10; water level L: (20 + 10) / 2.5 = 12
    # generate = 12 * w - pool = 12, 6, 2 (sum 20)
    plan = make_plan(_cats((10, 0.5, 0), (40, 0.5, 0), (250, 0.0, 10)), n_images=1000, budget=20, threshold=0.04)
    rows = plan["categories"]
    assert [c["repeat_factor"] for c in rows] == pytest.approx([2.0, 1.0, 1.0])
    assert [c["generate"] for c in rows] == [12, 6, 2]
    assert [c["paste_weight"] for c in rows] == pytest.approx([1.0, 0.5, 1.0])
    # a pool already over its share gets nothing: c3 with 40 instances; L = 20 / 1.5 = 13.33 < 40
    # quotas 13.33, 6.67 -> floors 13, 6, one left to the larger remainder (c2: .67)
    rows = make_plan(_cats((10, 0.5, 0), (40, 0.5, 0), (250, 0.0, 40)), 1000, 20, threshold=0.04)["categories"]
    assert [c["generate"] for c in rows] == [13, 7, 0]


def test_budget_by_hand_four_categories_unmeasured_and_mastered():
    # AP -1 (nothing scored) reads as 0; AP 1 keeps the floor gap MIN_GAP: w = 1, 0.75, 0.01, 0.5 (sum 2.26)
    # quotas 7 * w / 2.26 = 3.097, 2.323, 0.031, 1.549 -> floors 3, 2, 0, 1 (6): the last to c4 (.549)
    rows = make_plan(_cats((5, -1, 0), (5, 0.25, 0), (5, 1.0, 0), (5, 0.5, 0)), 10, 7)["categories"]
    assert [c["generate"] for c in rows] == [3, 2, 0, 2]
    assert rows[0]["ap"] is None and rows[2]["paste_weight"] == pytest.approx(MIN_GAP)


def test_zero_budget_and_the_edges_of_the_repeat_factor():
    assert [c["generate"] for c in make_plan(_cats((5, 0.1, 0), (5, 0.2, 0)), 10, 0)["categories"]] == [0, 0]
    assert repeat_factor(0, 1000, 0.001) == repeat_factor(1, 1000, 0.001) == pytest.approx(1.0)
    assert repeat_factor(0, 100000, 0.001) == pytest.approx(math.sqrt(100))  # never seen: as if in one image
    assert allocate([0.0, 0.0], [0, 0], 5) == [0, 0]  # no weight: nothing planned (sum <= budget)
    with pytest.raises(ValueError):
        make_plan(_cats((5, 0.1, 0)), 10, -1)


@pytest.mark.parametrize("seed", range(6))
def test_the_rule_is_monotone_exact_and_deterministic(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 12))
    images = rng.choice([1, 3, 40, 400], n)
    pool = rng.choice([0, 5, 50], n)
    aps = np.round(rng.uniform(0, 0.98, n), 3)
    budget = int(rng.integers(1, 500))
    cats = [{"id": i + 1, "name": f"c{i}", "images": int(images[i]), "ap": float(aps[i]), "pool": int(pool[i])}
            for i in range(n)]
    plan = make_plan(cats, 1000, budget, threshold=0.01)
    rows = plan["categories"]
    assert sum(r["generate"] for r in rows) == budget
    assert all(r["generate"] >= 0 and r["paste_weight"] >= 0 for r in rows)
    assert json.dumps(plan) == json.dumps(make_plan(list(reversed(cats)), 1000, budget, threshold=0.01))
    for a in rows:
        for b in rows:
            if (a["images"], a["pool_instances"]) == (b["images"], b["pool_instances"]) and a["ap"] < b["ap"]:
                assert a["paste_weight"] > b["paste_weight"]  # higher AP: strictly less weight
                assert a["generate"] >= b["generate"]  # and never more instances
    # raising one category's AP never raises its share
    k = int(rng.integers(0, n))
    better = [dict(c, ap=min(1.0, c["ap"] + 0.3)) if i == k else c for i, c in enumerate(cats)]
    again = make_plan(better, 1000, budget, threshold=0.01)["categories"]
    assert again[k]["generate"] <= rows[k]["generate"]


# ----------------------------------------------------------------------------- the command
def _run(args, capsys) -> tuple[int, list[str]]:
    from xpaste.cli import main

    code = main(args)
    captured = capsys.readouterr()
    return code, captured.err.strip().splitlines()


@pytest.fixture(scope="module")
def metrics(loop):
    """An `xpaste eval --out` file of the hand-made predictions (bbox)."""
    from xpaste.cli import main

    out = loop["root"] / "metrics.json"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["eval", "--gt", str(loop["ann"]), "--pred", str(loop["pred_lvis_bbox"]), "--iou-type", "bbox",
                     "--out", str(out)]) == 0
    return out


def _plan_args(loop, metrics, out, budget=10):
    return ["plan", "--metrics", str(metrics), "--dataset", str(loop["ann"]), "--pool", str(loop["pool"]),
            "--budget", str(budget), "--out", str(out)]


def test_plan_command_writes_the_rule_of_its_inputs(loop, metrics, tmp_path, capsys):
    from xpaste.data.coco import load_coco
    from xpaste.data.stats import category_stats
    from xpaste.pool.store import InstancePool

    out = tmp_path / "plan.json"
    code, err = _run(_plan_args(loop, metrics, out, budget=11), capsys)
    assert code == 0, err
    plan = json.loads(out.read_text())
    assert plan["budget"] == 11 and sum(c["generate"] for c in plan["categories"]) == 11
    assert set(plan["categories"][0]) >= {"id", "name", "generate", "paste_weight"}
    # the same as the rule on the inputs read by hand
    ap = {int(k): v for k, v in json.loads(metrics.read_text())["runs"][0]["per_category"].items()}
    counts = InstancePool.open(loop["pool"]).counts()
    ds = load_coco(loop["ann"])
    cats = [{"id": r["id"], "name": r["name"], "images": r["images"], "frequency": r["frequency"], "ap": ap[r["id"]],
             "pool": counts.get(r["id"], 0)} for r in category_stats(ds)]
    expected = make_plan(cats, len(ds.images), 11)
    assert plan["categories"] == expected["categories"]
    by_id = {c["id"]: c for c in plan["categories"]}
    # categories 1-3 have the same counts (5 images, 5 pooled); AP 0.83 (LVIS scores the missed crowd region),
    # 0.12, 0: the lower the AP, the larger the weight and never less of the budget
    assert [(by_id[c]["images"], by_id[c]["pool_instances"]) for c in (1, 2, 3)] == [(5, 5)] * 3
    assert by_id[1]["ap"] > by_id[2]["ap"] > by_id[3]["ap"] == 0
    assert by_id[3]["generate"] >= by_id[2]["generate"] >= by_id[1]["generate"]
    assert by_id[3]["paste_weight"] > by_id[2]["paste_weight"] > by_id[1]["paste_weight"]
    first = out.read_bytes()
    assert _run(_plan_args(loop, metrics, out, budget=11), capsys)[0] == 0
    assert out.read_bytes() == first  # deterministic: a rerun writes the same bytes
    assert load_plan(out)["budget"] == 11


def _edited_metrics(metrics: Path, tmp_path: Path, edit) -> Path:
    obj = json.loads(metrics.read_text())
    text = edit(obj)
    path = tmp_path / "bad_metrics.json"
    path.write_text(text if isinstance(text, str) else json.dumps(obj))
    return path


def _set_ap(key, value):
    def edit(obj):
        obj["runs"][0]["per_category"][key] = value
    return edit


@pytest.mark.parametrize("edit, words", [
    (lambda o: o["runs"][0].pop("per_category"), "no per_category"),
    (_set_ap("1", float("nan")), "NaN"),  # json.dumps writes the NaN token
    (_set_ap("99", 0.5), "category id 99"),
    (_set_ap("x", 0.5), "non-integer category id"),
    (_set_ap("2", 1.5), "expected an AP in [0, 1] or -1"),
    (_set_ap("2", "0.5"), "expected an AP"),
    (lambda o: o["categories"].__setitem__(0, {"id": 1, "name": "horse"}), "another dataset"),
    (lambda o: o["categories"].append({"id": 7, "name": "zebra"}) or o["runs"][0]["per_category"].update({"7": 0.1}),
     "does not define"),
    (lambda o: o.pop("categories"), "no 'categories'"),
    (lambda o: "[]", "not an `xpaste eval --out` metrics file"),
])
def test_plan_refuses_bad_metrics_in_one_line(loop, metrics, tmp_path, capsys, edit, words):
    bad = _edited_metrics(metrics, tmp_path, edit)
    out = tmp_path / "plan.json"
    code, err = _run(_plan_args(loop, bad, out), capsys)
    assert code == 2 and len(err) == 1 and words in err[0] and "Traceback" not in err[0], err
    assert not out.exists()


def test_plan_picks_a_run_by_name_and_refuses_an_unknown_one(loop, metrics, tmp_path, capsys):
    out = tmp_path / "plan.json"
    name = json.loads(metrics.read_text())["runs"][0]["name"]
    assert _run(_plan_args(loop, metrics, out) + ["--run", name], capsys)[0] == 0
    code, err = _run(_plan_args(loop, metrics, tmp_path / "p2.json") + ["--run", "nosuch"], capsys)
    assert code == 2 and len(err) == 1 and "no run named 'nosuch'" in err[0]


# ----------------------------------------------------------------------------- 3. weighted pasting with a plan
@pytest.fixture()
def only_cat2_plan(loop, metrics, tmp_path, capsys):
    """A plan whose only positive paste weight is category 2's."""
    path = tmp_path / "plan.json"
    assert _run(_plan_args(loop, metrics, path), capsys)[0] == 0
    plan = json.loads(path.read_text())
    for c in plan["categories"]:
        c["paste_weight"] = 1.0 if c["id"] == 2 else 0.0
    path.write_text(json.dumps(plan))
    return path


def test_augment_pastes_with_the_plans_weights(loop, only_cat2_plan, tmp_path, capsys):
    out = tmp_path / "aug"
    args = ["augment", "--dataset", str(loop["ann"]), "--images", str(loop["images"]), "--pool", str(loop["pool"]),
            "--out", str(out), "--num-paste", "3", "--max-images", "3"]
    code, err = _run(args + ["--sampling", "weighted", "--plan", str(only_cat2_plan)], capsys)
    assert code == 0, err
    anns = json.loads((out / "annotations.json").read_text())["annotations"]
    pasted = {a["category_id"] for a in anns if a["pasted"]}
    assert pasted == {2}
    # either half alone is refused in one line, before anything is written
    for extra, words in ((["--sampling", "weighted"], "needs per-category weights: pass --plan"),
                         (["--plan", str(only_cat2_plan)], "used by --sampling weighted only")):
        code, err = _run(args[:-4] + ["--out", str(tmp_path / "none")] + extra, capsys)
        assert code == 2 and len(err) == 1 and words in err[0], err
        assert not (tmp_path / "none").exists()


def test_augment_refuses_a_plan_that_weights_no_pooled_category_or_names_others(loop, only_cat2_plan, tmp_path,
                                                                                capsys):
    plan = json.loads(only_cat2_plan.read_text())
    zero = tmp_path / "zero.json"
    zero.write_text(json.dumps({**plan, "categories": [dict(c, paste_weight=0.0) for c in plan["categories"]]}))
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**plan, "categories": [dict(c, name="horse") if c["id"] == 2 else c
                                                        for c in plan["categories"]]}))
    for path, words in ((zero, "paste_weight 0"), (other, "another dataset")):
        code, err = _run(["augment", "--dataset", str(loop["ann"]), "--images", str(loop["images"]), "--pool",
                          str(loop["pool"]), "--out", str(tmp_path / "o"), "--sampling", "weighted", "--plan",
                          str(path)], capsys)
        assert code == 2 and len(err) == 1 and words in err[0], err
        assert not (tmp_path / "o").exists()


def _sample(loop):
    from xpaste.data.coco import load_coco, load_sample

    ds = load_coco(loop["ann"])
    return load_sample(ds, ds.images[0]["id"], loop["images"])


def test_copy_paste_and_build_copy_paste_paste_with_the_plans_weights(loop, only_cat2_plan):
    from xpaste.integrations.common import build_copy_paste
    from xpaste.paste.config import PasteConfigError
    from xpaste.paste.transform import CopyPaste
    from xpaste.pool.store import InstancePool

    pool = InstancePool.open(loop["pool"])
    sample = _sample(loop)
    cp = CopyPaste(pool, sampling="weighted", category_weights={3: 1.0}, scale_prior={}, num_paste=6, seed=0)
    out = cp(sample)
    assert set(out.targets.labels[out.targets.extra["pasted"]].tolist()) == {3}
    weights = plan_weights(only_cat2_plan, pool=pool)
    for built in (build_copy_paste(loop["pool"], scale_prior={}, where="X", plan=only_cat2_plan,
                                   options={"sampling": "weighted", "num_paste": 6, "seed": 0}),
                  build_copy_paste(pool, scale_prior={}, where="X",  # through the options, as adapters pass them
                                   options={"sampling": "weighted", "num_paste": 6, "plan": str(only_cat2_plan)})):
        assert built.category_weights == weights
        out = built(sample)
        assert set(out.targets.labels[out.targets.extra["pasted"]].tolist()) == {2}
    with pytest.raises(PasteConfigError, match="sampling='weighted' only"):
        build_copy_paste(pool, scale_prior={}, where="X", plan=only_cat2_plan)
    with pytest.raises(TypeError, match="not both"):
        build_copy_paste(pool, scale_prior={}, where="X", plan=only_cat2_plan,
                         options={"sampling": "weighted", "category_weights": {2: 1.0}})
    with pytest.raises(TypeError):
        build_copy_paste(cp, where="X", plan=only_cat2_plan)
    with pytest.raises(XPasteError, match="not an xpaste plan"):
        build_copy_paste(pool, scale_prior={}, where="X", plan=loop["ann"], options={"sampling": "weighted"})


def test_an_adapter_takes_plan_as_an_option(loop, only_cat2_plan):
    pytest.importorskip("torchvision")
    from xpaste.integrations.torchvision import XPasteCopyPaste

    t = XPasteCopyPaste(str(loop["pool"]), scale_prior={}, sampling="weighted", plan=str(only_cat2_plan))
    assert t.copy_paste.config.sampling == "weighted"
    assert {c for c, w in t.copy_paste.category_weights.items() if w > 0} == {2}
