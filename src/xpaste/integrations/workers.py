"""Per-DataLoader-worker reseeding (kept importable from here; it lives in `xpaste.integrations.common`)."""
from __future__ import annotations

from xpaste.integrations.common import reseed_for_worker, worker_seed

__all__ = ["reseed_for_worker", "worker_seed"]
