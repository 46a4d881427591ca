"""The HTML report of a pool, a pipeline run and an augmented dataset (`xpaste report`).

Light on import: matplotlib, OpenCV and pyarrow load only when a report is written.
"""
from __future__ import annotations

__all__ = ["write_report"]


def __getattr__(name: str):
    if name == "write_report":
        from xpaste.report.html import write_report

        return write_report
    raise AttributeError(f"module 'xpaste.report' has no attribute {name!r}")
