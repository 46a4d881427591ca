"""Offline augmentation, the public entry point: `augment_dataset(dataset, images, pool, out, ...)` writes K
Copy-Paste copies of every image of a COCO/LVIS dataset. The stage itself (its config, checks, runner stage
and driver) is one module, `xpaste.stages.augment`; this module names its public parts."""
from xpaste.stages.augment import AugmentReport, augment_dataset, check_options, check_paths

__all__ = ["AugmentReport", "augment_dataset", "check_options", "check_paths"]
