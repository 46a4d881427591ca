"""Reproducible model stages, so that a resumed run equals an uninterrupted one.

Float reductions depend on the thread count, and importing some backends changes it behind our back:
`import rembg` imports pymatting, which raises torch's intra-op thread count (1 -> 2 seen here), flipping a
few uint8 pixels of every later generated image, hence masks, CLIP scores and pool contents. So the thread
count is fixed when a stage starts and restored after its models are built. MKL's conditional numerical
reproducibility (MKL_CBWR) fixes its BLAS code paths; it must be set before torch loads MKL, which
`xpaste.cli.main` and the tests do. On CUDA, cuDNN is asked for deterministic algorithms.
"""
from __future__ import annotations

import os

_THREADS: int | None = None


def set_env_defaults() -> None:
    """Call before torch is imported (the CLI entry point does)."""
    os.environ.setdefault("MKL_CBWR", "COMPATIBLE")


def configure_torch() -> None:
    """Pin the thread count (first call wins: OMP_NUM_THREADS if set, else torch's current value)."""
    global _THREADS
    import torch

    if _THREADS is None:
        env = os.environ.get("OMP_NUM_THREADS", "")
        _THREADS = int(env) if env.isdigit() and int(env) > 0 else torch.get_num_threads()
    torch.set_num_threads(_THREADS)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def restore_threads() -> None:
    """Undo thread-count changes made by imports inside a stage's model set-up."""
    if _THREADS is not None:
        import torch

        torch.set_num_threads(_THREADS)
