"""Work added to a started segment or score stage: the rule of `SegmentStage.extend` and `ScoreStage.extend`.

A rerun of segment (or score) after the stages it reads grew (a planned round of generate / retrieve added
candidates; for score also segment's added candidates or segmenter) runs only the added work, in shards of its
own after the earlier ones (`xpaste.pipeline.runner.PartedPlan`), instead of refusing the changed upstream.

What counts as only added. Each part of the stage records the outputs of its upstream stages as they were
(`fingerprint.outputs_digest`: the bytes of every shard table, in order, and the size and mtime of every image
and mask these list). The upstream only grew when each recorded digest is still that of the first k shard
tables of that stage now (`fingerprint.outputs_digests`): then every recorded candidate (score: every recorded
mask row) is still there, in the same shard table, with the same row and the same file, and the added work is
what the shards after those hold. A shard rewritten or removed, an image or mask rewritten, a stage redone
(`--fresh`, even to the same rows: the files' mtimes differ) is refused in one line naming that stage, as any
other changed input; `--fresh` redoes the stage.

The record (RUN/<stage>/stage.json): the first part as the stage always recorded it (fingerprint, items,
items_digest, upstream), each addition under "added", in order:

- {"upstream": {stage: digest}, "items": n, "items_digest": d}: the work the upstream shards added since the
  part before: segment, the new candidates (sorted by id) with every segmenter known then; score, the new
  segment rows (in table order);
- {"segmenters": [...]} (segment only): added segmenters, run on every candidate known then (sorted by id).

A rerun rebuilds every part from the record and the upstream shards and checks each against its recorded count
and digest, and the parts together against the stage's work list now (a fresh run's: the same candidates, or
the same segment rows); an addition none of whose shards was written (its model failed to load, or the run
was killed first) binds nothing: it is dropped and worked out again. A run taking in additions adds at most a
candidates part, then a segmenters part. The rows are those of a fresh run over the whole work list, in
another shard order (each part's after the earlier parts').
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from xpaste.errors import XPasteError
from xpaste.fingerprint import digest, first_difference, outputs_digests
from xpaste.pipeline.runner import PartedPlan, ShardPlan, Stage, describe_change
from xpaste.stages.candidates import RESUME_HINT, read_candidates

#: The columns of a candidate that segment's work items hold (`SegmentStage.plan`).
ITEM_KEYS = ("candidate_id", "category_id", "category", "path")


@dataclass
class Part:
    """One part of a stage's work: its items, its record ({} for the first part, kept at the top level), the
    upstream shard counts it reaches (`Upstream.shards`) and, for segment, the segmenters it runs."""

    items: list[dict]
    entry: dict
    reach: dict[str, int]
    segmenters: list[str] = field(default_factory=list)


class Upstream:
    """The shard tables of the stages `stage` reads, seen as leading parts (computed once per rerun)."""

    def __init__(self, stage: Stage):
        self.stage = stage
        self._digests: dict[str, list[str]] = {}
        self._files: dict[str, list] = {}

    def files(self, name: str) -> list:
        if name not in self._files:
            folder = self.stage.run_dir / name
            self._files[name] = sorted(folder.glob("shard-*.parquet")) if folder.exists() else []
        return self._files[name]

    def shards(self, recorded: dict | None) -> dict[str, int]:
        """{upstream stage: how many of its first shard tables have the recorded digest}. XPasteError in one
        line naming the first stage whose recorded outputs are not a leading part of its outputs now."""
        recorded = recorded or {}
        out = {}
        for name in self.stage.upstream:
            if name not in self._digests:
                self._digests[name] = outputs_digests(self.stage.run_dir / name)
            old, now = recorded.get(name, ""), self._digests[name]
            if old not in now:
                raise XPasteError(f"the outputs of stage '{name}' changed since this output of stage "
                                  f"'{self.stage.name}' was started (it was rerun, or its earlier shards or files "
                                  "changed: only work added after them is taken in)", self.stage.output_root,
                                  RESUME_HINT)
            out[name] = now.index(old)
        return out

    def rows(self, name: str, start: int, stop: int, columns: list[str] | None = None) -> list[dict]:
        """The rows of the shard tables start..stop-1 (in name order) of stage `name`."""
        import pyarrow.parquet as pq

        rows: list[dict] = []
        for path in self.files(name)[start:stop]:
            try:
                rows.extend(pq.read_table(path, columns=columns).to_pylist())
            except Exception as e:  # noqa: BLE001 - a damaged shard: say which one and how to redo it
                raise XPasteError(f"unreadable shard: {e}", path, "delete the file and rerun the stage") from None
        return rows


def _refuse(stage: Stage, path: tuple, old, new) -> XPasteError:
    return XPasteError(describe_change(stage, path, old, new), stage.output_root, RESUME_HINT)


def _check_settings(stage: Stage, previous: dict, record: dict, ignore: tuple[str, ...] = ()) -> None:
    """The settings (the fingerprint, less `ignore`) hold for every part: a change is refused in one line."""
    old = {k: v for k, v in previous["fingerprint"].items() if k not in ignore}
    new = {k: v for k, v in record["fingerprint"].items() if k not in ignore}
    change = first_difference(old, new)
    if change is not None:
        raise _refuse(stage, ("fingerprint", *change[0]), change[1], change[2])


def _check_part(stage: Stage, items: list[dict], entry: dict) -> None:
    if len(items) != entry.get("items") or digest(items) != entry.get("items_digest"):
        raise _refuse(stage, ("items_digest",), entry.get("items_digest"), digest(items))


def _written(stage: Stage, parts: list[Part], size: int) -> list[Part]:
    """`parts` less the trailing additions none of whose shards was written (they bind nothing)."""
    starts, k = [], 0
    for part in parts:
        starts.append(k)
        k += math.ceil(len(part.items) / size)
    n = len(parts)
    while n > 1 and not any(stage.is_done(j) for j in range(starts[n - 1], starts[n - 1] +
                                                             math.ceil(len(parts[n - 1].items) / size))):
        n -= 1
    return parts[:n]


def _record(previous: dict, parts: list[Part]) -> dict:
    kept = {k: v for k, v in previous.items() if k != "added"}
    if len(parts) > 1:
        kept["added"] = [part.entry for part in parts[1:]]
    return kept


# ---------------------------------------------------------------------------------------------- segment
def candidate_items(up: Upstream, start: dict[str, int], stop: dict[str, int]) -> list[dict]:
    """Segment's work items (`ITEM_KEYS`) for the object candidates of the upstream shards start..stop-1 of
    each stage, sorted by id (the order `read_candidates` gives)."""
    rows = [r for name in up.stage.upstream
            for r in up.rows(name, start.get(name, 0), stop[name], ["kind", *ITEM_KEYS])
            if r["kind"] == "object"]
    return sorted(({k: r[k] for k in ITEM_KEYS} for r in rows), key=lambda r: r["candidate_id"])


def extend_segment(stage: Stage, previous: dict, record: dict, plan: ShardPlan) -> tuple[PartedPlan, dict, list]:
    """`SegmentStage.extend`: (the plan of every part, the record to keep, [(segmenters, shard indices)] of
    each part). Added candidates run with every segmenter known before them; added segmenters on every
    candidate. XPasteError (one line, --fresh as the way out): other settings (shard size, mask rule), a
    segmenter removed or reordered, upstream outputs that did not only grow, a part whose work changed."""
    _check_settings(stage, previous, record, ignore=("segmenters",))
    up = Upstream(stage)
    base = list(previous["fingerprint"].get("segmenters") or [])
    zero = {name: 0 for name in stage.upstream}
    reach = up.shards(previous.get("upstream"))
    first = candidate_items(up, zero, reach)
    _check_part(stage, first, previous)
    parts, specs, known = [Part(first, {}, reach, base)], list(base), list(first)
    for entry in previous.get("added") or []:
        if "segmenters" in entry:  # added segmenters: every candidate known then
            parts.append(Part(sorted(known, key=lambda r: r["candidate_id"]), entry, reach, list(entry["segmenters"])))
            specs += entry["segmenters"]
        else:  # added candidates: every segmenter known then
            to = up.shards(entry.get("upstream"))
            items = candidate_items(up, reach, to)
            _check_part(stage, items, entry)
            parts.append(Part(items, entry, to, list(specs)))
            known, reach = known + items, to
    parts = _written(stage, parts, plan.size)
    specs = [s for part in parts if part is parts[0] or "segmenters" in part.entry for s in part.segmenters]
    known = [it for part in parts if part is parts[0] or "upstream" in part.entry for it in part.items]
    reach, last = parts[0].reach, previous.get("upstream")
    for part in parts[1:]:
        if "upstream" in part.entry:
            reach, last = part.reach, part.entry["upstream"]
    wanted = list(record["fingerprint"]["segmenters"])
    if [spec for spec in wanted if spec in specs] != specs:  # one removed or reordered
        raise _refuse(stage, ("fingerprint", "segmenters"), specs, wanted)
    if record["upstream"] != last:  # the upstream grew: its new candidates, with the segmenters known
        to = up.shards(record["upstream"])
        items = candidate_items(up, reach, to)
        parts.append(Part(items, {"upstream": record["upstream"], "items": len(items), "items_digest": digest(items)},
                          to, list(specs)))
        known += items
    known.sort(key=lambda r: r["candidate_id"])
    new = [spec for spec in wanted if spec not in specs]
    if new:
        parts.append(Part(list(known), {"segmenters": new}, parts[-1].reach, new))
    if len(known) != record["items"] or digest(known) != record["items_digest"]:  # a fresh run's candidates
        raise _refuse(stage, ("items_digest",), record["items_digest"], digest(known))
    extended = PartedPlan([part.items if i == 0 else [{**item, "segmenters": part.segmenters} for item in part.items]
                           for i, part in enumerate(parts)], plan.size)
    passes = [(tuple(part.segmenters), extended.shards_of(i)) for i, part in enumerate(parts)]
    return extended, _record(previous, parts), passes


# ---------------------------------------------------------------------------------------------- score
def mask_items(up: Upstream, start: int, stop: int, candidates: dict) -> list[dict]:
    """Score's work items for the segment rows of segment's shards start..stop-1, joined with their candidate
    (image path, category name), in table order (as `segment_rows_with_paths`)."""
    out = []
    for row in up.rows("segment", start, stop):
        cand = candidates.get(row["candidate_id"])
        if cand is not None:
            out.append({**row, "path": cand["path"], "category": cand["category"]})
    return out


def extend_score(stage: Stage, previous: dict, record: dict, plan: ShardPlan) -> tuple[PartedPlan, dict]:
    """`ScoreStage.extend`: (the plan of every part, the record to keep). The masks segment added (for added
    candidates or an added segmenter) are scored; the earlier ones are kept. XPasteError (one line, --fresh as
    the way out): other settings (model, shard size, rule), upstream outputs that did not only grow, a part
    whose work changed."""
    _check_settings(stage, previous, record)
    up = Upstream(stage)
    candidates = {r["candidate_id"]: r for r in read_candidates(stage.run_dir)}
    parts: list[Part] = []
    start = 0
    for entry in [previous, *(previous.get("added") or [])]:
        to = up.shards(entry.get("upstream"))
        items = mask_items(up, start, to["segment"], candidates)
        _check_part(stage, items, entry)
        parts.append(Part(items, {} if entry is previous else entry, to))
        start = to["segment"]
    parts = _written(stage, parts, plan.size)
    last = parts[-1].entry.get("upstream") if len(parts) > 1 else previous.get("upstream")
    if record["upstream"] != last:  # the upstream grew: segment's new rows
        to = up.shards(record["upstream"])
        items = mask_items(up, parts[-1].reach["segment"], to["segment"], candidates)
        parts.append(Part(items, {"upstream": record["upstream"], "items": len(items), "items_digest": digest(items)},
                          to))
    every = [item for part in parts for item in part.items]
    if len(every) != record["items"] or digest(every) != record["items_digest"]:  # a fresh run's work list
        raise _refuse(stage, ("items_digest",), record["items_digest"], digest(every))
    return PartedPlan([part.items for part in parts], plan.size), _record(previous, parts)
