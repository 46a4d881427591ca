"""The engines of `runner.run_stage`, peers with one signature:

    engine(stage, plan, todo, *, workers, ray_address, options, progress, resumed)

`plan` is the stage's `ShardPlan`, `todo` an iterator of the indices of its unfinished shards, `options` the
config's `ray:` section (or None), `resumed()` the number of items of shards already done (for the progress
bar). `select_engine(engine, workers)` picks one: `run_in_process` (engine 'local', 1 worker),
`run_on_processes` (engine 'local', more workers) or `run_on_ray` (engine 'ray'). Each writes every shard with
`write_shard`, so the files are the same whichever ran them, and a run can switch engines and resume.

`run_in_process`: shards one after the other in this process, the stage prepared before the first.

`run_on_processes`: shards on forked worker processes (concurrent.futures.ProcessPoolExecutor). The stage,
its loaded inputs included, is inherited copy-on-write, never pickled; a worker that dies (SIGKILL, OOM
killer, a crash in a native library) breaks the pool, which is restarted and its lost shards redone, up to
`DEAD_WORKER_RESTARTS` times, then the run stops in one line (never hangs, as multiprocessing.Pool does).
Workers ignore SIGINT: on Ctrl-C the driver terminates them and re-raises KeyboardInterrupt; any other
error of a shard (disk full, ...) stops the pool and is re-raised on the driver. Temp files a stopped
worker leaves are hidden and removed by the next run; finished shards are kept, so a rerun resumes.

The Ray engine: a stage's unfinished shards as a Ray Data pipeline of model actors.

One row per shard index flows through `map_batches(ShardWorker, ActorPoolStrategy)`; each actor builds the
stage's models once (`stage.prepare()` in its constructor: models are never pickled, `Stage.__getstate__`
drops them), processes whole shards with `stage.process` and writes them with `write_shard` itself, so the
files are exactly those of the local engine and a run can switch engines and resume. Only a small status
row travels back to the driver. Because a shard file's existence is the done marker, a killed driver
resumes from the shards on disk; a shard that keeps failing is retried in the actor, then recorded in
`<stage>/failed-shard-XXXXXX.json` and reported at the end, never dropped silently.

Settings come from the config's `ray:` section (`--set ray.actors=4`), else from these environment variables:
- XPASTE_RAY_NUM_CPUS, XPASTE_RAY_NUM_GPUS, XPASTE_RAY_OBJECT_STORE (bytes, or with a K/M/G suffix),
  XPASTE_RAY_TEMP_DIR: resources of the local instance started when no address is given.
- XPASTE_RAY_ACTORS, XPASTE_RAY_GPUS_PER_ACTOR (fractional: several actors share a GPU),
  XPASTE_RAY_CPUS_PER_ACTOR: override the actor pool; arguments of `run_on_ray` win over them.
"""
from __future__ import annotations

import copy
import itertools
import json
import logging
import os
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from xpaste.errors import XPasteError, missing_extra
from xpaste.io import write_bytes_atomic, write_json_atomic
from xpaste.pipeline.shards import clean_temp_files, write_shard

log = logging.getLogger("xpaste.ray")
#: Where a job runs: "local" (this process, or `workers` forked processes) or "ray" (Ray actors). One home:
#: the config schema, `augment` and `run_stage` take their choices from here.
ENGINES = ("local", "ray")
DEAD_WORKER_RESTARTS = 2  # pool restarts after a worker process died, before the run stops
DEAD_ACTOR_RETRIES = 3  # resubmissions of a shard whose actor process died (not exceptions: see max_retries)


def failed_path(stage_dir: Path, index: int) -> Path:
    return Path(stage_dir) / f"failed-shard-{index:06d}.json"


STARTS_DIR = ".ray-starts"  # <stage>/.ray-starts/shard-K: how many actors started shard K in this run


def _count_start(stage_dir: Path, k: int) -> int:
    """Record that an actor starts shard k; returns how many did in this run, this one included. A count
    above 1 means the earlier actors died in the middle of it (an exception ends the shard normally)."""
    path = Path(stage_dir) / STARTS_DIR / f"shard-{k:06d}"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        count = int(path.read_text() or 0) + 1
    except (OSError, ValueError):
        count = 1

    write_bytes_atomic(path, str(count).encode(), durable=False)
    return count


def _clear_starts(stage_dir: Path) -> None:
    import shutil

    shutil.rmtree(Path(stage_dir) / STARTS_DIR, ignore_errors=True)


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401 - the extra is ray[data]
    except ImportError as e:
        raise missing_extra("ray", "ray") from e
    return ray


def _env_number(name: str, cast=float):
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(raw[-1].upper(), 1)
    try:
        value = float(raw[:-1] if scale > 1 else raw) * scale
    except ValueError:
        raise XPasteError(f"environment variable {name} must be a number, got {raw!r}") from None
    return cast(value)


def _setting(options: dict | None, key: str, env: str, cast=float):
    """A Ray setting: the config's `ray.<key>` when set, else the environment variable, else None."""
    value = (options or {}).get(key)
    if value is not None:
        return cast(value)
    return _env_number(env, cast)


def connect(ray_address: str | None = None, options: dict | None = None):
    """Use an initialised Ray as is; else connect to `ray_address` (or $RAY_ADDRESS, as under `ray job
    submit`); else start a new local instance. A started Ray stays up for the rest of the process (the
    next stage of `xpaste run` reuses it; Ray shuts it down at exit)."""
    ray = _import_ray()
    if ray.is_initialized():
        return ray
    address = ray_address or os.environ.get("RAY_ADDRESS") or None
    quiet = {"include_dashboard": False, "logging_level": logging.WARNING}
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        # "local": a fresh instance even if another one runs on this machine (resources are ours to set)
        ray.init(address="local", num_cpus=_setting(options, "num_cpus", "XPASTE_RAY_NUM_CPUS", int),
                 num_gpus=_setting(options, "num_gpus", "XPASTE_RAY_NUM_GPUS", int),
                 object_store_memory=_setting(options, "object_store_memory", "XPASTE_RAY_OBJECT_STORE", int),
                 _temp_dir=os.environ.get("XPASTE_RAY_TEMP_DIR") or None, **quiet)
    return ray


class ShardWorker:
    """A Ray Data actor: builds the stage's models once, then processes and writes whole shards."""

    def __init__(self, stage, shards, max_retries: int = 2, cwd: str | None = None):
        import ray

        if cwd and os.path.isdir(cwd):
            # relative paths in the config (model folders, rembg files) mean the driver's directory; on a
            # cluster that needs a shared filesystem mounted at the same path (docs/ray.md)
            os.chdir(cwd)

        # The driver passes the shard lists once through the object store (a ref nested in the
        # constructor kwargs is not resolved by Ray Data, hence the explicit get).
        self.shards = ray.get(shards) if isinstance(shards, ray.ObjectRef) else shards
        self.stage = stage
        self.max_retries = int(max_retries)
        device = stage.config.get("device")
        if ray.get_gpu_ids():
            # Ray narrows CUDA_VISIBLE_DEVICES to this actor's GPU(s): "cuda:3" would not exist here.
            if device is None or str(device).startswith("cuda"):
                stage.config["device"] = "cuda"
        elif device is None:
            # no GPU reserved for this actor: do not grab one that belongs to another actor
            stage.config["device"] = "cpu"
        # A constructor that raises makes Ray Data restart the actor forever: keep the error and answer
        # every shard with it instead, so the driver can stop and raise it as the local engine would.
        self.setup_error: str | None = None
        try:
            stage.prepare()
        except Exception as e:  # noqa: BLE001 - re-raised on the driver
            log.error("%s: model set-up failed: %r", stage.name, e)
            self.setup_error = _error_payload(e)

    def _process(self, k: int) -> tuple[str, str]:
        stage, items = self.stage, self.shards[k]
        # Ray resubmits the shard of a dead actor (max_task_retries, -1 by default, is no named parameter of
        # map_batches any more): the number of starts bounds it, so a shard that kills its process every
        # time stops the stage in one line instead of hanging it
        starts = _count_start(stage.stage_dir, k)
        if starts > 1 + DEAD_ACTOR_RETRIES:
            why = f"its worker process died {starts - 1} times (out of memory?)"
            write_json_atomic(failed_path(stage.stage_dir, k),
                              {"stage": stage.name, "shard": k, "attempts": starts - 1, "host": os.uname().nodename,
                               "items": [str(i.get("candidate_id", i)) for i in items][:50], "traceback": why,
                               "earlier": []}, indent=1)
            return "failed", why
        errors = []
        for attempt in range(1 + self.max_retries):
            try:
                rows, skipped = stage.process(items)
                write_shard(stage.stage_dir, k, rows, stage.schema(), skipped)
                failed_path(stage.stage_dir, k).unlink(missing_ok=True)  # an earlier run's failure is fixed
                return "done", ""
            except Exception as e:  # noqa: BLE001 - any failure of one shard is retried, then recorded
                errors.append(traceback.format_exc())
                log.warning("%s shard %d failed (attempt %d of %d): %r", stage.name, k, attempt + 1,
                            1 + self.max_retries, e)
        write_json_atomic(failed_path(stage.stage_dir, k),
                          {"stage": stage.name, "shard": k, "attempts": len(errors), "host": os.uname().nodename,
                           "items": [str(i.get("candidate_id", i)) for i in items][:50],
                           "traceback": errors[-1], "earlier": errors[:-1]}, indent=1)
        return "failed", errors[-1].strip().splitlines()[-1]

    def __call__(self, batch: dict) -> dict:
        out = {"shard": [], "status": [], "items": [], "seconds": [], "error": [], "exception": []}
        for k in batch["shard"]:
            k = int(k)
            start = time.perf_counter()
            if self.setup_error is not None:
                out["exception"].append(self.setup_error)
                status, error = "setup-failed", ""
            else:
                out["exception"].append("")
                status, error = self._process(k)
            out["shard"].append(k)
            out["status"].append(status)
            out["items"].append(len(self.shards[k]))
            out["seconds"].append(time.perf_counter() - start)
            out["error"].append(error)
        return out


def _error_payload(exc: Exception) -> str:
    """A set-up error as json text for the driver (no pickling: only text crosses back)."""
    payload = {"type": type(exc).__name__, "message": str(exc),
               "traceback": "".join(traceback.format_exception(exc)).strip()}
    if isinstance(exc, XPasteError):
        payload.update(message=exc.message, path=exc.path, hint=exc.hint, xpaste=True)
    return json.dumps(payload)


def _raise_payload(text: str, stage_name: str) -> None:
    """Re-raise an actor's set-up error on the driver, as the local engine would have raised it."""
    payload = json.loads(text)
    if payload.get("xpaste"):
        raise XPasteError(payload["message"], payload.get("path"), payload.get("hint"))
    if payload["type"] in ("ImportError", "ModuleNotFoundError"):
        raise ImportError(payload["message"])
    raise RuntimeError(f"stage '{stage_name}' could not set up its models in a Ray actor: "
                       f"{payload['type']}: {payload['message']}\n{payload['traceback']}")


# ----------------------------------------------------------------------------- worker processes
_WORKER: dict = {}  # the stage and plan of this worker process (set by the initializer, after the fork)


def _die_with_parent(parent: int) -> None:
    """Linux: SIGKILL this worker when the driver dies (a SIGKILLed driver would otherwise leave workers
    running, holding the output folder's lock, inherited with the fork)."""
    import signal

    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the driver died before the call above
        os._exit(1)


def _init_process(stage, plan, parent: int) -> None:
    import signal

    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle: it stops us
    _WORKER.update(stage=stage, plan=plan, error=None)
    try:
        stage.prepare()
    except XPasteError as e:
        # A user-fixable fault (a model that cannot load): raised by this worker's first shard, so the driver
        # stops with its one line instead of taking it for a dead worker and restarting the pool.
        _WORKER["error"] = e


def _process_shard(k: int) -> tuple[int, int]:
    if _WORKER.get("error") is not None:
        raise _WORKER["error"]
    stage, items = _WORKER["stage"], _WORKER["plan"][k]
    rows, skipped = stage.process(items)
    write_shard(stage.stage_dir, k, rows, stage.schema(), skipped)
    return k, len(items)


def _stop(executor) -> None:
    """Stop a pool now: cancel queued shards, terminate running workers (their temp files are hidden) and
    wait for them to exit. (`shutdown` drops its references to the processes: take them first.)"""
    processes = list((getattr(executor, "_processes", None) or {}).values())
    manager = getattr(executor, "_executor_manager_thread", None)
    for proc in processes:
        if proc.is_alive():
            proc.terminate()
    executor.shutdown(wait=False, cancel_futures=True)
    for proc in processes:
        proc.join(timeout=10)
    if manager is not None:
        manager.join(timeout=10)


def select_engine(engine: str, workers: int = 1) -> Callable[..., Any]:
    """The engine function for `engine` ('local' or 'ray', see `ENGINES`) and `workers` (local only)."""
    if engine not in ENGINES:
        raise XPasteError(f"engine must be one of {', '.join(map(repr, ENGINES))}, got {engine!r}")
    return run_on_ray if engine == "ray" else run_on_processes if int(workers) > 1 else run_in_process


def run_in_process(stage, plan, todo, *, workers: int = 1, ray_address: str | None = None,
                   options: dict | None = None, progress: bool = True, resumed=lambda: 0) -> None:
    """Process the shards yielded by `todo` one after the other in this process (`stage.prepare()` before the
    first); `workers`, `ray_address` and `options` are the other engines' and unused here. Exceptions of a
    shard (OSError, KeyboardInterrupt, ...) pass through; the shards written before it are kept."""
    from tqdm import tqdm


    pending = iter(todo)
    first = next(pending, None)
    if first is not None:
        # Models load before the bar is drawn: one that cannot load fails in one line, with no bar above it.
        stage.prepare()
    with tqdm(total=len(plan.items), desc=stage.name, unit="item", disable=not progress) as bar:
        counted = 0  # counted: the resumed items the bar shows
        for k in itertools.chain([first], pending) if first is not None else ():
            bar.update(resumed() - counted)  # shards `todo` skipped as done count too
            counted = resumed()
            items = plan[k]
            rows, skipped = stage.process(items)
            write_shard(stage.stage_dir, k, rows, stage.schema(), skipped)
            bar.update(len(items))
        bar.update(resumed() - counted)


def run_on_processes(stage, plan, todo, *, workers: int, ray_address: str | None = None,
                     options: dict | None = None, progress: bool = True, resumed=lambda: 0) -> None:
    """Process the shards yielded by `todo` (an iterator of shard indices of `plan`) on `workers` forked
    processes, at most 2 per worker in flight (the plan is never listed); `resumed()` counts the items of
    shards `todo` skipped as already done (for the progress bar). Raises XPasteError when workers
    keep dying, re-raises a shard's exception (OSError, ...) and KeyboardInterrupt after stopping the pool."""
    import gc
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    from tqdm import tqdm

    ctx = mp.get_context("fork")
    gc.collect()
    gc.freeze()  # the inputs loaded so far stay shared: the workers' garbage collector never writes to them
    todo = iter(todo)
    retry: list[int] = []  # shards lost with a dead worker, redone first
    restarts, window = 0, 2 * workers
    bar = tqdm(total=len(plan.items), desc=f"{stage.name} ({workers} workers)", unit="item", disable=not progress)
    done_items = 0

    def next_shard():
        return retry.pop(0) if retry else next(todo, None)

    try:
        while True:
            executor = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_process,
                                           initargs=(stage, plan, os.getpid()))
            running: dict = {}
            try:
                while True:
                    while len(running) < window:
                        k = next_shard()
                        if k is None:
                            break
                        running[executor.submit(_process_shard, k)] = k
                    bar.update(resumed() + done_items - bar.n)  # shards `todo` skipped as done count too
                    if not running:
                        return
                    finished, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in finished:
                        _, n = future.result()  # a shard's error is raised here, on the driver
                        del running[future]
                        done_items += n
            except BrokenProcessPool:
                lost = sorted(k for f, k in running.items()
                              if not (f.done() and not f.cancelled() and f.exception() is None))
                _stop(executor)
                restarts += 1
                if restarts > DEAD_WORKER_RESTARTS:
                    raise XPasteError(f"a worker process of stage '{stage.name}' died {restarts} times (killed by "
                                      f"the system, e.g. out of memory?); shards {lost[:10]} are not done",
                                      stage.output_root,
                                      "finished work is kept: rerun to resume, with fewer --workers if memory "
                                      "is short") from None
                log.warning("%s: a worker process died; restarting the pool and redoing shards %s",
                            stage.name, lost)

                clean_temp_files(stage.stage_dir, *stage.temp_folders())  # the dead pool's unfinished writes
                retry = lost + retry
                continue
            except BaseException:
                _stop(executor)
                raise
            finally:
                executor.shutdown(wait=True, cancel_futures=True)
    except XPasteError:
        bar.leave = False  # the error's one line replaces the bar (e.g. a model that cannot load in a worker)
        raise
    finally:
        gc.unfreeze()
        bar.close()


def _is_model_stage(stage) -> bool:
    return bool(getattr(stage, "_model_attrs", ()))


def run_on_ray(stage, plan, todo, *, workers: int = 1, ray_address: str | None = None,
               options: dict | None = None, progress: bool = True, resumed=lambda: 0, actors: int | None = None,
               gpus_per_actor: float | None = None, max_retries: int = 2) -> dict:
    """Process shards `todo` of `stage` (its ShardPlan `plan`) on Ray actors (`workers` is the local
    engines'; the actor count comes from `actors`, `options` or the environment, see the module); returns
    {'done': [...], 'failed': [], timings} or raises an
    XPasteError naming the shards that failed after `max_retries` retries (their tracebacks are in
    `<stage>/failed-shard-*.json`; the other shards are written, so a rerun redoes only the failed ones)."""
    from tqdm import tqdm

    todo = list(todo)
    total = len(plan.items) if hasattr(plan, "items") and not isinstance(plan, dict) else sum(
        len(s) for s in plan)
    initial = total - sum(len(plan[k]) for k in todo)
    if not todo:
        return {"done": [], "failed": [], "actors": 0, "wall_s": 0.0, "startup_s": 0.0, "first_shard_s": 0.0,
                "shard_s": 0.0}
    ray = connect(ray_address, options)
    from ray.data import ActorPoolStrategy, DataContext

    resources = ray.cluster_resources()
    if gpus_per_actor is None:
        gpus_per_actor = _setting(options, "gpus_per_actor", "XPASTE_RAY_GPUS_PER_ACTOR")
    if gpus_per_actor is None:
        wants_gpu = _is_model_stage(stage) and str(stage.config.get("device") or "cuda").startswith("cuda")
        gpus_per_actor = 1.0 if wants_gpu and resources.get("GPU", 0) >= 1 else 0.0
    cpus_per_actor = _setting(options, "cpus_per_actor", "XPASTE_RAY_CPUS_PER_ACTOR") or 1.0
    if actors is None:
        actors = _setting(options, "actors", "XPASTE_RAY_ACTORS", int)
    if actors is None:
        # one actor per GPU (or per GPU fraction); without GPUs one per `cpus_per_actor` CPUs
        actors = (int(resources.get("GPU", 0) / gpus_per_actor) if gpus_per_actor
                  else int(resources.get("CPU", 1) / cpus_per_actor))
    actors = max(1, min(int(actors), len(todo)))
    # Thread counts change float results (determinism.py): actors use the driver's OMP_NUM_THREADS, else
    # their CPU share, and MKL's reproducible code path, like the local engine.
    env = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS") or str(max(1, int(cpus_per_actor))),
           "MKL_CBWR": os.environ.get("MKL_CBWR", "COMPATIBLE")}
    context = DataContext.get_current()
    context.enable_progress_bars = False  # our own bar counts items, as the local engine's does
    # Ray Data's per-execution INFO lines (and its notice that its bars are off) would interleave with the
    # bar; they are still written to the Ray session's logs/ray-data folder
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    # a lazy ShardPlan travels as itself (small); a list of shards as the unfinished ones only
    shards_ref = ray.put(plan if hasattr(plan, "size") else {k: plan[k] for k in todo})
    shipped = copy.copy(stage)  # a model-less copy (Stage.__getstate__) whose run folder is absolute
    shipped.run_dir = Path(stage.run_dir).resolve()
    _clear_starts(stage.stage_dir)  # start counts are per run
    dataset = ray.data.from_items([{"shard": k} for k in todo], override_num_blocks=len(todo))
    results = dataset.map_batches(
        ShardWorker, fn_constructor_kwargs={"stage": shipped, "shards": shards_ref, "max_retries": max_retries,
                                           "cwd": os.getcwd()},
        # one shard in flight per actor: shards are long, so queueing more only unbalances the tail
        compute=ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=1),
        # only named parameters (Ray >= 2.5x deprecates **ray_remote_args). A dead actor (node lost, OOM kill) is
        # restarted and its shard resubmitted (Ray Data's defaults), but not forever: ShardWorker counts the
        # starts of each shard (`_count_start`) and fails one whose actor died DEAD_ACTOR_RETRIES + 1 times
        batch_size=1, num_cpus=cpus_per_actor, num_gpus=gpus_per_actor, runtime_env={"env_vars": env})
    done, failed, busy, first, first_work = [], [], 0.0, None, 0.0
    start = time.perf_counter()
    with tqdm(total=total, initial=initial, desc=f"{stage.name} (ray, {actors} actors)", unit="item",
              disable=not progress) as bar:
        try:
            for row in results.iter_rows():
                if row["status"] == "setup-failed":  # e.g. a model that cannot be loaded: as the local engine
                    _raise_payload(row["exception"], stage.name)
                (done if row["status"] == "done" else failed).append(int(row["shard"]))
                busy += float(row["seconds"])
                if first is None:  # pool start-up and model building: time to the first shard minus its work
                    first_work = float(row["seconds"])
                    first = time.perf_counter() - start - first_work
                if row["status"] != "done":
                    log.error("%s shard %d failed: %s", stage.name, int(row["shard"]), row["error"])
                bar.update(int(row["items"]))
        except ray.exceptions.RayError as e:  # Ray itself gave up (actor died too often, node lost, ...)
            line = (str(e).strip().splitlines() or [type(e).__name__])[-1]
            raise XPasteError(f"the Ray pipeline of stage '{stage.name}' stopped: {line}", stage.stage_dir,
                              "finished shards are kept: rerun to resume (details in the Ray logs)") from e
    _clear_starts(stage.stage_dir)  # nothing of the engine's own bookkeeping stays among the outputs
    if failed:
        failed.sort()
        names = ", ".join(str(k) for k in failed[:20]) + (" ..." if len(failed) > 20 else "")
        raise XPasteError(f"{len(failed)} shard(s) of stage '{stage.name}' failed after {1 + max_retries} "
                          f"attempts: {names}", failed_path(stage.stage_dir, failed[0]),
                          "see the tracebacks in failed-shard-*.json; the other shards are written: "
                          "rerun to retry them")
    # timings for benchmarks/ray_overhead.py: in-actor shard seconds vs wall time shows the engine's cost
    return {"done": sorted(done), "failed": [], "actors": actors, "wall_s": time.perf_counter() - start,
            "startup_s": first or 0.0, "first_shard_s": first_work, "shard_s": busy}
