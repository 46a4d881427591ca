"""Mask kernels and core containers."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from xpaste import Sample, Targets
from xpaste.ops.masks import masks_to_rles, rle_decode, rle_encode, tight_box, tight_boxes


@settings(max_examples=200, deadline=None)
@given(arrays(bool, st.tuples(st.integers(0, 4), st.integers(1, 30), st.integers(1, 30))))
def test_band_rle_equals_pycocotools_encode(masks):
    rles = masks_to_rles(masks, tight_boxes(masks))
    assert rles == [rle_encode(m) for m in masks]
    for rle, m in zip(rles, masks):
        assert np.array_equal(rle_decode(rle), m)


def test_tight_box_is_exclusive():
    m = np.zeros((10, 12), bool)
    m[2:5, 3:8] = True
    assert tight_box(m) == (3, 2, 8, 5)
    assert tight_box(np.zeros((3, 3), bool)) is None


def test_targets_validate_and_index():
    masks = np.zeros((3, 4, 5), bool)
    masks[:, 1, 1] = True
    t = Targets(tight_boxes(masks), masks, [1, 2, 3], {"pasted": [False, True, False]})
    assert len(t[1:]) == 2 and t[np.array([True, False, True])].labels.tolist() == [1, 3]
    assert t[-1].labels.tolist() == [3] and t.areas().tolist() == [1, 1, 1]
    with pytest.raises(ValueError, match="ragged"):
        Targets(np.zeros((2, 4)), masks, [1, 2, 3])
    with pytest.raises(ValueError, match="bool"):
        Targets(np.zeros((3, 4)), masks.astype(np.uint8), [1, 2, 3])
    with pytest.raises(ValueError, match="extra"):
        Targets(np.zeros((3, 4)), masks, [1, 2, 3], {"pasted": [True]})
    with pytest.raises(IndexError):
        t[3]
    with pytest.raises(ValueError, match="masks are"):
        Sample(np.zeros((5, 5, 3), np.uint8), t)


def test_import_xpaste_stays_light():
    code = ("import sys, xpaste; heavy = [m for m in ('torch', 'cv2', 'pyarrow', 'diffusers', 'ray', 'PIL') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
