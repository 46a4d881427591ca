"""Property tests of the paste: invariants over many random samples and plans, and equality with a naive
full-canvas reference implementation of the same plan."""
from __future__ import annotations

import numpy as np
from conftest import make_cutout, make_sample
from hypothesis import given, settings
from hypothesis import strategies as st

from xpaste.ops.masks import tight_box
from xpaste.paste.functional import MASK_THRESHOLD, transform_cutout
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


def naive_reference(sample, plan, pool, tol=10.0, min_area=300):
    """Full-canvas masks per object, exactly as the reference code does it (slow, obviously right)."""
    h, w = sample.height, sample.width
    image = sample.image.copy()
    masks = [m.copy() for m in sample.targets.masks]
    before = [tight_box(m) for m in masks]
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
            full[y, xs[ok]] = obj[yy, ok, 3] >= MASK_THRESHOLD
            rgb[y, xs[ok]] = obj[yy, ok, :3]
        if not full.any():
            continue
        image[full] = rgb[full]
        masks = [m & ~full for m in masks]
        masks.append(full)
        before.append(tight_box(full))
        labels.append(op.category_id)
        pasted.append(True)
    keep = []
    for i, m in enumerate(masks):
        box = tight_box(m)
        if box is None:
            continue
        moved = np.abs(np.array(box) - np.array(before[i]))
        if box == before[i] or (moved <= tol).all() or m.sum() > min_area:
            keep.append(i)
    return image, [masks[i] for i in keep], [labels[i] for i in keep], [pasted[i] for i in keep]


@SETTINGS
@given(seed=st.integers(0, 10**6), height=st.integers(8, 120), width=st.integers(8, 120),
       n=st.integers(0, 6), num=st.integers(0, 12), rotation=st.sampled_from([0.0, 30.0]),
       jitter=st.sampled_from([0.0, 0.3]))
def test_paste_matches_naive_reference_and_invariants(seed, height, width, n, num, rotation, jitter):
    sample, pool = build(seed, height, width, n)
    snapshot = sample.copy()
    cp = CopyPaste(pool, num_paste=num, max_rotation=rotation, color_jitter=jitter,
                   uniform_scale=(0.1, 0.6), max_scale=0.9, min_visible_area=30)
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
    ref_image, ref_masks, ref_labels, ref_pasted = naive_reference(sample, plan, pool, 10.0, 30)
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
        cp = CopyPaste(pool, max_paste=8, blend=blend, sampling=sampling, seed=seed, uniform_scale=(0.1, 0.5))
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
    out = CopyPaste(pool, num_paste=1).apply(sample, plan)
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
    out = CopyPaste(pool, num_paste=0).apply(sample, plan)
    assert out.targets.extra["pasted"].sum() == 2
