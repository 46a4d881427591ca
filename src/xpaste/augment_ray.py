"""`xpaste augment --engine ray`: the augment tasks spread over Ray actors (for very large datasets).

Each actor opens the dataset and the pool once (`augment._init_worker`) and runs the same task function as
the local engine, which writes the same image and part files; the driver then assembles the json exactly
as it does locally. So the output is byte-identical to a local run, and either engine resumes the other's.
"""
from __future__ import annotations

import os
from typing import Iterator

ACTOR_BATCH = 8  # tasks per Ray Data batch: small, so progress is smooth and a lost actor redoes little


class AugmentActor:
    def __init__(self, init_args: tuple, cwd: str):
        from xpaste.augment import _init_worker

        os.chdir(cwd)  # Ray workers do not start in the driver's folder
        _init_worker(*init_args)

    def __call__(self, batch: dict) -> dict:
        from xpaste.augment import _run_task

        out: dict[str, list] = {"status": [], "file": [], "why": []}
        for index, copy in zip(batch["image_index"], batch["copy"]):
            result = _run_task((int(index), int(copy)))
            out["status"].append(result["status"])
            out["file"].append(str(result.get("file", "")))
            out["why"].append(str(result.get("why", "")))
        return out


def run_tasks_on_ray(tasks: list[tuple[int, int]], init_args: tuple, ray_address: str | None = None,
                     options: dict | None = None) -> Iterator[dict]:
    """Yield one status dict per task (in completion order), as the local engine's task function returns."""
    import logging

    from xpaste.pipeline.engines import _setting, connect

    if not tasks:
        return
    ray = connect(ray_address, options)
    from ray.data import ActorPoolStrategy, DataContext

    cpus = ray.cluster_resources().get("CPU", 1)
    actors = _setting(options, "actors", "XPASTE_RAY_ACTORS", int) or max(1, int(cpus))
    actors = max(1, min(actors, (len(tasks) + ACTOR_BATCH - 1) // ACTOR_BATCH))
    DataContext.get_current().enable_progress_bars = False  # the caller's bar counts images
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    items = [{"image_index": i, "copy": c} for i, c in tasks]
    results = ray.data.from_items(items).map_batches(
        AugmentActor, fn_constructor_kwargs={"init_args": init_args, "cwd": os.getcwd()},
        compute=ActorPoolStrategy(size=actors), batch_size=ACTOR_BATCH, num_cpus=1,
        runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    for row in results.iter_rows():
        yield {"status": row["status"], "file": row["file"], "why": row["why"]}
