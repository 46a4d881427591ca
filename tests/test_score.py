"""CLIP scoring with a tiny offline open_clip model, and the numpy Stage-3 filters."""
from __future__ import annotations


import numpy as np
import pytest

from tiny_models import make_tiny_open_clip  # noqa: F401 - also used by other tests

from xpaste.errors import XPasteError
from xpaste.score import composite_on_white, prompt_for
from xpaste.score.filters import adaptive_threshold, best_per_image, dedup_by_embedding, select_instances

@pytest.fixture(scope="session")
def scorer(tmp_path_factory):
    from xpaste.score.clip import ClipScorer

    folder = make_tiny_open_clip(tmp_path_factory.mktemp("openclip"))
    return ClipScorer(f"local-dir:{folder}", device="cpu", batch_size=3)


@pytest.fixture(scope="session")
def images():
    r = np.random.default_rng(0)
    return [r.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(40, 60), (64, 32), (20, 20), (50, 50)]]


# --- ClipScorer ------------------------------------------------------------------------------------

def test_embeddings_shapes_and_norms(scorer, images):
    img = scorer.embed_images(images)
    txt = scorer.embed_texts(["a photo of cat", "a photo of dog"])
    assert img.shape == (4, 32) and txt.shape == (2, 32)
    assert img.dtype == np.float32 and txt.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1.0, atol=1e-5)
    assert scorer.embed_images([]).shape == (0, 32)


def test_score_is_100_cosine_and_deterministic(scorer, images):
    texts = ["a photo of cat", "a photo of dog", "a photo of cat", "a photo of bus"]
    scores = scorer.score(images, texts)
    manual = 100 * np.sum(scorer.embed_images(images) * scorer.embed_texts(texts), axis=1)
    assert scores.shape == (4,) and scores.dtype == np.float32
    np.testing.assert_allclose(scores, manual, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(scores, scorer.score(images, texts))
    # batching (batch_size=3 splits 4 images) does not change a result
    np.testing.assert_allclose(scores[:1], scorer.score(images[:1], texts[:1]), atol=1e-4)
    with pytest.raises(ValueError, match="one text per image"):
        scorer.score(images, texts[:2])


def test_score_cutouts_uses_white_composite(scorer, images):
    masks = [np.full(img.shape[:2], 255, np.uint8) for img in images]
    masks[1][:] = 0
    got = scorer.score_cutouts(images, masks, ["cat", "dog", "baseball_bat", "bus"])
    composites = [composite_on_white(i, m) for i, m in zip(images, masks)]
    want = scorer.score(composites, [prompt_for(n) for n in ["cat", "dog", "baseball_bat", "bus"]])
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert prompt_for("baseball_bat") == "a photo of baseball bat"


def test_missing_model_names_it():
    from xpaste.score.clip import ClipScorer

    with pytest.raises(XPasteError, match="hf-hub:xpaste/nonexistent-clip") as err:
        ClipScorer("hf-hub:xpaste/nonexistent-clip", device="cpu")  # HF_HUB_OFFLINE=1 in conftest
    assert "local-dir:" in str(err.value)
    with pytest.raises(XPasteError, match="nonexistent"):
        ClipScorer("local-dir:/nonexistent/folder", device="cpu")


def test_composite_on_white():
    rgb = np.full((2, 3, 3), 10, np.uint8)
    soft = np.array([[255, 0, 128], [255, 255, 0]], np.uint8)
    out = composite_on_white(rgb, soft)
    assert out.dtype == np.uint8 and out.shape == rgb.shape
    assert out[0, 0].tolist() == [10] * 3 and out[0, 1].tolist() == [255] * 3
    assert out[0, 2, 0] == round(10 * 128 / 255 + 255 * 127 / 255)
    np.testing.assert_array_equal(composite_on_white(rgb, soft > 128), composite_on_white(rgb, (soft > 128) * 255))
    with pytest.raises(ValueError):
        composite_on_white(rgb, soft[:1])


# --- filters ---------------------------------------------------------------------------------------

def test_adaptive_threshold_paper_example():
    # t = 21, d = 1: a category whose best cut-out scores 30 keeps the fixed bar 21 ...
    assert adaptive_threshold([18.0, 25.0, 30.0]) == 21.0
    # ... one CLIP scores poorly (best 19.5) lowers the bar to 18.5 instead of losing the category
    assert adaptive_threshold([15.0, 19.5, 18.7]) == pytest.approx(18.5)
    assert adaptive_threshold([np.nan, 20.0], t=21, d=1) == 19.0
    assert adaptive_threshold([]) == 21.0


def test_best_per_image():
    scores = np.array([[20.0, 25.0, np.nan], [22.0, 24.0, np.nan], [np.nan, 26.0, np.nan]])
    idx, best = best_per_image(scores)
    assert idx.tolist() == [1, 2, 0]
    assert best[:2].tolist() == [22.0, 26.0] and np.isnan(best[2])


def test_select_instances_area_range_and_categories():
    scores = np.array([30.0, 20.5, 19.0, 35.0, 18.0, 17.5, np.nan])
    areas = np.array([0.5, 0.5, 0.5, 0.99, 0.3, 0.02, 0.5])
    keep = select_instances(scores, areas, t=21, d=1)
    # bar = min(21, 30 - 1) = 21 (the 35 has area 0.99 and does not count); 0.02 is too small
    assert keep.tolist() == [True, False, False, False, False, False, False]
    cats = np.array([1, 1, 1, 1, 2, 2, 2])
    keep = select_instances(scores, areas, t=21, d=1, categories=cats)
    # category 2's best valid score is 18 -> bar 17; the 17.5 is out by area, the NaN never passes
    assert keep.tolist() == [True, False, False, False, True, False, False]
    assert select_instances(scores, areas, area_range=(0.0, 1.0))[3]


def test_dedup_identical_and_orthogonal():
    v = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 2.0]])
    assert dedup_by_embedding(v).tolist() == [True, False, True, True]
    # the greedy order: a duplicate of an earlier *dropped* item is compared only with kept items
    assert dedup_by_embedding(v[[2, 0, 1]], threshold=0.95).tolist() == [True, True, False]


def test_dedup_blocks_match_single_block_and_scale():
    r = np.random.default_rng(0)
    base = r.normal(size=(300, 16)).astype(np.float32)
    x = np.concatenate([base, base[:100] + 0.01 * r.normal(size=(100, 16))])[r.permutation(400)]
    one = dedup_by_embedding(x, block=10_000)
    np.testing.assert_array_equal(one, dedup_by_embedding(x, block=7))
    assert one.sum() == 300
    big = r.normal(size=(10_000, 512)).astype(np.float32)
    assert dedup_by_embedding(big).all()  # random 512-d vectors are never near-duplicates
