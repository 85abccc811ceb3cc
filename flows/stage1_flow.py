"""Stage 1 as a Prefect subflow: one task per chunk of cells -> the weights cube.

Runnable on its own (from the UI, or `stage1_flow(config=..., data=..., run_dir=...)`): it
then writes the cube into its run directory. The `tournament` flow runs it with the run's
progress and a `cube_file` for Stage 2, and takes the cube from its return value.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from tournament.schema import FAILED, FALLBACK, OK, UNSUPPORTED
from tournament.stage1 import assemble_cube
from tournament.schema import CUBE_PICKLE

from .locking import run_dir_lock
from .plan import stage1_plan
from .ray_runner import LazyRayTaskRunner
from .stage_run import (current, ensure_current_ray, is_cached, preload_statistics_if_wanted,
                        run_chunks, split_stored,
                        stage_counts, stage_docstring, stage_run_for,
                        StageRun, stored_chunks)


@stage_docstring(
    'Stage 1: solve every (window, selection, engine, profile) cell into the weights cube.',
    returns=(
        'Returns {"cells", "cache", "cube_file", "cube" (the WeightsCube), "key_parts",\n'
        '"progress" (every stage\'s counts), "parallel" (overlapped timings), "warmups"}.'
    ),
    run_dir=('run directory; without `cube_dir` the stage writes the cube there '
             "(weights_cube.pkl, weights_cube.parquet, cells.parquet) under the directory's "
             'lock.'),
    cube_dir=("write only the cube's pickle (weights_cube.pkl), into this directory under the "
              "run directory (the parent flow's hand-over to Stage 2; the run directory's "
              "outputs are the parent's to write, at the end)."),
)
def _stage1(config: dict[str, Any] | None = None, data: str = "sp500",
            data_kind: str = "prices", days: int | None = None,
            run_dir: str | None = None, result_storage: str | None = None,
            refresh: bool = False, config_path: str | None = None,
            overrides: dict[str, Any] | None = None, compute: dict[str, Any] | None = None,
            cube_dir: str | None = None, progress: dict[str, Any] | None = None,
            label: str = "") -> dict:
    stage = stage_run_for(locals())
    with current(stage):
        cache = _solve_cells(stage)
    preload_statistics_if_wanted()
    written = None
    if run_dir:
        with run_dir_lock(run_dir):
            if cube_dir:
                Path(cube_dir).mkdir(parents=True, exist_ok=True)
            else:
                stage.cube.to_parquet(run_dir)
            written = Path(cube_dir or run_dir) / CUBE_PICKLE
            stage.cube.to_pickle(written)
    return {"cells": cache["cells"], "cache": cache,
            "cube_file": str(written) if written else None, "cube": stage.cube,
            "key_parts": stage.key_parts, "progress": stage_counts(stage.progress),
            "parallel": stage.parallel, "warmups": stage.warmups}



# The flow function has a name of its own (not the flow's), so cloudpickle ships it by
# reference: Prefect sends the flow run's context, flow object included, with every task,
# and a function pickled by value would carry its module's globals. Its return value holds
# the cube: never persisted (the parent takes it in process; on its own it is in run_dir).
stage1_flow = flow(name="stage1-weights-cube", flow_run_name="stage1 {label}",
                   validate_parameters=False, persist_result=False,
                   task_runner=LazyRayTaskRunner(ensure_ray=ensure_current_ray))(_stage1)


def _solve_cells(stage: StageRun) -> dict[str, int]:
    """Solve every chunk into `stage.cube`; returns the cache counts, in cells: `computed`
    (solved now), `cached` (a stored result reused: a Cached chunk's, or a stored cell's
    inside a chunk that ran) and `unsupported` (never solved), beside the task counts."""
    from tasks.stage1 import solve_chunk
    cfg, ds, windows = stage.config, stage.dataset, stage.windows
    chunks, cell_parts = stage1_plan(cfg, ds, windows)
    chunks = split_stored(stage, chunks)
    stored = stored_chunks(stage, chunks)
    task = solve_chunk.with_options(result_storage=stage.storage, refresh_cache=stage.refresh)
    stage.key_parts.update(cell_parts)      # cache_keys.json explains cells, not chunks

    def on_ray(chunk):
        stage.ensure_ray()
        return stage.returns_ref, windows, chunk.members, cfg, ds.assets

    progress = stage.progress
    results, hits, computed, cached = [], 0, 0, 0
    for chunk, fut in run_chunks(task, chunks, stored, ray_args=on_ray,
                                 local_args=lambda c: (ds.returns, windows, c.members, cfg,
                                                       ds.assets),
                                 on_submit=stage.mark_first_submit):
        out = fut.result()
        chunk_cached = is_cached(fut)          # one API read per task
        hits += chunk_cached
        chunk_results = [stored_cell.placed(cell, ds.assets)
                         for cell, stored_cell in zip(chunk.members, out["cells"])]
        n_supported = sum(k is not None for k in chunk.unit_keys)
        computed += 0 if chunk_cached else out["computed"]
        cached += n_supported if chunk_cached else out["reused"]
        results.extend(chunk_results)
        progress.record("stage1",
                        done=sum(r.status == OK for r in chunk_results),
                        failed=sum(r.status == FAILED for r in chunk_results),
                        unsupported=sum(r.status == UNSUPPORTED for r in chunk_results),
                        cached=len(chunk_results) if chunk_cached else out["reused"])
    stage.cube = assemble_cube(ds, windows, results, cfg)
    # Cells the on_infeasible policy resolved are fallbacks, not failures: count them done.
    n_fallback = int((stage.cube.cells["status"] == FALLBACK).sum())
    progress.stages["stage1"].failed -= n_fallback
    progress.stages["stage1"].done += n_fallback
    unsupported = sum(k is None for c in chunks for k in c.unit_keys)
    return {"tasks": len(chunks), "tasks_cached": hits, "cells": len(results),
            "computed": computed, "cached": cached, UNSUPPORTED: unsupported}
