"""Property tests of the paste: invariants over many random samples and plans, and equality with a naive
full-canvas reference implementation of the same plan."""
from __future__ import annotations

import numpy as np
from conftest import make_cutout, make_sample
from hypothesis import given, settings
from hypothesis import strategies as st

from xpaste.ops.masks import tight_box
from xpaste.paste.functional import transform_cutout
from xpaste.paste.transform import CopyPaste
from xpaste.pool.store import InstancePool

SETTINGS = settings(max_examples=60, deadline=None)


def build(seed: int, height: int, width: int, n: int, pool_size: int = 12):
    r = np.random.default_rng(seed)
    sample = make_sample(r, height, width, n)
    arrays = [make_cutout(r, int(r.integers(3, 50)), int(r.integers(3, 50)), "blob" if i % 2 else "ellipse")
              for i in range(pool_size)]
    pool = InstancePool.from_arrays(arrays, [1 + i % 4 for i in range(pool_size)])
    return sample, pool


def naive_reference(sample, plan, pool, tol=10.0, min_area=300, alpha_threshold=0):
    """Full-canvas masks per object, exactly as the reference code does it (slow, obviously right):
    the pasted mask is alpha > 0 after resizing; after each paste every mask it covered is cleared under it
    (whatever its box says), and such an object is dropped unless its new tight box moved <= tol px on every
    side from its box before this paste or more than min_area pixels remain."""
    h, w = sample.height, sample.width
    image = sample.image.copy()
    masks = [m.copy() for m in sample.targets.masks]
    boxes = [tuple(float(v) for v in (tight_box(m) if m.any() else b)) for m, b in zip(masks, sample.targets.boxes)]
    labels = list(sample.targets.labels)
    pasted = [False] * len(masks)
    for op in plan.ops:
        obj = transform_cutout(pool.rgba(op.pool_row), op.width, op.height, op.flip, op.angle, op.color)
        oh, ow = obj.shape[:2]
        top, left = op.center_y - oh // 2, op.center_x - ow // 2
        full = np.zeros((h, w), bool)
        rgb = np.zeros((h, w, 3), np.uint8)
        for yy in range(oh):
            y = top + yy
            if not 0 <= y < h:
                continue
            xs = np.arange(left, left + ow)
            ok = (xs >= 0) & (xs < w)
            full[y, xs[ok]] = obj[yy, ok, 3] > alpha_threshold
            rgb[y, xs[ok]] = obj[yy, ok, :3]
        if not full.any():
            continue
        image[full] = rgb[full]
        survivors = []
        for i, m in enumerate(masks):
            if not (m & full).any():
                survivors.append(i)
                continue
            m = m & ~full
            box = tight_box(m)
            if box is None:
                continue
            moved = np.abs(np.array(box, float) - np.array(boxes[i]))
            if (moved <= tol).all() or m.sum() > min_area:
                masks[i], boxes[i] = m, tuple(float(v) for v in box)
                survivors.append(i)
        masks, boxes = [masks[i] for i in survivors], [boxes[i] for i in survivors]
        labels, pasted = [labels[i] for i in survivors], [pasted[i] for i in survivors]
        masks.append(full)
        boxes.append(tuple(float(v) for v in tight_box(full)))
        labels.append(op.category_id)
        pasted.append(True)
    return image, masks, labels, pasted, boxes


@SETTINGS
@given(seed=st.integers(0, 10**6), height=st.integers(8, 120), width=st.integers(8, 120),
       n=st.integers(0, 6), num=st.integers(0, 12), rotation=st.sampled_from([0.0, 30.0]),
       jitter=st.sampled_from([0.0, 0.3]))
def test_paste_matches_naive_reference_and_invariants(seed, height, width, n, num, rotation, jitter):
    sample, pool = build(seed, height, width, n)
    snapshot = sample.copy()
    cp = CopyPaste(pool, num_paste=num, max_rotation=rotation, color_jitter=jitter,
                   uniform_scale=(0.1, 0.6), max_scale=0.9, min_visible_area=30, scale_prior={})
    plan = cp.make_plan(sample, np.random.default_rng(seed))
    out = cp.apply(sample, plan)
    t = out.targets

    # input unchanged
    assert np.array_equal(sample.image, snapshot.image)
    assert np.array_equal(sample.targets.masks, snapshot.targets.masks)
    assert np.array_equal(sample.targets.boxes, snapshot.targets.boxes)

    # box == tight box of mask; no empty masks; types
    assert t.masks.dtype == bool and t.boxes.dtype == np.float32 and t.labels.dtype == np.int64
    for box, mask in zip(t.boxes, t.masks):
        assert mask.any()
        assert tuple(int(v) for v in box) == tight_box(mask)

    # a pasted instance is never overlapped by any instance listed before it (occluded pixels removed)
    pasted = t.extra["pasted"]
    for j in np.flatnonzero(pasted):
        for i in range(j):
            assert not (t.masks[i] & t.masks[j]).any()
    assert (t.extra["instance_id"][pasted] != "").all()

    # exactly what the slow full-canvas reference produces (hard blending)
    ref_image, ref_masks, ref_labels, ref_pasted, _ = naive_reference(sample, plan, pool, 10.0, 30)
    assert np.array_equal(out.image, ref_image)
    assert len(ref_masks) == len(t)
    assert np.array_equal(np.array(ref_labels, np.int64).reshape(-1), t.labels)
    assert np.array_equal(np.array(ref_pasted, bool).reshape(-1), pasted)
    for a, b in zip(ref_masks, t.masks):
        assert np.array_equal(a, b)


@SETTINGS
@given(seed=st.integers(0, 10**6), blend=st.sampled_from(["hard", "alpha", "gaussian", "poisson"]),
       sampling=st.sampled_from(["balanced", "uniform", "present"]))
def test_same_seed_same_output_every_blend(seed, blend, sampling):
    sample, pool = build(seed, 64, 80, 3)
    outs = []
    for _ in range(2):
        cp = CopyPaste(pool, max_paste=8, blend=blend, sampling=sampling, seed=seed, uniform_scale=(0.1, 0.5),
                       scale_prior={})
        outs.append(cp(sample))
    a, b = outs
    assert np.array_equal(a.image, b.image)
    assert np.array_equal(a.targets.masks, b.targets.masks)
    assert np.array_equal(a.targets.boxes, b.targets.boxes)
    assert np.array_equal(a.targets.labels, b.targets.labels)
    for box, mask in zip(a.targets.boxes, a.targets.masks):
        assert tuple(int(v) for v in box) == tight_box(mask)


@SETTINGS
@given(seed=st.integers(0, 10**6))
def test_fully_hidden_original_is_dropped(seed):
    r = np.random.default_rng(seed)
    sample = make_sample(r, 40, 40, 1)
    # one opaque cut-out covering the whole canvas at its centre
    solid = np.full((40, 40, 4), 255, np.uint8)
    pool = InstancePool.from_arrays([solid], [1])
    from xpaste.paste.plan import PasteOp, PastePlan

    plan = PastePlan(40, 40, (PasteOp(0, 1, 20, 20, 40, 40),))
    out = CopyPaste(pool, num_paste=1, scale_prior={}).apply(sample, plan)
    assert len(out.targets) == 1 and out.targets.extra["pasted"].all()
    assert out.targets.boxes.tolist() == [[0, 0, 40, 40]]


def test_poisson_survives_tiny_and_sparse_objects():
    """Regression (found by fuzzing): OpenCV's seamlessClone fails on 1 px or scattered masks."""
    from xpaste.paste.plan import PasteOp, PastePlan

    sparse = np.zeros((7, 7, 4), np.uint8)
    sparse[0, 0] = sparse[6, 6] = 255
    pool = InstancePool.from_arrays([np.full((1, 1, 4), 255, np.uint8), sparse], [1, 2])
    sample = make_sample(np.random.default_rng(0), 30, 30, 2)
    plan = PastePlan(30, 30, (PasteOp(0, 1, 5, 5, 1, 1), PasteOp(1, 2, 15, 15, 7, 7)), "poisson")
    out = CopyPaste(pool, num_paste=0, scale_prior={}).apply(sample, plan)
    assert out.targets.extra["pasted"].sum() == 2


def _shrink_boxes(sample, r):
    """The same sample with input boxes that do not enclose their masks (json boxes, resized masks)."""
    from xpaste.core.sample import Sample
    from xpaste.core.targets import Targets

    t = sample.targets
    boxes = t.boxes.copy()
    if len(boxes):
        boxes[:, :2] += r.integers(0, 3, size=(len(boxes), 2))
        boxes[:, 2:] -= r.integers(0, 3, size=(len(boxes), 2))
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
    return Sample(sample.image, Targets(boxes, t.masks, t.labels, dict(t.extra)), dict(sample.meta))


@SETTINGS
@given(seed=st.integers(0, 10**6), height=st.integers(8, 100), width=st.integers(8, 100),
       n=st.integers(1, 6), num=st.integers(1, 10), threshold=st.sampled_from([0, 127]))
def test_occlusion_ignores_wrong_input_boxes(seed, height, width, n, num, threshold):
    """Input boxes 0-2 px short of their masks: pasted pixels are still cleared from every earlier mask,
    and every output box is the tight box of its mask (against the naive reference)."""
    r = np.random.default_rng(seed)
    sample, pool = build(seed, height, width, n)
    sample = _shrink_boxes(sample, r)
    cp = CopyPaste(pool, num_paste=num, uniform_scale=(0.1, 0.6), max_scale=0.9, min_visible_area=30,
                   alpha_threshold=threshold, scale_prior={})
    plan = cp.make_plan(sample, np.random.default_rng(seed))
    out = cp.apply(sample, plan)
    t = out.targets
    ref_image, ref_masks, ref_labels, ref_pasted, ref_boxes = naive_reference(sample, plan, pool, 10.0, 30,
                                                                              threshold)
    assert np.array_equal(out.image, ref_image)
    assert len(ref_masks) == len(t)
    for i, (a, b) in enumerate(zip(ref_masks, t.masks)):
        assert np.array_equal(a, b)
        assert tuple(float(v) for v in t.boxes[i]) == ref_boxes[i]
    pasted = t.extra["pasted"]
    for j in np.flatnonzero(pasted):
        for i in range(j):
            assert not (t.masks[i] & t.masks[j]).any()


def test_box_one_pixel_short_keeps_1564_px():
    """Case tv_box_smaller_than_mask at the core: box 1 px short of a 40x40 mask, a 20x20 paste at 44..63."""
    from xpaste.core.sample import Sample
    from xpaste.core.targets import Targets
    from xpaste.paste.plan import PasteOp, PastePlan

    mask = np.zeros((1, 64, 64), bool)
    mask[0, 10:50, 10:50] = True
    sample = Sample(np.zeros((64, 64, 3), np.uint8),
                    Targets(np.array([[10, 10, 49, 49]], np.float32), mask, np.array([2])))
    pool = InstancePool.from_arrays([np.full((20, 20, 4), 255, np.uint8)], [1])
    out = CopyPaste(pool, scale_prior={}).apply(sample, PastePlan(64, 64, (PasteOp(0, 1, 54, 54, 20, 20),)))
    m = out.targets.masks
    assert int(m[0].sum()) == 40 * 40 - 6 * 6 and not (m[0] & m[1]).any()
    assert out.targets.boxes.tolist() == [[10, 10, 50, 50], [44, 44, 64, 64]]


def test_drop_rule_is_checked_after_each_paste():
    """Two pastes each erode a 30x30 object's box by 8 px (<= 10 each, 16 in all): per-paste checking keeps
    it (as the reference does); a single check against the original box would drop it."""
    from xpaste.core.sample import Sample
    from xpaste.core.targets import Targets
    from xpaste.paste.plan import PasteOp, PastePlan

    mask = np.zeros((1, 100, 100), bool)
    mask[0, 10:40, 10:40] = True
    sample = Sample(np.zeros((100, 100, 3), np.uint8),
                    Targets(np.array([[10, 10, 40, 40]], np.float32), mask, np.array([1])))
    pool = InstancePool.from_arrays([np.full((40, 8, 4), 255, np.uint8)], [1])
    plan = PastePlan(100, 100, (PasteOp(0, 1, 36, 25, 8, 40), PasteOp(0, 1, 28, 25, 8, 40)))
    out = CopyPaste(pool, min_visible_area=10**6, scale_prior={}).apply(sample, plan)
    assert out.targets.extra["pasted"].tolist() == [False, True, True]
    assert out.targets.boxes[0].tolist() == [10, 10, 24, 40]


def _loosen_boxes(sample, r):
    """The same sample with input boxes that are not the tight boxes of their masks: 0-3 px larger, some
    fractional (json boxes), and masks stored non-contiguously (a Fortran-ordered copy): the kernels measure
    every original on its mask, never trusting the box, and read any memory layout."""
    from xpaste.core.sample import Sample
    from xpaste.core.targets import Targets

    t = sample.targets
    boxes = t.boxes.copy()
    if len(boxes):
        boxes[:, :2] = np.maximum(boxes[:, :2] - r.integers(0, 4, size=(len(boxes), 2)), 0)
        boxes[:, 2] = np.minimum(boxes[:, 2] + r.integers(0, 4, size=len(boxes)), sample.width)
        boxes[:, 3] = np.minimum(boxes[:, 3] + r.integers(0, 4, size=len(boxes)), sample.height)
        boxes[::2, 2:] = np.maximum(boxes[::2, 2:] - 0.5, boxes[::2, :2])
    masks = np.asfortranarray(t.masks)
    return Sample(sample.image, Targets(boxes, masks, t.labels, dict(t.extra)), dict(sample.meta))


def test_paste_bit_identical_to_naive_reference_over_seeds():
    """200 seeded samples and plans (flips, rotations, colour jitter, both alpha thresholds, drop thresholds from
    0 to 1e6, tight, shrunk and loosened input boxes, empty masks, masks of any layout): image, masks, boxes,
    labels and pasted flags bit-identical to the naive full-canvas reference."""
    from xpaste.core.sample import Sample
    from xpaste.core.targets import Targets

    for seed in range(200):
        r = np.random.default_rng(seed)
        sample, pool = build(seed, int(r.integers(8, 140)), int(r.integers(8, 140)), int(r.integers(0, 9)))
        variant = seed % 4
        if variant == 1:
            sample = _shrink_boxes(sample, r)
        elif variant == 2:
            sample = _loosen_boxes(sample, r)
        elif variant == 3 and len(sample.targets):  # an original with an empty mask keeps its box
            t = sample.targets
            masks = t.masks.copy()
            masks[0] = False
            sample = Sample(sample.image, Targets(t.boxes, masks, t.labels, dict(t.extra)), dict(sample.meta))
        tol, min_area = float(r.choice([0.0, 3.0, 10.0])), int(r.choice([0, 30, 300, 10**6]))
        threshold = int(r.choice([0, 127]))
        cp = CopyPaste(pool, num_paste=int(r.integers(0, 16)), max_rotation=float(r.choice([0.0, 30.0])),
                       color_jitter=float(r.choice([0.0, 0.3])), uniform_scale=(0.1, 0.8), max_scale=0.95,
                       box_tolerance=tol, min_visible_area=min_area, alpha_threshold=threshold, scale_prior={})
        plan = cp.make_plan(sample, np.random.default_rng(seed))
        out = cp.apply(sample, plan)
        t = out.targets
        ref_image, ref_masks, ref_labels, ref_pasted, ref_boxes = naive_reference(sample, plan, pool, tol, min_area,
                                                                                  threshold)
        assert np.array_equal(out.image, ref_image), seed
        assert len(ref_masks) == len(t), seed
        assert np.array_equal(np.array(ref_labels, np.int64).reshape(-1), t.labels), seed
        assert np.array_equal(np.array(ref_pasted, bool).reshape(-1), t.extra["pasted"]), seed
        for i, (a, b) in enumerate(zip(ref_masks, t.masks)):
            assert np.array_equal(a, b), seed
            assert tuple(float(v) for v in t.boxes[i]) == ref_boxes[i], seed  # an empty mask keeps its input box
