"""examples/train_maskrcnn.py: repeat-factor sampling by hand, and a CPU smoke run with and without a pool."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from coco_fixtures import write_dataset

torch.set_num_threads(1)
SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "train_maskrcnn.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("train_maskrcnn", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_repeat_factors_by_hand(script):
    # 10 images: category 1 in all of them (f=1), category 2 in one (f=0.1), category 3 in two (f=0.2).
    cats = [{1} for _ in range(10)]
    cats[0] = {1, 2}
    cats[1] = {1, 3}
    cats[2] = {1, 3}
    cats.append(set())  # an image without annotations: r = 1 (and f is over 11 images)
    r = script.repeat_factors(cats, threshold=0.5)
    f2, f3 = 1 / 11, 2 / 11
    expected = [math.sqrt(0.5 / f2), math.sqrt(0.5 / f3), math.sqrt(0.5 / f3)] + [1.0] * 8
    np.testing.assert_allclose(r, expected)
    assert r[0] == pytest.approx(math.sqrt(5.5)) and r[1] == pytest.approx(math.sqrt(2.75))
    # A low threshold never repeats anything.
    np.testing.assert_array_equal(script.repeat_factors(cats, threshold=0.001), np.ones(11))


def test_repeat_factor_sampler_is_seeded_and_rounds_stochastically(script):
    factors = np.array([1.0, 2.5, 1.2, 3.0])
    take = lambda seed, n: list(zip(range(n), iter(script.RepeatFactorSampler(factors, seed))))  # noqa: E731
    a, b, c = take(7, 200), take(7, 200), take(8, 200)
    assert a == b and a != c
    # Over many epochs each image appears r_i times per epoch on average.
    sampler = script.RepeatFactorSampler(factors, 0)
    g = torch.Generator().manual_seed(0)
    counts = np.zeros(4)
    for _ in range(2000):
        counts += np.bincount(sampler.epoch_indices(g).numpy(), minlength=4)
    np.testing.assert_allclose(counts / 2000, factors, atol=0.05)
    one = sampler.epoch_indices(torch.Generator().manual_seed(1)).numpy()
    assert (np.bincount(one, minlength=4)[[0, 3]] == [1, 3]).all()  # integer factors are exact


def test_lr_schedule(script):
    args = script.parse_args(["--dataset", "x", "--images", "y", "--out", "z", "--iters", "90", "--lr", "0.1",
                              "--warmup-iters", "5"])
    lrs = [script.lr_at(i, args) for i in range(90)]
    assert lrs[0] == pytest.approx(0.02) and lrs[4] == pytest.approx(0.1) and lrs[59] == pytest.approx(0.1)
    assert lrs[60] == pytest.approx(0.01) and lrs[80] == pytest.approx(0.001)


def test_smoke_training_with_and_without_pool(script, tmp_path):
    from xpaste.pool.importers import import_coco

    js, images = write_dataset(tmp_path / "coco", n_images=4)
    pool = tmp_path / "pool"
    import_coco(js, images, pool, min_area=100, progress=False)
    common = ["--dataset", str(js), "--images", str(images), "--iters", "2", "--batch-size", "2", "--seed", "3",
              "--device", "cpu", "--min-size", "96", "--max-size", "128", "--workers", "0",
              "--checkpoint-every", "1", "--rfs-threshold", "0.5",
              # small heads keep the CPU time down
              "--roi-batch", "32", "--rpn-batch", "32", "--detections-per-img", "20", "--test-proposals", "100"]
    runs = {}
    for name, extra in [("base", []), ("xpaste", ["--pool", str(pool), "--max-paste", "6"])]:
        out = tmp_path / name
        metrics = script.main(common + ["--out", str(out)] + extra)
        results = json.loads((out / "results.json").read_text())
        assert results and {"image_id", "category_id", "score", "bbox", "segmentation"} <= set(results[0])
        assert {r["category_id"] for r in results} <= {1, 2, 3, 4}
        assert (out / "model_final.pth").is_file() and (out / "last.pth").is_file()
        saved = json.loads((out / "metrics.json").read_text())
        assert set(saved) == set(metrics) == {"segm", "bbox"}
        for m in saved.values():
            assert m["kind"] == "lvis" and all(math.isfinite(m[k]) for k in ("AP", "APr", "APc", "APf"))
        log = json.loads((out / "train_log.json").read_text())
        assert len(log) == 2 and all(math.isfinite(x["loss"]) for x in log)
        runs[name] = log
    # Same seed and schedule: same learning rates; the first step sees the same initial model.
    assert [x["lr"] for x in runs["base"]] == [x["lr"] for x in runs["xpaste"]]
    assert sum(x["pasted"] for x in runs["base"]) == 0 and sum(x["pasted"] for x in runs["xpaste"]) > 0


def _jittered(script, pool, js, images, canvas, scale, seed=4):
    """One sample through the example's transform with the jitter scale fixed, without and with a pool."""
    cat_ids = [1, 2, 3, 4]
    out = []
    for pool_path in (None, pool):
        transform = script.build_transform(canvas, (scale, scale), pool_path, seed=0, max_paste=20, scale_prior={})
        out.append(script.CocoInstances(js, images, transform, cat_ids)[(0, seed)])
    return out


@pytest.mark.parametrize("scale, seed", [(0.3, 4), (0.5, 5), (0.8, 6)])
def test_paste_lands_on_the_unpadded_crop(script, tmp_path, scale, seed):
    """The canvas of the paste is image content: no pasted pixel on the padding, which stays zero."""
    from xpaste.pool.importers import import_coco

    js, images = write_dataset(tmp_path / "coco", n_images=2)  # 72 x 96 images
    pool = tmp_path / "pool"
    import_coco(js, images, pool, min_area=100, progress=False)
    canvas = 160
    (plain, _), (pasted, target) = _jittered(script, pool, js, images, canvas, scale, seed)
    assert tuple(plain.shape) == tuple(pasted.shape) == (3, canvas, canvas)
    # The content is where the (noisy, never all-zero) image is; everything else is padding.
    content = plain.abs().sum(0) > 0
    rows, cols = np.flatnonzero(content.any(1).numpy()), np.flatnonzero(content.any(0).numpy())
    h, w = rows[-1] + 1, cols[-1] + 1
    assert (h, w) == (int(72 * min(canvas / 72, canvas / 96) * scale), int(96 * min(canvas / 72, canvas / 96) * scale))
    assert target["num_pasted"] > 0
    masks = target["masks"].numpy().astype(bool)
    assert not masks[:, h:, :].any() and not masks[:, :, w:].any()  # no object on the padding
    assert float(pasted[:, h:, :].abs().sum()) == 0 and float(pasted[:, :, w:].abs().sum()) == 0


def test_repeat_factors_count_original_annotations_only(script, tmp_path):
    """An `xpaste augment` output adds pasted annotations of every category to every image: left in, they
    would make every category frequent (method.md). The factors must equal those of the originals alone."""
    js, images = write_dataset(tmp_path / "coco", n_images=6)
    data = json.loads(js.read_text())
    originals = tmp_path / "originals.json"
    originals.write_text(json.dumps(data))
    next_id = max(a["id"] for a in data["annotations"]) + 1
    for img in data["images"]:
        for cat in (1, 2, 3, 4):
            data["annotations"].append({"id": next_id, "image_id": img["id"], "category_id": cat, "iscrowd": 0,
                                        "bbox": [1, 1, 5, 5], "area": 25.0, "pasted": True,
                                        "segmentation": [[1, 1, 6, 1, 6, 6, 1, 6]]})
            next_id += 1
    augmented = tmp_path / "augmented.json"
    augmented.write_text(json.dumps(data))

    def factors(path):
        ds = script.CocoInstances(path, images, None, [1, 2, 3, 4])
        return script.repeat_factors(ds.categories_per_image(), threshold=0.9)

    # The oracle: categories per image read by pycocotools from the json without pasted annotations.
    from pycocotools.coco import COCO

    coco = COCO(str(originals))
    expected = script.repeat_factors([{a["category_id"] for a in coco.imgToAnns[i] if not a["iscrowd"]}
                                      for i in sorted(coco.imgs)], threshold=0.9)
    np.testing.assert_allclose(factors(augmented), expected)
    assert (expected > 1).any()  # some category is rare enough to repeat: the check can tell them apart
