"""CLIP scoring with a tiny offline open_clip model, and the numpy Stage-3 filters."""
from __future__ import annotations


import numpy as np
import pytest

from tiny_models import make_tiny_open_clip  # noqa: F401 - also used by other tests

from xpaste.errors import XPasteError
from xpaste.score import composite_on_white, prompt_for
from xpaste.score.filters import (adaptive_threshold, best_per_image, category_bars, dedup_by_embedding,
                                  select_instances)

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


def test_missing_model_names_it():
    from xpaste.score.clip import ClipScorer

    with pytest.raises(XPasteError, match="hf-hub:xpaste/nonexistent-clip") as err:
        ClipScorer("hf-hub:xpaste/nonexistent-clip", device="cpu")  # HF_HUB_OFFLINE=1 in conftest
    assert "local-dir:" in str(err.value)
    with pytest.raises(XPasteError, match="nonexistent"):
        ClipScorer("local-dir:/nonexistent/folder", device="cpu")


def pil_composite_on_white(rgb: np.ndarray, soft: np.ndarray) -> np.ndarray:
    """Hand reference with PIL: the whole image pasted over white through the binary mask (soft > 128)."""
    from PIL import Image

    binary = Image.fromarray(np.asarray(soft, np.uint8)).point(lambda v: 255 if v > 128 else 0)
    white = Image.new("RGB", (rgb.shape[1], rgb.shape[0]), (255, 255, 255))
    return np.asarray(Image.composite(Image.fromarray(rgb), white, binary))


@pytest.mark.parametrize("seed", range(4))
def test_composite_on_white_is_the_whole_image_white_outside_the_binary_mask(seed):
    r = np.random.default_rng(seed)
    h, w = int(r.integers(1, 50)), int(r.integers(1, 50))
    rgb = r.integers(0, 256, (h, w, 3), dtype=np.uint8)
    soft = r.integers(0, 256, (h, w), dtype=np.uint8)
    soft[0, 0] = 128  # exactly 128 is background
    out = composite_on_white(rgb, soft)
    assert out.dtype == np.uint8 and out.shape == rgb.shape  # the whole image: no crop to the box
    np.testing.assert_array_equal(out, pil_composite_on_white(rgb, soft))
    np.testing.assert_array_equal(composite_on_white(rgb, soft > 128), out)
    with pytest.raises(ValueError):
        composite_on_white(rgb, soft[:1, :1] if h > 1 else soft[:, :0])


def hand_clip_tensor(rgb: np.ndarray, size: int):
    """CLIP's preprocessing written out with torchvision: bicubic resize of the short side, centre crop,
    OpenAI's mean and std (the constants from the CLIP paper's code)."""
    from PIL import Image
    from torchvision import transforms as T

    return T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size), T.ToTensor(),
                      T.Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))])(
        Image.fromarray(rgb))


def test_scorer_feeds_clip_the_white_composite_resized_and_centre_cropped(scorer, images):
    """What the scorer embeds is the hand-composited image through a hand-written CLIP preprocessing."""
    import torch

    r = np.random.default_rng(5)
    masks = [r.integers(0, 256, img.shape[:2], dtype=np.uint8) for img in images]  # soft: > 128 decides
    size = int(scorer.model.visual.image_size[0] if isinstance(scorer.model.visual.image_size, tuple)
               else scorer.model.visual.image_size)
    hand = [pil_composite_on_white(i, m) for i, m in zip(images, masks)]
    with torch.no_grad():
        feats = scorer.model.encode_image(torch.stack([hand_clip_tensor(h, size) for h in hand])).numpy()
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    texts = [prompt_for(n) for n in ["cat", "dog", "baseball_bat", "bus"]]
    want = 100 * np.sum(feats * scorer.embed_texts(texts), axis=1)
    got = scorer.score_cutouts(images, masks, ["cat", "dog", "baseball_bat", "bus"])
    np.testing.assert_allclose(got, want, atol=2e-3)
    assert texts[2] == "a photo of baseball bat"


def test_score_stage_scores_the_white_composite(scorer, images, tmp_path):
    """The pipeline's score stage gives each (image, segmenter) 100 x cosine of the hand composite."""
    from PIL import Image

    from xpaste.stages.score import ScoreStage

    r = np.random.default_rng(7)
    items = []
    for k, img in enumerate(images):
        soft = r.integers(0, 256, img.shape[:2], dtype=np.uint8)
        (tmp_path / "images").mkdir(exist_ok=True)
        (tmp_path / "masks").mkdir(exist_ok=True)
        Image.fromarray(img).save(tmp_path / "images" / f"{k}.png")
        Image.fromarray(soft).save(tmp_path / "masks" / f"{k}.png")
        items.append({"candidate_id": f"c{k}", "category_id": 1, "segmenter": "s", "path": f"images/{k}.png",
                      "mask_path": f"masks/{k}.png", "category": "baseball_bat", "soft": soft})
    stage = ScoreStage(tmp_path, {"score": {}, "device": "cpu"})
    stage._scorer = scorer
    rows, skipped = stage.process([{k: v for k, v in it.items() if k != "soft"} for it in items])
    assert not skipped and len(rows) == len(items)
    want = scorer.score([pil_composite_on_white(img, it["soft"]) for img, it in zip(images, items)],
                        ["a photo of baseball bat"] * len(items))
    np.testing.assert_allclose([row["clip_score"] for row in rows], want, atol=2e-3)


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


def test_select_instances_bar_over_every_score():
    """Two segmenters x seven images. Category 1's best score (35) belongs to a whole-image mask (area 0.99):
    it cannot be kept, yet it sets the bar: min(40, 35 - 1) = 34 with t = 40."""
    scores = np.array([[30.0, 20.5, 19.0, 35.0, 18.0, 17.5, np.nan],
                       [12.0, 34.5, np.nan, 10.0, 18.5, 99.0, 20.0]])
    areas = np.array([[0.5, 0.5, 0.5, 0.99, 0.3, 0.02, 0.5],
                      [0.5, 0.5, 0.0, 0.5, 0.3, 0.0, 0.0]])
    cats = np.array([1, 1, 1, 1, 2, 2, 2])
    sel = select_instances(scores, areas, cats, t=40, d=1)
    assert sel.winner.tolist() == [0, 1, 0, 0, 1, 0, 0]  # 99.0 has an empty mask: never wins
    # category 2's max is 99 (the empty mask's score counts): bar min(40, 98) = 40
    assert sel.bar.tolist() == [34.0] * 4 + [40.0] * 3
    assert sel.reason.tolist() == ["below CLIP bar", "kept", "below CLIP bar", "area out of range",
                                   "below CLIP bar", "area out of range", "below CLIP bar"]
    assert sel.keep.tolist() == [False, True, False, False, False, False, False]
    assert category_bars(scores, cats, t=21, d=1) == {1: 21.0, 2: 21.0}
    all_empty = select_instances(np.array([[5.0]]), np.array([[0.0]]))
    assert all_empty.winner.tolist() == [-1] and all_empty.reason.tolist() == ["empty mask"]


@pytest.mark.parametrize("seed", range(5))
def test_select_instances_matches_a_hand_loop(seed):
    r = np.random.default_rng(seed)
    n_seg, n = int(r.integers(1, 5)), int(r.integers(1, 40))
    scores = r.uniform(5, 40, (n_seg, n))
    scores[r.random((n_seg, n)) < 0.1] = np.nan
    areas = np.where(r.random((n_seg, n)) < 0.3, r.choice([0.0, 0.01, 0.97], (n_seg, n)), r.uniform(0, 1, (n_seg, n)))
    cats = r.integers(1, 4, n)
    t = float(r.choice([21.0, 30.0, 100.0]))
    sel = select_instances(scores, areas, cats, t=t, d=1.0)
    for j in range(n):
        finite = [scores[i, k] for i in range(n_seg) for k in range(n)
                  if cats[k] == cats[j] and scores[i, k] == scores[i, k]]
        bar = min(t, max(finite) - 1.0) if finite else t
        best = None
        for i in range(n_seg):
            better = best is None or (scores[i, j] == scores[i, j] and not scores[best, j] >= scores[i, j])
            if areas[i, j] > 0 and better:
                best = i
        if best is None:
            reason = "empty mask"
        elif not 0.05 <= areas[best, j] <= 0.95:
            reason = "area out of range"
        else:
            reason = "kept" if scores[best, j] >= bar else "below CLIP bar"
        assert sel.bar[j] == pytest.approx(bar)
        assert sel.winner[j] == (-1 if best is None else best)
        assert sel.reason[j] == reason


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
