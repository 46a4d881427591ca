"""The Ray engine on a small local cluster (2 CPUs, 200 MiB object store): the tiny-model pipeline gives the
local engine's pool, a SIGKILLed Ray run resumes to it, and a failing shard is retried, recorded and
reported while the other shards are written."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

from test_pipeline import dataset, models, pool_state, write_config  # noqa: E402,F401 - fixtures reused

from xpaste.cli import main  # noqa: E402
from xpaste.errors import XPasteError  # noqa: E402
from xpaste.pipeline.shards import read_stage  # noqa: E402

RAY_ENV = {"RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    os.environ.update(RAY_ENV)
    # Ray's unix sockets live under its temp dir, whose path must stay short (108-byte limit)
    temp = tempfile.mkdtemp(prefix="xr", dir="/tmp")
    ray.init(address="local", num_cpus=2, object_store_memory=200 * 2**20, include_dashboard=False,
             log_to_driver=False, _temp_dir=temp)
    yield ray
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def reference(models, dataset, tmp_path_factory):  # noqa: F811
    """The local engine's run of the tiny pipeline: (run dir, pool state)."""
    root = tmp_path_factory.mktemp("local")
    config = write_config(root / "local.yaml", root / "run", models, dataset[0])
    assert main(["run", str(config)]) == 0
    state = pool_state(root / "run" / "pool")
    assert state
    return root / "run", state


def test_ray_pipeline_equals_local(ray_cluster, models, dataset, reference, tmp_path):  # noqa: F811
    ref_run, expected = reference
    run = tmp_path / "run"
    config = write_config(tmp_path / "ray.yaml", run, models, dataset[0])
    assert main(["run", str(config), "--set", "engine=ray"]) == 0
    assert pool_state(run / "pool") == expected
    # the shard files are the local engine's, shard for shard, so engines are interchangeable
    for stage in ("generate", "segment", "score"):
        assert sorted(p.name for p in (run / stage).glob("shard-*")) == \
               sorted(p.name for p in (ref_run / stage).glob("shard-*"))
        assert read_stage(run / stage).drop_columns(["embedding"] if stage == "score" else []).equals(
            read_stage(ref_run / stage).drop_columns(["embedding"] if stage == "score" else []))
    # build-pool accepts --engine ray (it runs on the driver) and, resumed, leaves the same pool
    assert main(["build-pool", "--config", str(config), "--engine", "ray"]) == 0
    assert pool_state(run / "pool") == expected


def _processes_under(marker: str) -> list[int]:
    """Pids of processes whose command line mentions `marker` (the killed run's private Ray temp dir)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def test_killed_ray_run_resumes_to_the_same_pool(ray_cluster, models, dataset, reference, tmp_path):  # noqa: F811
    _, expected = reference
    run = tmp_path / "run"
    config = write_config(tmp_path / "killed.yaml", run, models, dataset[0])
    temp = tempfile.mkdtemp(prefix="xk", dir="/tmp")
    # the subprocess starts its own small local Ray, in its own session so that one killpg ends it all
    env = dict(os.environ, **RAY_ENV, XPASTE_RAY_NUM_CPUS="2", XPASTE_RAY_OBJECT_STORE="200M",
               XPASTE_RAY_TEMP_DIR=temp, PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen([sys.executable, "-m", "xpaste", "run", str(config), "--set", "engine=ray"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    target = run / "segment" / "shard-000000.parquet"
    deadline = time.time() + 150
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    stderr = proc.communicate()[1].decode(errors="replace")
    # Ray's daemons die with their parent (a parent-death signal), but should one outlive the kill, end
    # it by pid (it names the run's private temp dir), without touching the test cluster
    for _ in range(50):
        leftovers = _processes_under(temp)
        for pid in leftovers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if not leftovers:
            break
        time.sleep(0.1)
    shutil.rmtree(temp, ignore_errors=True)
    assert target.exists(), f"the Ray run never reached the segment stage:\n{stderr[-3000:]}"
    assert not (run / "pool").exists(), "the run finished before it was killed"
    assert not (run / "score").exists() or not list((run / "score").glob("shard-*.parquet"))
    # resume on the test cluster: only the missing shards are redone, and the pool is the local one
    assert main(["run", str(config), "--set", "engine=ray"]) == 0
    assert pool_state(run / "pool") == expected
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp") or p.name.startswith("failed-shard")]


def test_failing_shard_is_retried_recorded_and_reported(ray_cluster, tmp_path):
    import pyarrow as pa

    from xpaste.pipeline.engines import failed_path
    from xpaste.pipeline.runner import Stage, run_stage
    from xpaste.pipeline.shards import shard_path

    # defined here so that Ray pickles the class by value (the test module is not importable in workers)
    class Flaky(Stage):
        name = "flaky"

        def schema(self):
            return pa.schema([("x", pa.int64())])

        def fingerprint(self):
            return {"shard_size": self.config["shard_size"]}

        def plan(self):
            return [{"x": i} for i in range(6)]

        def process(self, items):
            # every attempt leaves a file, so the driver can count attempts made in the actors
            marker = self.stage_dir / f"attempt-{items[0]['x']}-{time.monotonic_ns()}"
            marker.touch()
            if self.config["fail"] and any(i["x"] == 3 for i in items):
                raise RuntimeError("broken item 3")
            return [{"x": i["x"] * 10} for i in items], []

    stage = Flaky(tmp_path, {"shard_size": 2, "fail": True, "device": "cpu"})
    with pytest.raises(XPasteError) as info:
        run_stage(stage, engine="ray", progress=False)
    assert "rerun to retry" in str(info.value) and "shard(s) of stage 'flaky'" in str(info.value)
    assert shard_path(stage.stage_dir, 0).exists() and shard_path(stage.stage_dir, 2).exists()
    assert not shard_path(stage.stage_dir, 1).exists()
    record = json.loads(failed_path(stage.stage_dir, 1).read_text())
    assert record["shard"] == 1 and record["attempts"] == 3 and "broken item 3" in record["traceback"]
    assert len(list(stage.stage_dir.glob("attempt-2-*"))) == 3  # shard 1 starts at item 2
    # fixed, a rerun redoes only the failed shard and clears its record
    stage.config["fail"] = False
    report = run_stage(stage, engine="ray", progress=False)
    assert report.shards_resumed == 2 and report.rows == 6
    assert not failed_path(stage.stage_dir, 1).exists()
    assert len(list(stage.stage_dir.glob("attempt-0-*"))) == 1

    # a stage whose models cannot be built fails at once with its own error (Ray Data would otherwise
    # restart the actor forever), and no shard is recorded as failed
    class NoModel(Flaky):
        name = "nomodel"

        def setup(self):
            raise XPasteError("cannot load the model", "/no/such/model", "pass a local folder")

    broken = NoModel(tmp_path, {"shard_size": 2, "fail": False, "device": "cpu"})
    with pytest.raises(XPasteError, match="cannot load the model"):
        run_stage(broken, engine="ray", progress=False)
    assert not list(broken.stage_dir.glob("shard-*")) and not list(broken.stage_dir.glob("failed-*"))


def test_augment_on_ray_equals_local_and_resumes_across_engines(ray_cluster, dataset, tmp_path):  # noqa: F811
    import hashlib

    ann, images = dataset
    pool = tmp_path / "pool"
    assert main(["pool", "import-coco", str(ann), "--images", str(images), "--out", str(pool), "--min-area", "100"]) == 0
    args = ["augment", "--dataset", str(ann), "--images", str(images), "--pool", str(pool), "--copies", "3",
            "--seed", "4", "--max-paste", "6"]

    def digest(folder: Path) -> dict:
        return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "augment_log.json"}

    assert main([*args, "--out", str(tmp_path / "local")]) == 0
    assert main([*args, "--out", str(tmp_path / "ray"), "--engine", "ray"]) == 0
    assert digest(tmp_path / "ray") == digest(tmp_path / "local")
    # half done locally, finished on Ray: still the same bytes
    mixed = tmp_path / "mixed"
    assert main([*args, "--out", str(mixed)]) == 0
    (mixed / "annotations.json").unlink()
    for shard in sorted((mixed / ".xpaste" / "augment").glob("shard-*.parquet"))[::2]:
        shard.unlink()
    assert main([*args, "--out", str(mixed), "--engine", "ray"]) == 0
    assert digest(mixed) == digest(tmp_path / "local")


def test_ray_engine_uses_named_parameters_and_a_shard_that_kills_its_actor_stops(ray_cluster, tmp_path):
    """No RayDeprecationWarning from xpaste's own engine code (Ray 2.5x deprecates map_batches' **ray_remote_args),
    and without max_task_retries the resubmissions of a shard whose process dies every time are still bounded:
    the stage stops in one line naming the shard, the other shards written."""
    import warnings

    import pyarrow as pa
    from ray.util.annotations import RayDeprecationWarning

    from xpaste.pipeline.engines import DEAD_ACTOR_RETRIES, failed_path
    from xpaste.pipeline.runner import Stage, run_stage
    from xpaste.pipeline.shards import shard_path

    class Deadly(Stage):  # defined here: Ray pickles it by value
        name = "deadly"

        def schema(self):
            return pa.schema([("x", pa.int64())])

        def fingerprint(self):
            return {"shard_size": self.config["shard_size"]}

        def plan(self):
            return [{"x": i} for i in range(6)]

        def prepare(self):
            pass

        def process(self, items):
            if self.config["kill"] and any(i["x"] == 3 for i in items):
                (self.stage_dir / f"death-{time.monotonic_ns()}").touch()
                os.kill(os.getpid(), signal.SIGKILL)
            return [{"x": i["x"] * 10} for i in items], []

    stage = Deadly(tmp_path, {"shard_size": 2, "kill": True, "device": "cpu"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(XPasteError) as info:
            run_stage(stage, engine="ray", progress=False)
    assert "shard(s) of stage 'deadly' failed" in str(info.value) and "\n" not in str(info.value)
    record = json.loads(failed_path(stage.stage_dir, 1).read_text())
    assert f"died {DEAD_ACTOR_RETRIES + 1} times" in record["traceback"]
    assert len(list(stage.stage_dir.glob("death-*"))) == DEAD_ACTOR_RETRIES + 1
    assert shard_path(stage.stage_dir, 0).exists() and shard_path(stage.stage_dir, 2).exists()
    ours = [w for w in caught if issubclass(w.category, RayDeprecationWarning) and "xpaste" in str(w.filename)]
    assert not ours, [f"{w.filename}:{w.lineno}: {w.message}" for w in ours]
    # the same warning filter sees Ray's deprecation when it is triggered (the check above can fail)
    with warnings.catch_warnings(record=True) as probe:
        warnings.simplefilter("always")
        import ray

        ray.data.from_items([{"a": 1}]).map_batches(lambda b: b, max_restarts=0)
    assert any(issubclass(w.category, RayDeprecationWarning) for w in probe)
    stage.config["kill"] = False  # fixed: the rerun redoes only that shard
    report = run_stage(stage, engine="ray", progress=False)
    assert report.shards_resumed == 2 and report.rows == 6
