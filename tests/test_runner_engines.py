"""The pipeline runner's engines with a toy stage: the forked-worker engine equals the in-process one, a
worker killed once is replaced and its shard redone, a worker that keeps dying stops the run in one line
(never a hang), a shard's OSError stops the pool and reaches the caller, Ctrl-C's KeyboardInterrupt too;
plans are lazy; a changed setting is refused in one line naming it."""
from __future__ import annotations

import errno
import itertools
import multiprocessing
import os
import signal
from pathlib import Path

import pytest

from xpaste.errors import XPasteError
from xpaste.stages.augment import AugmentTasks
from xpaste.pipeline.runner import ShardPlan, Stage, run_stage
from xpaste.pipeline.shards import read_stage


class Squares(Stage):
    """Items 0..n-1 -> rows (x, x*x); `fault` decides what happens in shard `fault_shard`."""

    name = "squares"

    def schema(self):
        import pyarrow as pa

        return pa.schema([("x", pa.int64()), ("y", pa.int64())])

    def fingerprint(self) -> dict:
        return {"power": 2, "n": self.config["n"], "shard_size": self.config["shard_size"]}

    def plan(self):
        return [{"x": i} for i in range(self.config["n"])]

    def prepare(self) -> None:  # no torch for a toy
        pass

    def process(self, items):
        fault = self.config.get("fault")
        if fault and items[0]["x"] // self.config["shard_size"] == self.config["fault_shard"]:
            marker = self.run_dir / "faulted-once"
            if fault == "kill-always" or (fault == "kill-once" and not marker.exists()):
                marker.touch()
                os.kill(os.getpid(), signal.SIGKILL)
            if fault == "disk-full":
                raise OSError(errno.ENOSPC, "No space left on device", str(self.run_dir / "x"))
            if fault == "interrupt":
                raise KeyboardInterrupt
        return [{"x": it["x"], "y": it["x"] ** 2} for it in items], []


def expected_rows(n: int) -> list[dict]:
    return [{"x": i, "y": i * i} for i in range(n)]


def run(tmp: Path, workers: int, n: int = 40, **config) -> tuple:
    stage = Squares(tmp, {"n": n, "shard_size": 4, **config})
    report = run_stage(stage, progress=False, workers=workers)
    return report, read_stage(stage.stage_dir).to_pylist()


@pytest.mark.parametrize("workers", [1, 3])
def test_engines_write_the_same_rows(tmp_path, workers):
    report, rows = run(tmp_path, workers)
    assert rows == expected_rows(40) and report.shards == 10 and report.shards_resumed == 0
    report, rows = run(tmp_path, workers)  # all done: nothing redone
    assert report.shards_resumed == 10 and report.items_resumed == 40 and rows == expected_rows(40)


def test_a_worker_killed_once_is_replaced_and_its_shard_redone(tmp_path):
    _, rows = run(tmp_path, 2, fault="kill-once", fault_shard=3)
    assert (tmp_path / "faulted-once").exists()  # the kill happened
    assert rows == expected_rows(40)
    assert not multiprocessing.active_children()


def test_a_worker_that_keeps_dying_stops_the_run_in_one_line(tmp_path):
    with pytest.raises(XPasteError) as e:
        run(tmp_path, 2, fault="kill-always", fault_shard=3)
    assert "died 3 times" in e.value.message and "\n" not in str(e.value)
    assert not multiprocessing.active_children()
    # the other shards are kept; without the fault the rerun finishes the work
    report, rows = run(tmp_path, 2)
    assert report.shards_resumed >= 1 and rows == expected_rows(40)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_shard_os_error_reaches_the_caller_and_the_rerun_resumes(tmp_path, workers):
    with pytest.raises(OSError) as e:
        run(tmp_path, workers, fault="disk-full", fault_shard=2)
    assert e.value.errno == errno.ENOSPC
    assert not multiprocessing.active_children()
    assert not (tmp_path / "squares" / "shard-000002.parquet").exists()
    _, rows = run(tmp_path, workers)
    assert rows == expected_rows(40)


def test_keyboard_interrupt_stops_the_workers(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, 1, fault="interrupt", fault_shard=1)
    # in a worker process the interrupt arrives as an error of its shard: the pool is stopped all the same
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, 2, fault="interrupt", fault_shard=1)
    assert not multiprocessing.active_children()
    _, rows = run(tmp_path, 2)
    assert rows == expected_rows(40)


def test_a_changed_setting_is_refused_naming_it_and_fresh_redoes(tmp_path):
    run(tmp_path, 1, n=12)
    with pytest.raises(XPasteError) as e:
        run(tmp_path, 1, n=16)
    assert "setting n changed" in e.value.message and "12" in e.value.message and "16" in e.value.message
    stage = Squares(tmp_path, {"n": 16, "shard_size": 4})
    run_stage(stage, progress=False, fresh=True)
    assert read_stage(stage.stage_dir).to_pylist() == expected_rows(16)


@pytest.mark.parametrize("n_images,copies,size", [(1, 1, 1), (5, 3, 4), (7, 2, 16), (3, 11, 5)])
def test_augment_tasks_are_the_image_by_copy_product(n_images, copies, size):
    oracle = [{"image_index": i, "copy": c} for i, c in itertools.product(range(n_images), range(copies))]
    plan = ShardPlan(AugmentTasks(n_images, copies), size)
    assert len(plan) == -(-len(oracle) // size)
    assert [t for k in range(len(plan)) for t in plan[k]] == oracle


def test_a_huge_plan_is_never_listed():
    plan = ShardPlan(AugmentTasks(2_000_000, 10**9), 16)  # 2e15 tasks: a list would not fit in memory
    assert len(plan) == 125 * 10**12
    assert plan[len(plan) - 1][-1] == {"image_index": 1_999_999, "copy": 10**9 - 1}
    assert plan[0][0] == {"image_index": 0, "copy": 0}
    with pytest.raises(IndexError):
        plan[len(plan)]


@pytest.mark.parametrize("engine,workers", [("dask", 1), ("local", 0), ("local", "2")])
def test_a_bad_engine_or_worker_count_is_refused_before_anything_is_written(tmp_path, engine, workers):
    with pytest.raises(XPasteError):
        run_stage(Squares(tmp_path, {"n": 8, "shard_size": 4}), engine=engine, workers=workers, progress=False)
    assert not (tmp_path / "squares").exists()
