"""Names of the per-instance arrays in `Targets.extra` (as supervision's `config.py` names its data keys).

Every producer and consumer of these arrays (paste kernels, dataset readers, writers, framework adapters)
uses these constants, so a key is spelled once.
"""
from __future__ import annotations

PASTED = "pasted"  # bool: the instance was pasted (X-Paste's instance_source = 1), not annotated
INSTANCE_ID = "instance_id"  # str: content hash of the pool cut-out a pasted instance came from ("" otherwise)
POOL_ROW = "pool_row"  # int64: row of that cut-out in the pool index (-1 for originals)
ISCROWD = "iscrowd"  # bool: COCO crowd region (never pasted, never counted as an instance)
ANN_ID = "ann_id"  # int64: the source annotation's id in the dataset json
IGNORE = "ignore"  # bool: mmdet's gt_ignore_flags
SOURCE_ROW = "_xpaste_source_index"  # int64: input row of each output instance, -1 = pasted (adapters only)

# Keys whose values are defined for pasted instances by the paste itself (not copied from an input row).
PASTE_OWNED = (PASTED, INSTANCE_ID, POOL_ROW)

# Sample.meta key set by every paste (`paste.functional.apply_plan`): tuple of the input rows whose region a paste
# overlapped (their masks may have changed). A kept original not listed has its input mask, bit for bit, so a
# writer may reuse its encoded form. Absent (a sample no paste has seen): treat every row as changed.
OCCLUDED_ROWS = "occluded_rows"
