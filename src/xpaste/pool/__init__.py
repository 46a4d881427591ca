"""The instance pool: RGBA cut-outs by category on disk.

Modules, from the ground up: `layout` (file names), `header` (pool.json), `codec` (a cut-out's bytes),
`sampler` (class-balanced draws), `store` (`InstancePool`, the reader), `writer` (`PoolWriter`, which
imports the reader, never the other way round), then `importers`, `tools` and `repair` (rebuilds a lost
manifest).

`InstancePool.create` and `InstancePool.open(path, writable=True)` hand back a `PoolWriter` (kept for existing
callers); the writer class is bound to the reader here, and Python imports this package before any of its
modules, so the binding is in place whichever pool module a caller imports first.
"""
from xpaste.pool.store import InstancePool
from xpaste.pool.writer import PoolWriter

InstancePool.writer_class = PoolWriter

__all__ = ["InstancePool", "PoolWriter"]
