"""`Targets` is validated on construction: labels are integral (never truncated), boxes are finite and ordered."""
import numpy as np
import pytest

from xpaste.core.targets import Targets


def _masks(n, h=6, w=7):
    return np.zeros((n, h, w), bool)


def _boxes(n):
    return np.tile(np.array([[1.0, 2.0, 4.0, 5.0]], np.float32), (n, 1))


@pytest.mark.parametrize("labels, expected", [
    (np.array([1, 5, 90], np.int64), [1, 5, 90]),
    (np.array([1, 5, 90], np.int32), [1, 5, 90]),
    (np.array([1, 5, 90], np.uint8), [1, 5, 90]),
    (np.array([1.0, 5.0, 90.0], np.float32), [1, 5, 90]),  # ultralytics keeps classes as floats
    (np.array([[1.0], [5.0], [90.0]], np.float64), [1, 5, 90]),
    ([1, 5, 90], [1, 5, 90]),
    (np.array([-1.0, 0.0, 2.0**40]), [-1, 0, 2**40]),
])
def test_integral_labels_are_kept(labels, expected):
    t = Targets(_boxes(3), _masks(3), labels)
    assert t.labels.dtype == np.int64
    assert t.labels.tolist() == expected


@pytest.mark.parametrize("labels, bad_index", [
    (np.array([1.7]), 0),
    (np.array([1.0, 2.0, 2.5]), 2),
    (np.array([3.0, np.nan, 1.0]), 1),
    (np.array([3.0, 1.0, np.inf]), 2),
    (np.array([1.0000001, 1.0, 1.0]), 0),
    (np.array([1.0, 2.0**64, 1.0]), 1),  # integral but outside int64
    (np.array([1, 2**63, 3], np.uint64), 1),
])
def test_non_integral_labels_are_refused_naming_the_index(labels, bad_index):
    n = len(labels)
    with pytest.raises(ValueError, match=f"index {bad_index}") as info:
        Targets(_boxes(n), _masks(n), labels)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("labels", [np.array(["1", "2"]), np.array([1, None], object), np.array([True, False])])
def test_non_numeric_labels_are_refused(labels):
    with pytest.raises(ValueError, match="labels must be integers"):
        Targets(_boxes(2), _masks(2), labels)


@pytest.mark.parametrize("boxes", [
    [[1, 2, 4, 5], [0, 0, 7, 6]],
    [[3, 3, 3, 3], [0, 0, 0, 6]],  # zero-width/height boxes are legitimate (x2 exclusive, empty masks)
    [[-2.5, -1, 0.5, 8]],  # partly outside the image: not this container's business
])
def test_ordered_finite_boxes_are_kept(boxes):
    boxes = np.array(boxes, np.float32)
    t = Targets(boxes, _masks(len(boxes)), np.ones(len(boxes), np.int64))
    np.testing.assert_array_equal(t.boxes, boxes)


@pytest.mark.parametrize("boxes, bad_index", [
    ([[1, 2, 4, 5], [np.nan, 0, 3, 3]], 1),
    ([[1, 2, 4, 5], [1, 2, 4, 5], [0, 0, np.inf, 3]], 2),
    ([[0, 0, -np.inf, 3]], 0),
    ([[5, 0, 3, 3], [1, 2, 4, 5]], 0),   # x2 < x1
    ([[1, 2, 4, 5], [0, 4, 3, 3.5]], 1),  # y2 < y1
    ([[1, 2, 4, 5], [0, 4, 3, 3.5], [np.nan] * 4], 1),  # the first bad one is named
])
def test_bad_boxes_are_refused_naming_the_first_index(boxes, bad_index):
    boxes = np.array(boxes, np.float32)
    with pytest.raises(ValueError, match=f"at index {bad_index} is not") as info:
        Targets(boxes, _masks(len(boxes)), np.ones(len(boxes), np.int64))
    assert "\n" not in str(info.value)


def test_validation_applies_to_derived_targets():
    t = Targets(_boxes(2), _masks(2), [1, 2])
    assert len(t[0]) == 1 and len(t.copy()) == 2
    assert len(Targets.concatenate([t, t])) == 4
    assert Targets.empty(4, 5).labels.dtype == np.int64
    bad = Targets(_boxes(1), _masks(1), [3])
    bad.boxes[0, 2] = -1.0  # mutated in place, then rebuilt: refused on the rebuild
    with pytest.raises(ValueError, match="index 0"):
        bad.copy()
