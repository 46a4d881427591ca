"""`PackedDataset`: the images of a COCO/LVIS dataset with their annotations packed as json bytes in one numpy
array, so that forked workers share it copy-on-write without touching its pages (no Python object per
annotation to refcount), Ray actors receive it zero-copy, and the driver can drop the dataset's dicts."""
from __future__ import annotations

import ctypes
import gc
import json

import numpy as np


class PackedDataset:
    """Images 0..n-1 of a dataset with their annotations, as json records in one uint8 array.

    `record(i)` -> (image dict, [annotation dicts]) as in the source json. Memory: about the json's size,
    held in two numpy arrays (no Python object per annotation), so forks share it.
    """

    def __init__(self, dataset, n_images: int):
        blob = bytearray()  # grown in place (no list of chunks, no join): the peak stays near its final size
        offsets = np.zeros(n_images + 1, dtype=np.int64)
        for i, image in enumerate(dataset.images[:n_images]):
            blob += json.dumps([image, dataset.annotations_for(image["id"])], ensure_ascii=False).encode()
            offsets[i + 1] = len(blob)
        self.blob = np.frombuffer(blob, dtype=np.uint8)
        self.offsets = offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def record(self, i: int) -> tuple[dict, list[dict]]:
        image, anns = json.loads(self.blob[self.offsets[i] : self.offsets[i + 1]].tobytes())
        return image, anns


def release_memory() -> None:
    """Return freed heap pages to the OS (glibc's malloc_trim; a no-op elsewhere), so that workers forked after
    the dataset's dicts were dropped for its `PackedDataset` do not map them."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
