"""Per-DataLoader-worker randomness shared by the framework adapters.

Forked workers inherit the same Generator state, so without reseeding every worker would paste the same
objects. Each worker reseeds once from its torch seed (base seed + worker id), mixed with the transform's
own seed when one was set, so runs stay reproducible under a fixed torch seed.
"""
from __future__ import annotations

import os

import numpy as np


def worker_seed(base_seed: int | None) -> tuple[tuple, int] | None:
    """(key, seed) for the current DataLoader worker, or None in the main process. The key changes whenever
    a new worker process gets a copy (a new epoch without persistent workers)."""
    import torch.utils.data

    info = torch.utils.data.get_worker_info()
    if info is None:
        return None
    entropy = [int(info.seed)] + ([int(base_seed)] if base_seed is not None else [])
    return (os.getpid(), info.id, info.seed), int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])


def reseed_for_worker(copy_paste, base_seed: int | None, last_key: tuple | None) -> tuple | None:
    """Reseed `copy_paste` if this is a new worker; returns the key to remember."""
    worker = worker_seed(base_seed)
    if worker is None or worker[0] == last_key:
        return last_key
    copy_paste.reseed(worker[1])
    return worker[0]
