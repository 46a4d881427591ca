"""The Ray engine: a stage's unfinished shards as a Ray Data pipeline of model actors.

One row per shard index flows through `map_batches(ShardWorker, ActorPoolStrategy)`; each actor builds the
stage's models once (`stage.prepare()` in its constructor: models are never pickled, `Stage.__getstate__`
drops them), processes whole shards with `stage.process` and writes them with `write_shard` itself, so the
files are exactly those of the local engine and a run can switch engines and resume. Only a small status
row travels back to the driver. Because a shard file's existence is the done marker, a killed driver
resumes from the shards on disk; a shard that keeps failing is retried in the actor, then recorded in
`<stage>/failed-shard-XXXXXX.json` and reported at the end, never dropped silently.

Environment variables (read by the driver; the CLI has no flags for them):
- XPASTE_RAY_NUM_CPUS, XPASTE_RAY_NUM_GPUS, XPASTE_RAY_OBJECT_STORE (bytes, or with a K/M/G suffix),
  XPASTE_RAY_TEMP_DIR: resources of the local instance started when no address is given.
- XPASTE_RAY_ACTORS, XPASTE_RAY_GPUS_PER_ACTOR (fractional: several actors share a GPU),
  XPASTE_RAY_CPUS_PER_ACTOR: override the actor pool; arguments of `run_on_ray` win over them.
"""
from __future__ import annotations

import logging
import os
import time
import traceback
from pathlib import Path

from xpaste.errors import XPasteError, missing_extra

log = logging.getLogger("xpaste.ray")


def failed_path(stage_dir: Path, index: int) -> Path:
    return Path(stage_dir) / f"failed-shard-{index:06d}.json"


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


def connect(ray_address: str | None = None):
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
        ray.init(address="local", num_cpus=_env_number("XPASTE_RAY_NUM_CPUS", int),
                 num_gpus=_env_number("XPASTE_RAY_NUM_GPUS", int),
                 object_store_memory=_env_number("XPASTE_RAY_OBJECT_STORE", int),
                 _temp_dir=os.environ.get("XPASTE_RAY_TEMP_DIR") or None, **quiet)
    return ray


class ShardWorker:
    """A Ray Data actor: builds the stage's models once, then processes and writes whole shards."""

    def __init__(self, stage, shards, max_retries: int = 2):
        import ray

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
        stage.prepare()

    def _process(self, k: int) -> tuple[str, str]:
        from xpaste.io import write_json_atomic
        from xpaste.pipeline.shards import write_shard

        stage, items = self.stage, self.shards[k]
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
        out = {"shard": [], "status": [], "items": [], "seconds": [], "error": []}
        for k in batch["shard"]:
            k = int(k)
            start = time.perf_counter()
            status, error = self._process(k)
            out["shard"].append(k)
            out["status"].append(status)
            out["items"].append(len(self.shards[k]))
            out["seconds"].append(time.perf_counter() - start)
            out["error"].append(error)
        return out


def _is_model_stage(stage) -> bool:
    return bool(getattr(stage, "_model_attrs", ()))


def _user_error(exc: BaseException) -> XPasteError | None:
    """An XPasteError raised inside an actor (e.g. a model that cannot be loaded), unwrapped from Ray's
    exception wrappers so the CLI prints it as one line, as with the local engine."""
    seen = set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, XPasteError):
            return XPasteError(getattr(e, "message", str(e)), getattr(e, "path", None), getattr(e, "hint", None))
        todo += [getattr(e, "cause", None), e.__cause__, e.__context__]
    return None


def run_on_ray(stage, shards: list[list[dict]], todo: list[int], ray_address: str | None = None,
               progress=True, actors: int | None = None, gpus_per_actor: float | None = None,
               max_retries: int = 2) -> dict:
    """Process shards `todo` of `stage` on Ray; returns {'done': [...], 'failed': [...]} or raises an
    XPasteError naming the shards that failed after `max_retries` retries (their tracebacks are in
    `<stage>/failed-shard-*.json`; the other shards are written, so a rerun redoes only the failed ones)."""
    from tqdm import tqdm

    total = sum(len(s) for s in shards)
    initial = total - sum(len(shards[k]) for k in todo)
    if not todo:
        return {"done": [], "failed": []}
    ray = connect(ray_address)
    from ray.data import ActorPoolStrategy, DataContext

    resources = ray.cluster_resources()
    if gpus_per_actor is None:
        gpus_per_actor = _env_number("XPASTE_RAY_GPUS_PER_ACTOR")
    if gpus_per_actor is None:
        wants_gpu = _is_model_stage(stage) and str(stage.config.get("device") or "cuda").startswith("cuda")
        gpus_per_actor = 1.0 if wants_gpu and resources.get("GPU", 0) >= 1 else 0.0
    cpus_per_actor = _env_number("XPASTE_RAY_CPUS_PER_ACTOR") or 1.0
    if actors is None:
        actors = _env_number("XPASTE_RAY_ACTORS", int)
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
    shards_ref = ray.put({k: shards[k] for k in todo})
    dataset = ray.data.from_items([{"shard": k} for k in todo], override_num_blocks=len(todo))
    results = dataset.map_batches(
        ShardWorker, fn_constructor_kwargs={"stage": stage, "shards": shards_ref, "max_retries": max_retries},
        # one shard in flight per actor: shards are long, so queueing more only unbalances the tail
        compute=ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=1),
        batch_size=1, num_cpus=cpus_per_actor, num_gpus=gpus_per_actor, runtime_env={"env_vars": env})
    done, failed = [], []
    with tqdm(total=total, initial=initial, desc=f"{stage.name} (ray, {actors} actors)", unit="item",
              disable=not progress) as bar:
        try:
            for row in results.iter_rows():
                (done if row["status"] == "done" else failed).append(int(row["shard"]))
                if row["status"] != "done":
                    log.error("%s shard %d failed: %s", stage.name, int(row["shard"]), row["error"])
                bar.update(int(row["items"]))
        except Exception as e:
            user = _user_error(e)
            if user is not None:
                raise user from None
            raise
    if failed:
        failed.sort()
        names = ", ".join(str(k) for k in failed[:20]) + (" ..." if len(failed) > 20 else "")
        raise XPasteError(f"{len(failed)} shard(s) of stage '{stage.name}' failed after {1 + max_retries} "
                          f"attempts: {names}", failed_path(stage.stage_dir, failed[0]),
                          "see the tracebacks in failed-shard-*.json; the other shards are written: "
                          "rerun to retry them")
    return {"done": sorted(done), "failed": []}
