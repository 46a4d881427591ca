"""`Targets`: the one validated container for the instances of one image."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def _index_array(n: int, index) -> np.ndarray | slice:
    if isinstance(index, (int, np.integer)):
        if not -n <= int(index) < n:
            raise IndexError(f"instance index {index} out of range for {n} instances")
        return np.array([int(index) % n]) if n else np.array([], dtype=np.int64)
    if isinstance(index, slice):
        return index
    arr = np.asarray(index)
    if arr.dtype == bool:
        if arr.shape != (n,):
            raise IndexError(f"boolean index of shape {arr.shape} for {n} instances")
        return arr
    return arr.astype(np.int64, copy=False)


_INT64_LIMIT = float(2**63)


def _integer_labels(labels) -> np.ndarray:
    """(N,) int64 category ids. Integer dtypes are taken as they are; floats only when every value is exactly
    integral (1.0 is 1, 1.7 is refused rather than truncated); anything else is refused. Vectorised: it runs
    per training sample."""
    arr = np.asarray(labels).reshape(-1)
    if arr.dtype.kind in "iu":
        if arr.dtype == np.uint64 and len(arr) and int(arr.max()) >= 2**63:
            i = int(np.argmax(arr >= 2**63))
            raise ValueError(f"labels must fit int64: label {arr[i]} at index {i} does not")
        return arr.astype(np.int64, copy=False)
    if arr.dtype.kind == "f":
        bad = ~(np.isfinite(arr) & (np.trunc(arr) == arr) & (np.abs(arr) < _INT64_LIMIT))
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"labels must be integers (category ids): label {arr[i]!r} at index {i} is not")
        return arr.astype(np.int64)
    if len(arr) == 0:
        return np.zeros(0, np.int64)
    raise ValueError(f"labels must be integers (category ids), got dtype {arr.dtype} (first label {arr[0]!r})")


def _check_boxes(boxes: np.ndarray) -> None:
    """Every box finite with x1 <= x2 and y1 <= y2 (a zero-width box is allowed); ValueError naming the first
    bad index otherwise. Vectorised."""
    if not len(boxes):
        return
    ok = np.isfinite(boxes).all(axis=1) & (boxes[:, 2] >= boxes[:, 0]) & (boxes[:, 3] >= boxes[:, 1])
    if not ok.all():
        i = int(np.argmin(ok))
        raise ValueError(f"boxes must be finite XYXY with x1 <= x2 and y1 <= y2: box {boxes[i].tolist()} at "
                         f"index {i} is not")


@dataclass(eq=False)
class Targets:
    """Instances of one image as parallel numpy arrays of one length N.

    boxes:  (N, 4) float32, XYXY in absolute pixels; x2/y2 are exclusive (COCO: w = x2 - x1), so the tight
            box of a mask covering columns 3..7 is x1=3, x2=8.
    masks:  (N, H, W) bool.
    labels: (N,) int64 category ids.
    extra:  per-instance arrays of length N (e.g. `pasted` bool, `iscrowd` bool, `instance_id` str).

    Validated on construction (ValueError naming the first bad index): labels integral (float labels only when
    exactly integral, never truncated), boxes finite with x1 <= x2 and y1 <= y2, all arrays of one length.
    """

    boxes: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.labels = _integer_labels(self.labels)
        masks = np.asarray(self.masks)
        if masks.ndim != 3:
            raise ValueError(f"masks must be (N, H, W), got shape {masks.shape}")
        if masks.dtype != bool:
            raise ValueError(f"masks must be bool, got {masks.dtype}")
        self.masks = masks
        n = len(self.labels)
        if len(self.boxes) != n or len(self.masks) != n:
            raise ValueError(
                f"ragged targets: {len(self.boxes)} boxes, {len(self.masks)} masks, {n} labels"
            )
        _check_boxes(self.boxes)
        extra = {}
        for key, value in self.extra.items():
            value = np.asarray(value)
            if value.shape[:1] != (n,):
                raise ValueError(f"extra[{key!r}] has length {value.shape[:1]}, expected {n}")
            extra[key] = value
        self.extra = extra

    @classmethod
    def empty(cls, height: int, width: int, extra_keys: dict[str, np.dtype] | None = None) -> Targets:
        extra = {k: np.zeros(0, dtype=d) for k, d in (extra_keys or {}).items()}
        return cls(np.zeros((0, 4), np.float32), np.zeros((0, height, width), bool), np.zeros(0, np.int64), extra)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the masks."""
        return int(self.masks.shape[1]), int(self.masks.shape[2])

    def __getitem__(self, index) -> Targets:
        idx = _index_array(len(self), index)
        return Targets(
            self.boxes[idx], self.masks[idx], self.labels[idx], {k: v[idx] for k, v in self.extra.items()}
        )

    def copy(self) -> Targets:
        return Targets(
            self.boxes.copy(), self.masks.copy(), self.labels.copy(), {k: v.copy() for k, v in self.extra.items()}
        )

    def areas(self) -> np.ndarray:
        """Mask pixel counts, (N,) int64."""
        return self.masks.sum(axis=(1, 2), dtype=np.int64)

    @staticmethod
    def concatenate(parts: list[Targets]) -> Targets:
        if not parts:
            raise ValueError("nothing to concatenate")
        keys = set(parts[0].extra)
        for p in parts[1:]:
            if set(p.extra) != keys:
                raise ValueError(f"extra keys differ: {sorted(keys)} vs {sorted(p.extra)}")
        return Targets(
            np.concatenate([p.boxes for p in parts]),
            np.concatenate([p.masks for p in parts]),
            np.concatenate([p.labels for p in parts]),
            {k: np.concatenate([p.extra[k] for p in parts]) for k in sorted(keys)},
        )

    def __repr__(self) -> str:
        h, w = self.image_size
        return f"Targets(n={len(self)}, size={h}x{w}, extra={sorted(self.extra)})"


def occluded_originals(before, after) -> list[int]:
    """Source annotation ids present in `before` (the loaded sample's targets) and absent from the originals of
    `after` (the pasted sample's): those the occlusion rule dropped. Sorted."""
    ids = np.asarray(before.extra["ann_id"])
    if ids.size == 0:
        return []
    pasted = np.asarray(after.extra["pasted"], bool)
    kept = set(np.asarray(after.extra["ann_id"])[~pasted].tolist())
    return sorted(int(a) for a in ids.tolist() if int(a) not in kept)
