"""`JobReport`: what every job returns (a pipeline stage, build-pool, `run_pipeline`), printed by the CLI; and
`AugmentReport`, augment's detailed outcome, which gives a JobReport.

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


@dataclass
class AugmentReport:
    """The outcome of `xpaste.stages.augment.augment_dataset` (its counts, failures and skips); `summary()` is
    the line the CLI prints, `job_report()` the same outcome as a `JobReport`."""

    images_written: int = 0
    images_resumed: int = 0
    annotations: int = 0
    pasted: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (file name, reason)
    skipped_annotations: list[tuple[str, str]] = field(default_factory=list)  # ("file#ann id", why), unique
    skipped_by_reason: dict[str, int] = field(default_factory=dict)  # reason code -> source annotations
    skipped_pastes: list[tuple[str, str]] = field(default_factory=list)  # ("file pool row N", why): unreadable
    occluded: int = 0  # originals hidden by pasted objects (the occlusion rule), per source annotation per copy
    out: str = ""
    seconds: float = 0.0

    def job_report(self):
        """The same outcome as the `xpaste.jobs.JobReport` every job returns."""
        counts = {"images written": self.images_written, "already done": self.images_resumed,
                  "annotations": self.annotations, "pasted": self.pasted,
                  **{f"not written ({k})": v for k, v in self.skipped_by_reason.items()},
                  "originals occluded (per copy)": self.occluded, "pastes skipped": len(self.skipped_pastes)}
        return JobReport("augment", self.out, counts, [{"item": f, "reason": w} for f, w in self.failed],
                         self.seconds)

    def summary(self) -> str:
        text = (f"{self.images_written} images written ({self.images_resumed} already done), "
                f"{self.annotations} annotations ({self.pasted} pasted), {len(self.failed)} images failed")
        if self.skipped_by_reason:
            reasons = ", ".join(f"{k}: {v}" for k, v in self.skipped_by_reason.items())
            text += f"; source annotations not written: {sum(self.skipped_by_reason.values())} ({reasons})"
        if self.occluded:
            text += (f"; {self.occluded} original annotations occluded by pasted objects (not written; counted per "
                     "source annotation per copy)")
        if self.skipped_pastes:
            text += f"; {len(self.skipped_pastes)} pastes skipped (pool cut-outs that could not be read)"
        return text
