"""`JobReport`: what every job returns (a pipeline stage, build-pool, `run_pipeline`), printed by the CLI.

Light on purpose (no numpy): any module may return one.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class JobReport:
    """The outcome of one job.

    job: its name ('generate', 'build-pool', 'run', ...); out: the folder it wrote (str, or None);
    counts: named integer counts in display order (items, done, rows, added, ...);
    failures: [{'item': str, 'reason': str}] of inputs that were skipped or failed, the run itself succeeding;
    seconds: wall-clock duration; parts: the reports of the jobs a composite job ran, in order.
    """

    job: str
    out: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    failures: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    parts: list["JobReport"] = field(default_factory=list)

    def summary(self) -> str:
        """One line: `job: 12 items, 3 resumed, ... , 1 failed, 2.5 s -> out`."""
        counts = ", ".join(f"{v} {k}" for k, v in self.counts.items())
        text = f"{self.job}: {counts}{', ' if counts else ''}{len(self.failures)} failed, {self.seconds:.1f} s"
        return f"{text} -> {self.out}" if self.out else text

    def lines(self, max_failures: int = 10) -> list[str]:
        """The summary, then up to `max_failures` failures (and how many more), then each part's summary."""
        out = [self.summary()]
        for entry in self.failures[:max_failures]:
            out.append(f"  failed {entry.get('item')}: {entry.get('reason')}")
        if len(self.failures) > max_failures:
            out.append(f"  ... {len(self.failures) - max_failures} more")
        for part in self.parts:
            out.append(f"  {part.summary()}")
        return out
