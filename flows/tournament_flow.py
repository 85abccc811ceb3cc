"""The tournament as Prefect flows: a parent flow and two subflows on RayTaskRunner.

    tournament (parent)
      ├─ validate config + data (before anything is computed or written)
      ├─ ray.init once; ray.put(returns) once
      ├─ stage1 subflow: one task per chunk of cells  -> weights cube; ray.put(cube) once
      ├─ stage2 subflow: one task per (rebalance, simulator, strategy chunk)
      └─ outputs: cube, results, returns, manifest, state, leaderboard, report

Every task has an explicit cache key built from named parts (tournament.keys), so a rerun
only recomputes what changed and a killed run resumes from Prefect result storage. Chunks
whose result is already stored run in this process (Prefect records them as Cached; no Ray
round trip, no transfer of the returns or the cube), and Ray is started or attached only when
something must be computed: a warm rerun never touches Ray.
Each stage subflow takes real parameters: the data source (`data`, `data_kind`, `days`), the
config (`config` as `TournamentConfig.to_dict()` gives it, or `config_path` + `overrides`), the
result storage and the run directory, so it can run on its own (e.g. from the UI); Stage 2 on
its own against an existing run directory is `flows.simulate_flow.simulate`
(`tournament simulate RUN_DIR`). Subflow parameters are recorded by the Prefect API, so large
objects (returns matrix, cube, simulations) never travel through them: a caller in this
process registers its `RunContext` in `_RUNS` under the run id it passes (`run_id`), and the
stage uses that context (checked against the config it was given) instead of loading
anything. Without one, the stage builds its own from its parameters. Either way the returns
matrix and the cube go into Ray's object store once (`ray.put`), when a chunk must really be
computed.
"""
from __future__ import annotations

import threading
import time
import uuid
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from prefect import flow, get_run_logger
from prefect.futures import as_completed
from pydantic import Field

from blocks.tournament_blocks import ComputeBlock, DataSourceBlock, TournamentGridBlock
from tournament.config import DataKind, Fidelity, TournamentConfig
from tournament.cube import FAILED, FALLBACK, OK, UNSUPPORTED, WeightsCube
from tournament.data import Dataset, load_dataset, validate_for_config
from tournament.overrides import GridOverrides
from tournament.stage1 import assemble_cube, plan_cells
from tournament.stage2 import (merge_results, ok_strategies, simulate_benchmark,
                               simulation_pairs)
from tournament.windows import Window, make_windows

from .inputs import resolve_inputs, tournament_run_name
from .locking import run_dir_lock
from .rerun import config_from_dict, load_cube
from .plan import DEFAULT_RESULT_STORAGE, Chunk, stage1_plan, stage2_plan, stored_key
from .progress import RunProgress
from .ray_runner import LazyRayTaskRunner
from .runtime import (check_cluster_reachability, check_storage_reaches_all_nodes,
                      default_result_storage, init_ray, make_result_storage, prewarm_workers,
                      quiet_library_logs, storage_url, warmup_refs)

# nautilus backtests are recycled inside the Stage 2 task (tasks/stage2.py: a child process
# per N backtests): Ray's max_calls cannot do it through prefect-ray (a new ray.remote per
# submit, and Ray counts max_calls per function id).
# Threads that replay stored chunks in this process (reading results is I/O bound).
LOCAL_REPLAY_THREADS = 4


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
    ray_address: str | None = None
    num_cpus: int | None = None
    shared_storage: bool = False
    returns_ref: Any = None
    cube: WeightsCube | None = None
    cube_ref: Any = None
    warmups: list = field(default_factory=list)
    timings: dict[str, Any] = field(default_factory=dict)
    cache: dict[str, dict[str, int]] = field(default_factory=dict)
    key_parts: dict[str, dict] = field(default_factory=dict)
    simulations: list = field(default_factory=list)
    race: Any = None              # (tier decisions, manifest record) of a race (--race)

    def ensure_ray(self) -> None:
        """Start or attach to Ray and put the returns matrix into its object store, once,
        the first time a chunk must really be computed."""
        if self.returns_ref is not None:
            return
        import ray
        t0 = time.perf_counter()
        # Something must be computed, so the statistics will be too: import their modules
        # now, in a thread, behind the stages (a fully cached run never pays for them).
        from tournament.outputs import preload_statistics_modules
        threading.Thread(target=preload_statistics_modules, name="preload-statistics",
                         daemon=True).start()
        if init_ray(self.ray_address, num_cpus=self.num_cpus):
            prewarm_workers(self.config.simulators, self.config.engines)
        self.warmups = warmup_refs()
        check_storage_reaches_all_nodes(storage_url(self.storage), shared=self.shared_storage)
        check_cluster_reachability()      # a loopback API URL on a multi-host cluster
        self.returns_ref = ray.put(self.dataset.returns)
        parallel = self.timings.setdefault("parallel", {})   # inside the stage that asked
        parallel["ray_start"] = parallel.get("ray_start", 0.0) + time.perf_counter() - t0

    def mark_first_submit(self) -> None:
        """Wall-clock time of the first task submitted (start-up ends there)."""
        self.timings.setdefault("parallel", {}).setdefault("first_submit_epoch", time.time())

    def ensure_cube_ref(self) -> Any:
        if self.cube_ref is None:
            import ray
            self.ensure_ray()
            self.cube_ref = ray.put(self.cube)
        return self.cube_ref


_RUNS: dict[str, RunContext] = {}
# The context of the stage running in this thread. The stages' task runners start Ray through
# it on their first submit (`ensure_current_ray`, a module function: a runner travels with its
# flow to the workers, and must not hold the context, which holds the data).
_CURRENT: ContextVar[RunContext | None] = ContextVar("tournament_run", default=None)


def ensure_current_ray() -> None:
    ctx = _CURRENT.get()
    if ctx is not None:
        ctx.ensure_ray()


@contextmanager
def current(ctx: RunContext):
    """Make `ctx` the running stage's context (for `ensure_current_ray`)."""
    token = _CURRENT.set(ctx)
    try:
        yield ctx
    finally:
        _CURRENT.reset(token)


def registered(ctx: RunContext) -> bool:
    """Whether a caller in this process registered `ctx` (it then writes the outputs)."""
    return _RUNS.get(ctx.run_id) is ctx


def resolve_config(config: dict[str, Any] | None = None, config_path: str | None = None,
                   overrides: dict[str, Any] | None = None) -> TournamentConfig:
    """A stage's config parameter: the dict form, else a TOML path plus overrides."""
    from tournament.config import load_config
    if config is not None:
        return config_from_dict(config)
    return load_config(config_path, **(overrides or {}))


class _QuietProgress(RunProgress):
    """Progress of a stage run on its own: the bar, but no tournament_state.json (the run
    directory's state belongs to whoever holds its lock)."""

    def write(self) -> None:
        pass


def stage_context(run_id: str | None, *, config: TournamentConfig, data: str,
                  data_kind: str, days: int | None, result_storage: str | None,
                  refresh: bool, ray_address: str | None, num_cpus: int | None,
                  shared_storage: bool) -> RunContext:
    """The context a stage subflow works in: the caller's, registered in `_RUNS` under
    `run_id` (its config must be the one the stage was given), else a new one built from
    the stage's parameters (data loaded and validated, result storage opened)."""
    ctx = _RUNS.get(run_id) if run_id else None
    if ctx is not None:
        if ctx.config.digest() != config.digest():
            raise RuntimeError(f"run {run_id}: the stage's config (digest {config.digest()}) "
                               f"is not the run's ({ctx.config.digest()})")
        return ctx
    dataset = load_dataset(data, days=days, kind=data_kind)
    validate_for_config(dataset, config)
    location = result_storage or default_result_storage(DEFAULT_RESULT_STORAGE)
    run_id = run_id or uuid.uuid4().hex[:12]
    ctx = RunContext(run_id, dataset, config, make_windows(dataset.n_days, config.windows),
                     make_result_storage(location), str(location), refresh,
                     _QuietProgress(Path("."), run_id, {}))
    ctx.ray_address, ctx.num_cpus, ctx.shared_storage = ray_address, num_cpus, shared_storage
    return ctx


def _is_cached(future) -> bool:
    try:
        return future.state.name == "Cached"
    except Exception:
        return False


def stored_chunks(ctx: RunContext, chunks: list[Chunk]) -> set[str]:
    """Keys of the chunks whose result is already in result storage (none with --refresh)."""
    if ctx.refresh or not chunks:
        return set()
    from prefect.results import ResultStore
    store = ResultStore(result_storage=ctx.storage)
    return {c.key for c in chunks if store.exists(stored_key(c.key))}


def run_chunks(task, chunks: list[Chunk], stored: set[str], *, local_args, ray_args,
               on_submit=lambda: None):
    """Yield (chunk, future) as they finish. Stored chunks replay in this process through a
    thread pool (Prefect finds the cache and records Cached); the rest go to Ray through the
    subflow's task runner, which starts Ray on its first submit."""
    from prefect.task_runners import ThreadPoolTaskRunner
    remote = [c for c in chunks if c.key not in stored]
    local = [c for c in chunks if c.key in stored]
    futures = {}
    for chunk in remote:
        futures[task.submit(*ray_args(chunk), **chunk.task_kwargs())] = chunk
        on_submit()
    if local:
        on_submit()
        with ThreadPoolTaskRunner(max_workers=LOCAL_REPLAY_THREADS) as runner:
            replay = {runner.submit(task, parameters=_parameters(task, local_args(c), c)): c
                      for c in local}
            for fut in as_completed(list(replay)):
                yield replay[fut], fut
    for fut in as_completed(list(futures)):
        yield futures[fut], fut


def _parameters(task, args: tuple, chunk: Chunk) -> dict:
    import inspect
    names = list(inspect.signature(task.fn).parameters)
    return {**dict(zip(names, args)), **chunk.task_kwargs()}


# ----------------------------------------------------------------------------- Stage 1
def _stage1(config: dict[str, Any] | None = None, data: str = "sp500",
                data_kind: str = "prices", days: int | None = None,
                run_dir: str | None = None, result_storage: str | None = None,
                refresh: bool = False, config_path: str | None = None,
                overrides: dict[str, Any] | None = None, ray_address: str | None = None,
                num_cpus: int | None = None, shared_storage: bool = False,
                run_id: str | None = None, label: str = "") -> dict:
    """Stage 1: solve every (window, selection, engine, profile) cell into the weights cube.

    Args:
        config: the config as `TournamentConfig.to_dict()` gives it (a manifest's `config`);
            when None, `config_path` and `overrides` are loaded instead.
        data: sp500 | synthetic[:DAYSxASSETS] | PATH (.csv/.parquet).
        data_kind: what a data file holds: prices or returns.
        days: the last N trading days; None = the source's default, 0 = whole history.
        run_dir: run directory; a stage run on its own writes the cube there
            (weights_cube.pkl, weights_cube.parquet, cells.parquet) under the directory's lock.
        result_storage: Prefect result storage (path, fsspec URL or storage block slug).
        refresh: ignore stored results and recompute.
        config_path: TOML config file (when `config` is None).
        overrides: flat config overrides (when `config` is None), e.g. {"engines": ["custom"]}.
        ray_address: existing Ray cluster (a stage run on its own).
        num_cpus: local Ray CPUs (a stage run on its own).
        shared_storage: a local result storage path is shared by every cluster node.
        run_id: the in-process run whose loaded objects the stage uses (set by the parent flow).
        label: shown in the flow run's name.
    """
    from tasks.stage1 import solve_chunk
    cfg = resolve_config(config, config_path, overrides)
    ctx = stage_context(run_id, config=cfg, data=data, data_kind=data_kind, days=days,
                        result_storage=result_storage, refresh=refresh,
                        ray_address=ray_address, num_cpus=num_cpus,
                        shared_storage=shared_storage)
    own = not registered(ctx)             # on its own: nobody else writes the cube
    with current(ctx):
        _solve_cells(ctx, solve_chunk)
    out = {"cells": ctx.cache["stage1"]["cells"], "cache": ctx.cache["stage1"], "cube": None}
    if own and run_dir:
        with run_dir_lock(run_dir):
            ctx.cube.to_pickle(Path(run_dir) / "weights_cube.pkl")
            ctx.cube.to_parquet(run_dir)
        out["cube"] = str(Path(run_dir) / "weights_cube.pkl")
    return out


# The flow functions have names of their own (not the flows'), so cloudpickle ships them by
# reference: Prefect sends the flow run's context, flow object included, with every task,
# and a function pickled by value would carry its globals (`_RUNS`: the data and the cube).
stage1_flow = flow(name="stage1-weights-cube", flow_run_name="stage1 {label}",
                   validate_parameters=False,
                   task_runner=LazyRayTaskRunner(ensure_ray=ensure_current_ray))(_stage1)


def _solve_cells(ctx: RunContext, solve_chunk) -> None:
    cfg, ds = ctx.config, ctx.dataset
    chunks = stage1_plan(cfg, ds, ctx.windows)
    stored = stored_chunks(ctx, chunks)
    task = solve_chunk.with_options(result_storage=ctx.storage, refresh_cache=ctx.refresh)
    for c in chunks:
        ctx.key_parts[c.key] = c.parts

    def on_ray(chunk):
        ctx.ensure_ray()
        return ctx.returns_ref, ctx.windows, chunk.members, cfg

    results, hits, cells_cached = [], 0, 0
    for chunk, fut in run_chunks(task, chunks, stored, ray_args=on_ray,
                                 local_args=lambda c: (ds.returns, ctx.windows, c.members, cfg),
                                 on_submit=ctx.mark_first_submit):
        out = fut.result()
        cached = _is_cached(fut)          # one API read per task
        hits += cached
        chunk_results = out["results"]
        cells_cached += len(chunk_results) if cached else 0
        results.extend(chunk_results)
        ctx.progress.record("stage1",
                            done=sum(r.status == OK for r in chunk_results),
                            failed=sum(r.status == FAILED for r in chunk_results),
                            unsupported=sum(r.status == UNSUPPORTED for r in chunk_results),
                            cached=len(chunk_results) if cached else 0)
    ctx.cache["stage1"] = {"tasks": len(chunks), "cached": hits, "cells": len(results),
                           "cells_cached": cells_cached,
                           "cells_computed": len(results) - cells_cached}
    ctx.cube = assemble_cube(ds, ctx.windows, results, cfg)
    # Cells the on_infeasible policy resolved are fallbacks, not failures: count them done.
    n_fallback = int((ctx.cube.cells["status"] == FALLBACK).sum())
    ctx.progress.stages["stage1"].failed -= n_fallback
    ctx.progress.stages["stage1"].done += n_fallback


# ----------------------------------------------------------------------------- Stage 2
def _stage2(config: dict[str, Any] | None = None, data: str = "sp500",
                data_kind: str = "prices", days: int | None = None,
                run_dir: str | None = None, result_storage: str | None = None,
                pairs: list[list[str]] | None = None, benchmarks: list[str] | None = None,
                race: dict[str, Any] | None = None,
                refresh: bool = False, config_path: str | None = None,
                overrides: dict[str, Any] | None = None, ray_address: str | None = None,
                num_cpus: int | None = None, shared_storage: bool = False,
                run_id: str | None = None, label: str = "") -> dict:
    """Stage 2: simulate the cube's ok strategies for each (rebalance, simulator) pair.

    Args:
        config: the config as `TournamentConfig.to_dict()` gives it (a manifest's `config`);
            when None, `config_path` and `overrides` are loaded instead.
        data: sp500 | synthetic[:DAYSxASSETS] | PATH (.csv/.parquet).
        data_kind: what a data file holds: prices or returns.
        days: the last N trading days; None = the source's default, 0 = whole history.
        run_dir: run directory holding the cube (weights_cube.pkl), read when the stage runs
            on its own (its simulations then go to result storage only; `tournament simulate`
            / the `tournament-simulate` flow also merges them into the run directory).
        result_storage: Prefect result storage (path, fsspec URL or storage block slug).
        pairs: [rebalance, simulator] pairs to simulate; None = every pair of the config.
        benchmarks: rebalance modes to add the benchmark's buy-and-hold for; None = the
            config's rebalance modes.
        race: multi-fidelity racing (tournament.race.RaceSettings as a dict: top_k, cap,
            min_tau, on_disagreement); None = every strategy at every tier. Not with `pairs`.
        refresh: ignore stored results and recompute.
        config_path: TOML config file (when `config` is None).
        overrides: flat config overrides (when `config` is None).
        ray_address: existing Ray cluster (a stage run on its own).
        num_cpus: local Ray CPUs (a stage run on its own).
        shared_storage: a local result storage path is shared by every cluster node.
        run_id: the in-process run whose loaded objects the stage uses (set by the callers).
        label: shown in the flow run's name.
    """
    from tasks.stage2 import simulate_chunk
    cfg = resolve_config(config, config_path, overrides)
    ctx = stage_context(run_id, config=cfg, data=data, data_kind=data_kind, days=days,
                        result_storage=result_storage, refresh=refresh,
                        ray_address=ray_address, num_cpus=num_cpus,
                        shared_storage=shared_storage)
    if ctx.cube is None:
        ctx.cube = load_cube(run_dir, ctx.dataset)
    benchmarks = cfg.rebalances if benchmarks is None else tuple(benchmarks)
    if race is not None:
        from tournament.errors import ConfigError
        from tournament.race import RaceSettings
        if pairs is not None:
            raise ConfigError("stage2: race and pairs exclude each other (a race picks its "
                              "pairs tier by tier)")
        with current(ctx):
            _race(ctx, simulate_chunk, RaceSettings.from_dict(race), benchmarks)
        return {"pairs": [list(p) for p in simulation_pairs(cfg)], "cache": ctx.cache["stage2"],
                "simulations": len(ctx.simulations), "race": ctx.race[1]}
    pairs = simulation_pairs(cfg) if pairs is None else [tuple(p) for p in pairs]
    with current(ctx):
        _simulate(ctx, simulate_chunk, pairs, benchmarks)
    return {"pairs": [list(p) for p in pairs], "cache": ctx.cache["stage2"],
            "simulations": len(ctx.simulations)}


stage2_flow = flow(name="stage2-simulation", flow_run_name="stage2 {label}",
                   validate_parameters=False,
                   task_runner=LazyRayTaskRunner(ensure_ray=ensure_current_ray))(_stage2)


def _simulate(ctx: RunContext, simulate_chunk, pairs: list[tuple[str, str]],
              benchmarks: tuple[str, ...]) -> None:
    ctx.cache.pop("stage2", None)
    sims = _simulate_pairs(ctx, simulate_chunk, pairs)
    _add_benchmarks(ctx, sims, benchmarks)
    ctx.simulations = sims


def _add_benchmarks(ctx: RunContext, sims: list, benchmarks: tuple[str, ...]) -> None:
    for rebalance in benchmarks:
        bench = simulate_benchmark(ctx.dataset, ctx.cube, ctx.config, rebalance)
        if bench is not None:
            sims.append(bench)


def _race(ctx: RunContext, simulate_chunk, settings, benchmarks: tuple[str, ...]) -> None:
    """Multi-fidelity racing (tournament.race decides; this runs each tier's chunks)."""
    from tournament.race import run_race
    from tournament.stage2 import results_frame
    logger = get_run_logger()
    cfg, n_ok = ctx.config, len(ok_strategies(ctx.cube))
    ctx.cache.pop("stage2", None)
    progress = ctx.progress.stages["stage2"]
    progress.total = 0
    seconds: list[float] = []

    def simulate(pairs, strategies):
        progress.total += sum(n_ok if strategies is None else len(strategies.get(r, ()))
                              for r, _ in pairs)
        t0 = time.perf_counter()
        out = _simulate_pairs(ctx, simulate_chunk, pairs, strategies)
        seconds.append(round(time.perf_counter() - t0, 3))
        return out

    sims, decisions, record = run_race(
        simulate, config=cfg, settings=settings, log=logger.info,
        results_of=lambda s: results_frame(s, ctx.cube, ctx.dataset, cfg))
    for tier, secs in zip(record["tiers"], seconds):
        tier["seconds"] = secs
    _add_benchmarks(ctx, sims, benchmarks)
    ctx.simulations = sims
    ctx.race = (decisions, record)


def _simulate_pairs(ctx: RunContext, simulate_chunk, pairs: list[tuple[str, str]],
                    strategies: dict[str, list] | None = None) -> list:
    """Simulate `pairs` for every ok strategy, or for `strategies` ({rebalance: keys}: a
    race's promoted subset). A subset's chunks have the cache keys of their own members
    (stage2_key_parts lists each member's schedule digest), so a subset never reads or
    overwrites a full chunk's stored result unless it holds exactly the same strategies.
    Adds to ctx.cache["stage2"]; returns the simulations merged per pair."""
    cfg, ds, cube = ctx.config, ctx.dataset, ctx.cube
    if strategies is None:
        chunks = stage2_plan(cfg, ds, cube, ok_strategies(cube), pairs)
    else:
        chunks = [c for r in sorted({r for r, _ in pairs})
                  for c in stage2_plan(cfg, ds, cube, sorted(strategies.get(r, [])),
                                       [p for p in pairs if p[0] == r])]
        chunks.sort(key=lambda c: -c.cost)
    stored = stored_chunks(ctx, chunks)
    task = simulate_chunk.with_options(result_storage=ctx.storage, refresh_cache=ctx.refresh)
    for c in chunks:
        ctx.key_parts[c.key] = c.parts

    def on_ray(chunk):
        cube_ref = ctx.ensure_cube_ref()
        return ctx.returns_ref, ds.dates, cube_ref, chunk.members, cfg

    def local(chunk):
        return ds.returns, ds.dates, cube, chunk.members, cfg

    by_pair: dict[tuple[str, str], list] = {}
    hits = sims_cached = n_sims = 0
    for chunk, fut in run_chunks(task, chunks, stored, ray_args=on_ray, local_args=local):
        result = fut.result()["result"]
        # A cached result may come from identical weights under another name: relabel.
        result.keys = list(chunk.members)
        cached = _is_cached(fut)
        hits += cached
        n_sims += len(result.keys)
        sims_cached += len(result.keys) if cached else 0
        by_pair.setdefault((result.rebalance, result.simulator), []).append(result)
        ctx.progress.record("stage2", done=sum(s == OK for s in result.status),
                            failed=sum(s != OK for s in result.status),
                            cached=len(result.keys) if cached else 0)
    total = ctx.cache.setdefault("stage2", {"tasks": 0, "cached": 0, "simulations": 0,
                                            "simulations_cached": 0,
                                            "simulations_computed": 0})
    total["tasks"] += len(chunks)
    total["cached"] += hits
    total["simulations"] += n_sims
    total["simulations_cached"] += sims_cached
    total["simulations_computed"] += n_sims - sims_cached
    # Chunks finish in any order (Ray, or local replay); merge them in a fixed order so the
    # results frame, and the digest that keys the cached statistics, never depend on timing.
    return [merge_results(sorted(parts, key=lambda r: list(r.keys)))
            for _, parts in sorted(by_pair.items())]


# ----------------------------------------------------------------------------- parent flow
@flow(name="tournament", flow_run_name=tournament_run_name, log_prints=True,
      validate_parameters=False)
def tournament(fidelity: Fidelity | None = None, data: str | None = None,
               days: Annotated[int | None, Field(ge=0)] = None,
               data_kind: DataKind | None = None,
               grid: TournamentGridBlock | None = None,
               data_source: DataSourceBlock | None = None,
               compute: ComputeBlock | None = None,
               overrides: GridOverrides | None = None, config_path: str | None = None,
               out: str = "runs/tournament", ray_address: str | None = None,
               result_storage: str | None = None,
               num_cpus: Annotated[int | None, Field(ge=1)] = None, refresh: bool = False,
               shared_storage: bool = False, race: bool = False,
               race_top_k: Annotated[int, Field(ge=1)] = 10,
               race_cap: Annotated[float, Field(gt=0, le=1)] = 0.25,
               race_min_tau: Annotated[float, Field(ge=-1, le=1)] = 0.5,
               race_on_disagreement: Literal["widen", "stop"] = "widen") -> dict:
    """Run the two-stage tournament and write the run directory. Returns a summary dict.

    Precedence, per value: an explicit parameter > the picked block's value > the config
    file > the built-in defaults (flows/inputs.py). Leave a field empty (null) to use the
    block's value.

    Args:
        fidelity: Simulator tier: low = custom; medium = + vectorbt; high = + cvxportfolio +
            nautilus. Empty: the grid block's, else the config file's (default low).
        data: sp500 (bundled, offline), synthetic[:DAYSxASSETS], or a .csv/.parquet path on
            the worker. Empty: the data source block's, else sp500.
        days: Keep the last N trading days; 0 = the whole history. Empty: the data source
            block's, else the source's default length (tournament.data.default_days; a
            file: every row).
        data_kind: What a data file holds. Empty: the data source block's, else prices.
        grid: A saved Tournament Grid block (grid axes, fidelity, windows, costs, caps).
        data_source: A saved Tournament Data Source block (data, days, data kind).
        compute: A saved Tournament Compute block (Ray address, result storage, CPUs).
        overrides: Grid overrides; each field set here wins over the grid block's and the
            config file's. Unset fields keep them.
        config_path: TOML config file relative to the code's directory (e.g.
            configs/default.toml). Empty: the built-in defaults.
        out: Run directory on the worker (results, cube, manifest, report.html).
        ray_address: Ray cluster to use (auto, host:6379, ray://head:10001). Empty: the
            compute block's, else a local Ray started for the run.
        result_storage: Task result storage: a path, an fsspec URL (s3://...) or a storage
            block slug (remote-file-system/NAME). Empty: the compute block's, else
            PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK, else .tournament-cache/results.
        num_cpus: CPUs of a local Ray. Empty: the compute block's, else all.
        refresh: Ignore cached results and recompute everything.
        shared_storage: Declare a local result_storage path as shared by every cluster node
            (an NFS mount).
        race: Multi-fidelity racing: the cheapest tier simulates every strategy, each
            further tier only the strategies promoted out of the one before (README
            "Racing"). The statistics stay on the complete cheapest tier.
        race_top_k: Best-ranked strategies promoted out of each tier (with the confidence
            set).
        race_cap: At most this share of the strategies is promoted.
        race_min_tau: Kendall tau between a tier's and the previous tier's ranking below
            which the tier is not trusted to rank.
        race_on_disagreement: What an untrusted tier does: widen (promote every strategy
            it ran, without ranking) or stop (the run fails with the numbers).
    """
    from tasks.outputs import leaderboard_statistics, report_charts
    from tournament.keys import outputs_key
    from tournament.leaderboard import leaderboard_text
    from tournament.outputs import finalize_run, update_manifest
    from tournament.stage2 import results_frame

    quiet_library_logs()
    logger = get_run_logger()
    t_start = time.perf_counter()
    # 1. Validate everything before any compute or any write (earlier outputs stay intact):
    #    blocks loaded and merged under the explicit parameters, overrides typed.
    inputs = resolve_inputs(
        config_path=config_path, fidelity=fidelity, data=data, data_kind=data_kind, days=days,
        overrides=overrides, grid=grid, data_source=data_source, compute=compute,
        ray_address=ray_address, result_storage=result_storage, num_cpus=num_cpus)
    data, data_kind, days = inputs.data, inputs.data_kind, inputs.days
    ray_address, result_storage = inputs.ray_address, inputs.result_storage
    num_cpus = inputs.num_cpus
    config = inputs.config()
    race_settings = None
    if race:
        from tournament.race import RaceSettings
        race_settings = RaceSettings(top_k=int(race_top_k), cap=float(race_cap),
                                     min_tau=float(race_min_tau),
                                     on_disagreement=race_on_disagreement)
    dataset = load_dataset(data, days=days, kind=data_kind)
    validate_for_config(dataset, config)
    windows = make_windows(dataset.n_days, config.windows)
    out_dir = Path(out)
    lock = run_dir_lock(out_dir)      # one writer per run directory (re-entrant with the CLI's)
    lock.__enter__()
    storage_location = result_storage or default_result_storage(DEFAULT_RESULT_STORAGE)
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
    ctx.ray_address, ctx.num_cpus, ctx.shared_storage = ray_address, num_cpus, shared_storage
    try:
        # 2. Ray is started (or attached) by the first chunk that must really be computed;
        #    the returns matrix then goes into its object store once, the cube likewise.
        runner = LazyRayTaskRunner(ensure_ray=ensure_current_ray, address=ray_address)
        ctx.timings["flow_setup"] = time.perf_counter() - t_start
        logger.info("data %s %dx%d; %d cells", dataset.source, dataset.n_days,
                    dataset.n_assets, n_cells)

        # 3. Stage 1 -> cube.
        t0 = time.perf_counter()
        stage_params = {"config": config.to_dict(), "data": data, "data_kind": data_kind,
                        "days": days, "run_dir": str(out_dir),
                        "result_storage": str(storage_location), "refresh": refresh,
                        "run_id": run_id}     # small: the objects stay in ctx (_RUNS)
        stage1_flow.with_options(task_runner=runner)(
            **stage_params, label=f"{config.fidelity} {n_cells} cells")
        ctx.timings["stage1"] = time.perf_counter() - t0
        n_ok = len(ok_strategies(ctx.cube))
        progress.stages["stage2"].total = n_ok * len(simulation_pairs(config))
        progress.write()

        # 4. Stage 2 -> simulations.
        t0 = time.perf_counter()
        stage2_flow.with_options(task_runner=runner.duplicate())(
            **stage_params, race=race_settings.to_dict() if race_settings else None,
            label=f"{config.fidelity} {n_ok} strategies x {len(simulation_pairs(config))} pairs")
        ctx.timings["stage2"] = time.perf_counter() - t0
        ctx.timings["parallel"] = {**ctx.timings.get("parallel", {}), **warmup_timings(ctx.warmups)}

        # 5. Outputs: statistics and charts are cached tasks keyed by the results' digest.
        t0 = time.perf_counter()
        results, returns = results_frame(ctx.simulations, ctx.cube, dataset, config)
        ctx.timings["results_frame"] = time.perf_counter() - t0
        manifest = {"run_id": run_id, "mode": "two-stage", "config": config.to_dict(),
                    "config_digest": config.digest(), "data": dataset.describe(),
                    "result_storage": str(storage_location), "timings": ctx.timings,
                    "cache": ctx.cache}
        if ctx.race is not None:
            from tournament.race import annotate
            results = annotate(results, ctx.race[0])
            manifest["race"] = ctx.race[1]
        results, status, published = write_outputs(ctx, out_dir, results, returns, manifest)
        n_failed = int((results["status"] == FAILED).sum())
        print(leaderboard_text(results, top=15))
        n_fallback = int((ctx.cube.cells["status"] == FALLBACK).sum())
        return {"run_id": run_id, "status": status, "out": str(out_dir),
                "failed": n_failed, "fallback_windows": n_fallback, "timings": ctx.timings,
                "cache": ctx.cache, "flow_run_id": _flow_run_id(),
                "race": ctx.race[1] if ctx.race is not None else None,
                "report": published.get("report")}
    except BaseException:
        progress.finish("failed")
        raise
    finally:
        _RUNS.pop(run_id, None)
        lock.__exit__(None, None, None)


def write_outputs(ctx: RunContext, out_dir: Path, results, returns, manifest: dict, *,
                  ledger_rows=None, ledger_detail: dict | None = None):
    """The outputs step, shared by the parent flow and `simulate`: leaderboard statistics
    and report charts as cached tasks keyed by the frames' digest (the charts drawn in a
    thread while the statistics run), `finalize_run` (a new sealed ledger segment, the run
    files, cache-key parts), the final state, report.html and the Prefect artifacts.
    `ledger_rows`/`ledger_detail`: see finalize_run. Returns (results with the statistics
    columns, status, what publish_artifacts returned)."""
    from tasks.artifacts import publish_artifacts
    from tasks.outputs import leaderboard_statistics, report_charts
    from tournament.keys import outputs_key
    from tournament.outputs import finalize_run, update_manifest
    config, storage, refresh = ctx.config, ctx.storage, ctx.refresh
    # The charts need only the metrics, so they are drawn in a thread while the
    # statistics run (numpy/scipy release the GIL for much of the latter).
    charts_future = report_charts.with_options(
        result_storage=storage, refresh_cache=refresh).submit(
        results, returns, cache_key=outputs_key("charts", results, returns))
    t0 = time.perf_counter()
    stats_task = leaderboard_statistics.with_options(result_storage=storage,
                                                     refresh_cache=refresh)
    statistics = stats_task(results, returns, periods=config.annualization,
                            cache_key=outputs_key("statistics", results, returns,
                                                  extra=config.annualization))
    ctx.timings["statistics"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    results = finalize_run(out_dir, cube=ctx.cube, results=results, returns=returns,
                           manifest=manifest, key_parts=ctx.key_parts,
                           periods=config.annualization, statistics=statistics,
                           ledger_rows=ledger_rows, ledger_detail=ledger_detail)
    ctx.timings["write_outputs"] = time.perf_counter() - t0
    n_failed = int((results["status"] == FAILED).sum())
    status = "completed" if n_failed == 0 else "completed_with_failures"
    ctx.progress.finish(status)
    t0 = time.perf_counter()
    charts = charts_future.result()            # the part not hidden behind the statistics
    ctx.timings["report_charts"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    published = publish_artifacts(str(out_dir), charts=charts)   # report.html + artifacts
    ctx.timings["report_and_artifacts"] = time.perf_counter() - t0
    update_manifest(out_dir, timings=ctx.timings)
    return results, status, published


def warmup_timings(refs: list) -> dict[str, float]:
    """Worker warm-up and numba-load seconds reported by the prewarm tasks that finished
    (they overlap other work, so they are reported apart from the sequential phases)."""
    if not refs:
        return {}
    import ray
    done, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
    reports = [r for r in ray.get(done) if isinstance(r, dict)]
    if not reports:
        return {}
    return {"worker_warmup": max(r["imports"] for r in reports),
            "numba_load": max(r["numba"] for r in reports)}


def _flow_run_id() -> str | None:
    from prefect.context import FlowRunContext
    ctx = FlowRunContext.get()
    return str(ctx.flow_run.id) if ctx and ctx.flow_run else None
