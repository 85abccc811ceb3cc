"""The tournament as Prefect flows: a parent flow and two subflows on RayTaskRunner.

    tournament (parent)
      ├─ validate config + data (before anything is computed or written)
      ├─ ray.init once; ray.put(returns) once
      ├─ stage1 subflow: one task per chunk of cells  -> weights cube; ray.put(cube) once
      ├─ stage2 subflow: one task per (rebalance, simulator, strategy chunk)
      └─ outputs: cube, results, returns, manifest, state, leaderboard, report

Every task has an explicit cache key built from named parts (tournament.keys), so a rerun
only recomputes what changed and a killed run resumes from Prefect result storage.
Subflow parameters are recorded by the Prefect API, so large objects stay in this process's
run registry (`_RUNS`) and subflows receive only the run id.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.futures import as_completed
from prefect_ray.context import remote_options

from tournament.config import TournamentConfig, load_config
from tournament.cube import FAILED, OK, UNSUPPORTED, WeightsCube
from tournament.data import Dataset, load_dataset, validate_for_config
from tournament.keys import cache_key, stage1_key_parts, stage2_key_parts
from tournament.stage1 import assemble_cube, plan_cells
from tournament.stage2 import (merge_results, ok_strategies, simulate_benchmark,
                               simulation_pairs)
from tournament.windows import Window, make_windows

from .locking import run_dir_lock
from .progress import RunProgress
from .runtime import (check_storage_reaches_all_nodes, init_ray, make_result_storage,
                      prewarm_workers, quiet_library_logs)

DEFAULT_RESULT_STORAGE = ".tournament-cache/results"

# Strategies per Stage 2 task by simulator: batched simulators take a whole selection group;
# per-strategy simulators (~1 s per backtest) get small chunks to balance the workers.
STAGE2_CHUNK = {"custom": None, "vectorbt": None, "cvxportfolio": 4, "nautilus": 2}
# nautilus grows ~3-27 MB per backtest even after dispose(): recycle its worker processes.
STAGE2_MAX_CALLS = {"nautilus": 2}
# Rough relative cost per strategy, to submit the slowest chunks first (shorter tail).
STAGE2_COST = {"custom": 0.01, "vectorbt": 0.2, "cvxportfolio": 1.0, "nautilus": 2.0}


@dataclass
class RunContext:
    run_id: str
    dataset: Dataset
    config: TournamentConfig
    windows: list[Window]
    storage: Any
    storage_location: str
    refresh: bool
    progress: RunProgress
    returns_ref: Any = None
    cube: WeightsCube | None = None
    cube_ref: Any = None
    timings: dict[str, float] = field(default_factory=dict)
    cache: dict[str, dict[str, int]] = field(default_factory=dict)
    key_parts: dict[str, dict] = field(default_factory=dict)
    simulations: list = field(default_factory=list)


_RUNS: dict[str, RunContext] = {}


def _is_cached(future) -> bool:
    try:
        return future.state.name == "Cached"
    except Exception:
        return False


# ----------------------------------------------------------------------------- Stage 1
# Stage 1 chunking: a task costs ~0.1-0.2 s of Prefect/Ray overhead even when Cached, so a
# chunk should hold about TARGET_CHUNK_SECONDS of solving. Measured mean cost per supported
# cell over the engine mix: ~3 ms at 20 assets, ~20 ms at 100, ~45 ms at 200 (one core).
# (A 2 s target with a 4x pessimistic cost model made 276 tasks at 200 assets: the warm rerun
# then spent 23 s on Cached task bookkeeping.)
TARGET_CHUNK_SECONDS = 4.0
MAX_WINDOW_BLOCKS = 8


def estimated_cell_seconds(n_assets: int) -> float:
    return 3e-3 * max(n_assets / 20.0, 1.0) ** 1.2


def stage1_chunks(cells, *, n_assets: int) -> list[tuple[str, list]]:
    """Chunk cells so each task holds ~TARGET_CHUNK_SECONDS of work.

    Small problems: one chunk per (selection, engine). Large ones: one per (selection,
    engine, profile), split into fixed blocks of consecutive windows. A chunk's membership
    depends only on its own cells' identity and the data shape, so changing one selection
    mode leaves every other chunk (and its cache key) unchanged.
    """
    per_cell = estimated_cell_seconds(n_assets)
    groups: dict[tuple, list] = {}
    for c in cells:
        groups.setdefault((c.selection, c.engine), []).append(c)
    out = []
    for (sel, eng), group in sorted(groups.items()):
        if len(group) * per_cell <= TARGET_CHUNK_SECONDS:
            out.append((f"{sel}/{eng}", group))
            continue
        n_windows = max(c.window for c in group) + 1
        # ~TARGET seconds per chunk, but at most MAX_WINDOW_BLOCKS blocks per strategy so the
        # task count stays in the hundreds (Prefect slows down past ~2k tasks per run).
        block = max(1, int(TARGET_CHUNK_SECONDS / per_cell), -(-n_windows // MAX_WINDOW_BLOCKS))
        by_profile: dict[str, list] = {}
        for c in group:
            by_profile.setdefault(c.profile, []).append(c)
        for prof, cs in sorted(by_profile.items()):
            blocks: dict[int, list] = {}
            for c in sorted(cs, key=lambda c: c.window):     # block = window index // size
                blocks.setdefault(c.window // block, []).append(c)
            for piece in blocks.values():
                out.append((f"{sel}/{eng}/{prof}/w{piece[0].window}-{piece[-1].window}", piece))
    return out


@flow(name="stage1-weights-cube", flow_run_name="stage1 {label}", validate_parameters=False)
def stage1_flow(run_id: str, label: str = "") -> str:
    from tasks.stage1 import solve_chunk
    ctx = _RUNS[run_id]
    cfg, ds = ctx.config, ctx.dataset
    cells = plan_cells(cfg, ctx.windows)
    dates = [str(ds.dates[w.rebalance].date()) for w in ctx.windows]
    task = solve_chunk.with_options(result_storage=ctx.storage, refresh_cache=ctx.refresh)
    futures = []
    for name, chunk in stage1_chunks(cells, n_assets=ds.n_assets):
        parts = stage1_key_parts(chunk, data_fingerprint=ds.fingerprint, config=cfg,
                                 window_dates=dates)
        key = cache_key(parts)
        ctx.key_parts[key] = parts
        futures.append(task.submit(ctx.returns_ref, ctx.windows, chunk, cfg, chunk_name=name,
                                   cache_key=key, key_parts=parts))
    results, hits = [], 0
    for fut in as_completed(futures):
        out = fut.result()
        cached = _is_cached(fut)          # one API read per task
        hits += cached
        chunk_results = out["results"]
        results.extend(chunk_results)
        ctx.progress.record("stage1",
                            done=sum(r.status == OK for r in chunk_results),
                            failed=sum(r.status == FAILED for r in chunk_results),
                            unsupported=sum(r.status == UNSUPPORTED for r in chunk_results),
                            cached=len(chunk_results) if cached else 0)
    ctx.cache["stage1"] = {"tasks": len(futures), "cached": hits}
    ctx.cube = assemble_cube(ds, ctx.windows, results)
    return f"{len(results)} cells"


# ----------------------------------------------------------------------------- Stage 2
def stage2_chunks(keys, simulator: str) -> list[tuple[str, list]]:
    """Group strategies by selection, then fixed-size pieces for per-strategy simulators."""
    size = STAGE2_CHUNK.get(simulator)
    groups: dict[str, list] = {}
    for k in sorted(keys):
        groups.setdefault(k[0], []).append(k)
    out = []
    for sel, group in sorted(groups.items()):
        step = size or len(group)
        for i in range(0, len(group), step):
            out.append((f"{sel}#{i // step}", group[i:i + step]))
    return out


@flow(name="stage2-simulation", flow_run_name="stage2 {label}", validate_parameters=False)
def stage2_flow(run_id: str, label: str = "") -> str:
    from tasks.stage2 import simulate_chunk
    ctx = _RUNS[run_id]
    cfg, ds, cube = ctx.config, ctx.dataset, ctx.cube
    keys = ok_strategies(cube)
    task = simulate_chunk.with_options(result_storage=ctx.storage, refresh_cache=ctx.refresh)
    digests = {k: cube.schedule_digest(k) for k in keys}
    jobs = []
    for rebalance, simulator in simulation_pairs(cfg):
        for name, chunk in stage2_chunks(keys, simulator):
            cost = STAGE2_COST.get(simulator, 1.0) * len(chunk) * (3 if rebalance == "daily" else 1)
            jobs.append((cost, rebalance, simulator, name, chunk))
    jobs.sort(key=lambda j: -j[0])
    futures = {}
    for _, rebalance, simulator, name, chunk in jobs:
        parts = stage2_key_parts([digests[k] for k in chunk], rebalance=rebalance,
                                 simulator=simulator, data_fingerprint=ds.fingerprint, config=cfg)
        key = cache_key(parts)
        ctx.key_parts[key] = parts
        options = {"max_calls": STAGE2_MAX_CALLS[simulator]} if simulator in STAGE2_MAX_CALLS else {}
        with remote_options(**options):
            fut = task.submit(ctx.returns_ref, ds.dates, ctx.cube_ref, chunk, cfg,
                              rebalance=rebalance, simulator=simulator,
                              chunk_name=f"{rebalance}/{simulator}/{name}", cache_key=key,
                              key_parts=parts)
        futures[fut] = chunk
    by_pair: dict[tuple[str, str], list] = {}
    hits = 0
    for fut in as_completed(list(futures)):
        result = fut.result()["result"]
        # A cached result may come from identical weights under another name: relabel.
        result.keys = list(futures[fut])
        cached = _is_cached(fut)
        hits += cached
        by_pair.setdefault((result.rebalance, result.simulator), []).append(result)
        ctx.progress.record("stage2", done=sum(s == OK for s in result.status),
                            failed=sum(s != OK for s in result.status),
                            cached=len(result.keys) if cached else 0)
    ctx.cache["stage2"] = {"tasks": len(futures), "cached": hits}
    sims = [merge_results(parts) for _, parts in sorted(by_pair.items())]
    for rebalance in cfg.rebalances:
        bench = simulate_benchmark(ds, cube, cfg, rebalance)
        if bench is not None:
            sims.append(bench)
    ctx.simulations = sims
    return f"{len(futures)} tasks"


# ----------------------------------------------------------------------------- parent flow
@flow(name="tournament", flow_run_name="tournament {fidelity} {data}", log_prints=True,
      validate_parameters=False)
def tournament(config_path: str | None = None, fidelity: str | None = None,
               data: str | None = None, data_kind: str | None = None, days: int | None = None,
               out: str = "runs/tournament", ray_address: str | None = None,
               refresh: bool = False, result_storage: str | None = None,
               overrides: dict[str, Any] | None = None, num_cpus: int | None = None,
               shared_storage: bool = False, grid_block: str | None = None,
               data_block: str | None = None, compute_block: str | None = None) -> dict:
    """Run the two-stage tournament and write the run directory. Returns a summary dict.

    Saved Prefect blocks (grid / data source / compute) may supply any parameter; an explicit
    parameter always wins over a block. `days=0` means the whole history.
    """
    from tournament.outputs import finalize_run, leaderboard
    from tournament.stage2 import results_frame
    import ray

    quiet_library_logs()
    logger = get_run_logger()
    t_start = time.perf_counter()
    if grid_block or data_block or compute_block:
        from blocks.tournament_blocks import resolve_blocks
        b = resolve_blocks(grid_block, data_block, compute_block)
        fidelity = fidelity or b.get("fidelity")
        overrides = {**b.get("overrides", {}), **(overrides or {})}
        data, data_kind = data or b.get("data"), data_kind or b.get("data_kind")
        days = days if days is not None else b.get("days")
        ray_address = ray_address or b.get("ray_address")
        result_storage = result_storage or b.get("result_storage")
        num_cpus = num_cpus or b.get("num_cpus")
    data, data_kind = data or "sp500", data_kind or "prices"
    days = 500 if days is None else (days or None)
    # 1. Validate everything before any compute or any write (earlier outputs stay intact).
    config = load_config(config_path, fidelity=fidelity, **(overrides or {}))
    dataset = load_dataset(data, days=days, kind=data_kind)
    validate_for_config(dataset, config)
    windows = make_windows(dataset.n_days, config.windows)
    out_dir = Path(out)
    lock = run_dir_lock(out_dir)      # one writer per run directory (re-entrant with the CLI's)
    lock.__enter__()
    storage_location = result_storage or DEFAULT_RESULT_STORAGE
    run_id = uuid.uuid4().hex[:12]
    progress = RunProgress(out_dir, run_id, {
        "config_digest": config.digest(), "data_fingerprint": dataset.fingerprint,
        "result_storage": str(storage_location), "out_dir": str(out_dir.resolve())})
    try:
        storage = make_result_storage(storage_location)
    except BaseException:
        lock.__exit__(None, None, None)
        raise
    ctx = RunContext(run_id, dataset, config, windows, storage, str(storage_location), refresh,
                     progress)
    n_cells = len(plan_cells(config, windows))
    progress.stages["stage1"].total = n_cells
    progress.start()
    _RUNS[run_id] = ctx
    try:
        # 2. Ray once; the returns matrix into the object store once.
        t0 = time.perf_counter()
        if init_ray(ray_address, num_cpus=num_cpus):
            prewarm_workers(config.simulators, config.engines)
        check_storage_reaches_all_nodes(str(storage_location), shared=shared_storage)
        ctx.returns_ref = ray.put(dataset.returns)
        ctx.timings["ray_start"] = time.perf_counter() - t0
        logger.info("Ray ready (%s) in %.1fs; data %s %dx%d",
                    ray_address or "local", ctx.timings["ray_start"], dataset.source,
                    dataset.n_days, dataset.n_assets)
        from prefect_ray import RayTaskRunner
        runner = RayTaskRunner(address=ray_address) if ray_address else RayTaskRunner()

        # 3. Stage 1 -> cube (into the object store once).
        t0 = time.perf_counter()
        stage1_flow.with_options(task_runner=runner)(run_id, label=f"{config.fidelity} {n_cells} cells")
        ctx.timings["stage1"] = time.perf_counter() - t0
        ctx.cube_ref = ray.put(ctx.cube)
        n_ok = len(ok_strategies(ctx.cube))
        progress.stages["stage2"].total = n_ok * len(simulation_pairs(config))
        progress.write()

        # 4. Stage 2 -> simulations.
        t0 = time.perf_counter()
        stage2_flow.with_options(task_runner=runner)(
            run_id, label=f"{config.fidelity} {n_ok} strategies x {len(simulation_pairs(config))} pairs")
        ctx.timings["stage2"] = time.perf_counter() - t0

        # 5. Outputs.
        t0 = time.perf_counter()
        results, returns = results_frame(ctx.simulations, ctx.cube, dataset, config)
        ctx.timings["outputs"] = time.perf_counter() - t0
        ctx.timings["total"] = time.perf_counter() - t_start
        manifest = {"run_id": run_id, "mode": "two-stage", "config": config.to_dict(),
                    "config_digest": config.digest(), "data": dataset.describe(),
                    "result_storage": str(storage_location), "timings": ctx.timings,
                    "cache": ctx.cache}
        results = finalize_run(out_dir, cube=ctx.cube, results=results, returns=returns,
                               manifest=manifest, key_parts=ctx.key_parts,
                               periods=config.annualization)
        n_failed = int((results["status"] == FAILED).sum())
        status = "completed" if n_failed == 0 else "completed_with_failures"
        progress.finish(status)
        from tasks.artifacts import publish_artifacts
        publish_artifacts(str(out_dir))       # report.html + leaderboard table + markdown report
        board = leaderboard(results, top=15)
        print(board.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
        return {"run_id": run_id, "status": status, "out": str(out_dir),
                "failed": n_failed, "timings": ctx.timings, "cache": ctx.cache}
    except BaseException:
        progress.finish("failed")
        raise
    finally:
        _RUNS.pop(run_id, None)
        lock.__exit__(None, None, None)
