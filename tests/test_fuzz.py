"""Fuzzing (hypothesis, bounded example counts so CI time stays fixed): the COCO/LVIS reader, the mask
decoder and the paste plan must fail only with their documented errors, never crash otherwise."""
from __future__ import annotations

import copy
import os

import numpy as np
from conftest import make_cutout, make_sample
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xpaste.data.coco import CocoDataset, decode_annotation_mask
from xpaste.errors import XPasteError
from xpaste.ops.masks import tight_box
from xpaste.paste.plan import PasteOp, PastePlan
from xpaste.paste.transform import CopyPaste
from xpaste.pool.store import InstancePool

# 300 examples per property in `make test`; the soak run (tests/test_soak.py) raises it through the env.
FUZZ = settings(max_examples=int(os.environ.get("XPASTE_FUZZ_EXAMPLES", "300")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

json_scalars = st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=True) | st.text(max_size=8)
json_values = st.recursive(json_scalars, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids, max_size=4), max_leaves=12)

VALID = {
    "images": [{"id": 1, "file_name": "a.jpg", "height": 20, "width": 30}],
    "categories": [{"id": 1, "name": "cup", "frequency": "r"}],
    "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "bbox": [1, 1, 5, 5],
                     "segmentation": [[1, 1, 10, 1, 10, 10]]}],
}
PATHS = [("images", 0, "id"), ("images", 0, "height"), ("images", 0, "file_name"), ("categories", 0, "id"),
         ("categories", 0, "name"), ("annotations", 0, "id"), ("annotations", 0, "image_id"),
         ("annotations", 0, "category_id")]


@FUZZ
@given(json_values)
def test_reader_on_arbitrary_json(obj):
    try:
        CocoDataset.from_json(obj, "fuzz.json")
    except XPasteError as e:
        assert "fuzz.json" in str(e)


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(PATHS), json_values | st.just("__delete__")), max_size=4),
       st.sampled_from(["images", "annotations", "categories", None]), json_values)
def test_reader_on_mutated_valid_dataset(edits, top_key, top_value):
    doc = copy.deepcopy(VALID)
    for (lst, i, key), value in edits:
        if value == "__delete__":
            doc[lst][i].pop(key, None)
        else:
            doc[lst][i][key] = value
    if top_key is not None and isinstance(top_value, list) is False:
        doc[top_key] = top_value
    try:
        ds = CocoDataset.from_json(doc, "fuzz.json")
    except XPasteError as e:
        assert "fuzz.json" in str(e)
        return
    assert len(ds.images) == len(doc["images"])


segmentations = (
    st.lists(st.lists(st.floats(-100, 100) | st.just(float("nan")) | st.integers(-100, 100), max_size=12), max_size=3)
    | st.fixed_dictionaries({"size": st.lists(st.integers(-5, 40), min_size=0, max_size=3),
                             "counts": st.lists(st.integers(-5, 900), max_size=10) | st.text(max_size=20)})
    | json_values
)


@FUZZ
@given(segmentations)
def test_mask_decoder_fails_cleanly(seg):
    try:
        mask = decode_annotation_mask({"id": 7, "segmentation": seg}, 20, 30)
    except (ValueError, XPasteError):
        return
    assert mask.shape == (20, 30) and mask.dtype == bool


ops = st.builds(PasteOp, pool_row=st.integers(0, 5), category_id=st.integers(1, 4),
                center_x=st.integers(-300, 300), center_y=st.integers(-300, 300),
                width=st.integers(1, 150), height=st.integers(1, 150), flip=st.booleans(),
                angle=st.floats(-180, 180), color=st.none() | st.tuples(*[st.floats(0, 3)] * 3))


@FUZZ
@given(st.lists(ops, max_size=8), st.sampled_from(["hard", "alpha", "gaussian", "poisson"]), st.integers(0, 99))
def test_paste_plans_never_crash_and_keep_invariants(op_list, blend, seed):
    r = np.random.default_rng(seed)
    pool = InstancePool.from_arrays([make_cutout(r, int(r.integers(2, 30)), int(r.integers(2, 30))) for _ in range(6)],
                                    [1, 2, 3, 4, 1, 2])
    sample = make_sample(r, 40, 50, 3)
    plan = PastePlan.from_dict(PastePlan(40, 50, tuple(op_list), blend).to_dict())  # and the dict round trip
    out = CopyPaste(pool, num_paste=0).apply(sample, plan)
    for box, mask in zip(out.targets.boxes, out.targets.masks):
        assert mask.any() and tuple(int(v) for v in box) == tight_box(mask)
    assert out.image.shape == sample.image.shape and out.image.dtype == np.uint8
