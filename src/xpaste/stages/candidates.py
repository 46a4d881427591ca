"""The candidates table that generate and retrieve write (one row per image, `candidate_schema`) and that
segment, score and build-pool read back (`read_candidates`); and the rounds of those two stages.

Rounds (`xpaste generate | retrieve | run --plan PLAN`, config keys `generate.plan`, `retrieve.plan`). The
work of generate and retrieve in a run is a list of rounds, each its own set of items:

- the round without a plan: `per_category` images per category (generate: and `backgrounds` scene images),
  the items and ids a run has always had;
- a planned round: the plan's `generate` images of each category (`xpaste.plan.plan_generate`: the plan's
  categories must be the run's). It is named by the plan's content digest (`xpaste.plan.plan_digest`, 16 hex
  digits; `round_tag`: 'p' + its first 8), which is part of its item ids (generate: of its seeds too), so it
  never touches the items of another round.

RUN/<stage>/stage.json records the first round the stage ran as it always did (its settings, items and items
digest; a planned one with `fingerprint.round` = {plan, file, counts}) and each later round under "rounds"
({round, items, items_digest}). A rerun naming a recorded round resumes it (nothing new once it is done); one
naming a new round adds it, in shards of its own after the earlier ones (`extend_rounds`, through the
runner's `Stage.extend` and `PartedPlan`), once every earlier round is complete. Refused in one line, as any
changed input (`--fresh` redoes the stage, every round): other settings than the run's (model, seed, steps,
folder, ...: they hold for every round), another `per_category` for the round without a plan, a new round
while another is unfinished, a recorded round whose items would now differ (e.g. the prompt file changed). A
later round that wrote no shard (its model failed to load) binds nothing: the next run replaces it.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Sequence

from xpaste.errors import XPasteError
from xpaste.fingerprint import digest, first_difference
from xpaste.pipeline.runner import PartedPlan, ShardPlan, Stage, describe_change
from xpaste.pipeline.shards import read_stage, shard_path
from xpaste.plan import load_plan, plan_digest, plan_generate

CANDIDATE_FIELDS = [("candidate_id", "string"), ("kind", "string"), ("category_id", "int64"),
                    ("category", "string"), ("path", "string"), ("source", "string"), ("model", "string"),
                    ("prompt", "string"), ("seed", "int64"), ("steps", "int64"), ("guidance", "float64"),
                    ("width", "int64"), ("height", "int64"), ("url", "string"), ("retrieval_score", "float64")]
RESUME_HINT = "rerun with the same inputs and options to resume, or pass --fresh to start over"


def candidate_schema():
    import pyarrow as pa

    return pa.schema([(name, getattr(pa, typ)()) for name, typ in CANDIDATE_FIELDS])


def candidate_row(**values) -> dict:
    row = {name: None for name, _ in CANDIDATE_FIELDS}
    row.update(values)
    return row


def read_candidates(run_dir: Path):
    """Object candidates from generate and retrieve, sorted by id (the order every later stage uses)."""
    import pyarrow as pa

    tables = [read_stage(run_dir / name, candidate_schema()) for name in ("generate", "retrieve")]
    table = pa.concat_tables(tables, promote_options="default")
    rows = [r for r in table.to_pylist() if r["kind"] == "object"]
    return sorted(rows, key=lambda r: r["candidate_id"])


# ----------------------------------------------------------------------------------------------- rounds
def planned_round(path: str, categories: Sequence[Any]) -> dict:
    """The round a plan file asks of a run: {'plan': its content digest (16 hex), 'file': `path` as given,
    'counts': [[category id, images], ...] for the run's categories with images > 0, in run order}.
    XPasteError in one line naming the file: not a plan, or a plan of other categories (`plan_generate`)."""
    plan = load_plan(path)
    counts = plan_generate(plan, categories, where=path)
    return {"plan": plan_digest(plan), "file": str(path), "counts": [[c, n] for c, n in counts.items() if n > 0]}


def round_tag(round_: dict) -> str:
    """'p' + the first 8 hex digits of a planned round's digest: the part of its item ids naming the round."""
    return "p" + round_["plan"][:8]


def describe_round(round_: dict) -> str:
    if "plan" in round_:
        return f"the round of plan {round_['file']} ({round_tag(round_)})"
    return "the round without a plan (" + ", ".join(f"{k} {v}" for k, v in round_.items()) + ")"


def split_round(fingerprint: dict, section: str, sizes: Sequence[str]) -> tuple[dict, dict]:
    """(settings, round) of a stage's fingerprint: a planned round's fingerprint holds it under 'round'; for the
    round without a plan it is the section's `sizes` keys (generate: per_category, backgrounds). The
    settings (the rest) hold for every round of a run."""
    if "round" in fingerprint:
        return {k: v for k, v in fingerprint.items() if k != "round"}, fingerprint["round"]
    options = dict(fingerprint.get(section) or {})
    round_ = {k: options.pop(k, None) for k in sizes}
    return {**fingerprint, section: options}, round_


def _key(round_: dict) -> tuple:
    return ("plan", round_["plan"]) if "plan" in round_ else ("unplanned",)


def extend_rounds(stage: Stage, previous: dict, record: dict, plan: ShardPlan, items_of: Callable[[dict], list],
                  section: str, sizes: Sequence[str]) -> tuple[PartedPlan, dict, int, list[range]]:
    """`Stage.extend` of generate and retrieve (see the module docstring): (the plan of every round, this
    run's round as it was recorded or added; the record to keep; the index of this run's round; each round's
    shard indices). `items_of(round)` recomputes a recorded round's items (checked against its digest).
    Raises XPasteError (one line, naming the run folder) for the refusals listed above."""
    old_settings, first = split_round(previous["fingerprint"], section, sizes)
    settings, wanted = split_round(record["fingerprint"], section, sizes)
    change = first_difference(old_settings, settings)
    if change is not None:
        raise XPasteError(describe_change(stage, ("fingerprint", *change[0]), change[1], change[2]),
                          stage.output_root, RESUME_HINT)
    rounds = [{"round": first, "items": previous["items"], "items_digest": previous["items_digest"]},
              *previous.get("rounds", [])]
    size = plan.size

    def shards(j: int) -> range:
        start = sum(math.ceil(r["items"] / size) for r in rounds[:j])
        return range(start, start + math.ceil(rounds[j]["items"] / size))

    index = next((j for j, r in enumerate(rounds) if _key(r["round"]) == _key(wanted)), None)
    while len(rounds) > 1 and index != len(rounds) - 1 and not any(stage.is_done(k) for k in shards(len(rounds) - 1)):
        rounds.pop()  # a later round that wrote no shard binds nothing
    if index is not None and "plan" not in wanted and rounds[index]["round"] != wanted:
        path, old, new = first_difference(rounds[index]["round"], wanted)
        raise XPasteError(describe_change(stage, ("fingerprint", section, *path), old, new), stage.output_root,
                          "rerun with the same value to resume that round, pass --plan PLAN to add a planned round, "
                          "or pass --fresh to start over")
    unfinished = [j for j in range(len(rounds)) if j != index and not all(stage.is_done(k) for k in shards(j))]
    if unfinished:
        raise XPasteError(f"{describe_round(rounds[unfinished[0]]['round'])} of stage '{stage.name}' is unfinished: "
                          f"a run adds a round once the earlier ones are done", stage.output_root,
                          "rerun with that plan (no --plan for the round without one) to finish it, or pass --fresh "
                          "to start the stage over")
    if index is None:
        clash = [r["round"] for r in rounds if "plan" in r["round"] and "plan" in wanted
                 and round_tag(r["round"]) == round_tag(wanted)]
        if clash:  # two plans whose digests share their first 8 hex digits: their ids would coincide
            raise XPasteError(f"the plan's short digest {round_tag(wanted)} is that of {describe_round(clash[0])}",
                              wanted["file"], "change the plan (e.g. its budget by one) or pass --fresh")
        rounds.append({"round": wanted, "items": record["items"], "items_digest": record["items_digest"]})
        index = len(rounds) - 1
    parts = []
    for j, r in enumerate(rounds):
        items = list(plan.items) if j == index else list(items_of(r["round"]))
        got = record["items_digest"] if j == index else digest(items)
        if got != r["items_digest"]:
            raise XPasteError(describe_change(stage, ("items_digest",), r["items_digest"], got),
                              stage.output_root, RESUME_HINT)
        parts.append(items)
    kept = {k: v for k, v in previous.items() if k != "rounds"}
    if len(rounds) > 1:
        kept["rounds"] = rounds[1:]
    extended = PartedPlan(parts, size)
    return extended, kept, index, [extended.shards_of(j) for j in range(len(rounds))]


def ids_in_shards(stage_dir: Path, shards: Sequence[int]) -> dict[int, set[str]]:
    """{category id: candidate ids} of the given shard tables of a stage (missing ones are skipped)."""
    import pyarrow.parquet as pq

    out: dict[int, set[str]] = {}
    for k in shards:
        path = shard_path(stage_dir, k)
        if path.exists():
            table = pq.read_table(path, columns=["category_id", "candidate_id"])
            for cat, cid in zip(table.column(0).to_pylist(), table.column(1).to_pylist()):
                out.setdefault(int(cat), set()).add(cid)
    return out
