"""Stage 2 task: simulate one chunk of strategies for one (rebalance, simulator) pair.

Simulators that keep memory per backtest (nautilus: ~3-27 MB per BacktestEngine even after
dispose(), ~170 MB in some versions) run each backtest in a child process that is replaced
after N backtests (`RECYCLE_AFTER`, env TOURNAMENT_<SIM>_BACKTESTS_PER_PROCESS). The child is
a one-process `ProcessPoolExecutor(max_tasks_per_child=N)` (spawn) kept by the Ray worker that
runs this task, so recycling is exact whatever the number of Ray workers. (Ray's own
`max_calls` cannot do it here: prefect-ray wraps the task in a new `ray.remote` per submit,
and Ray counts `max_calls` per function id.) The Ray worker holds its one CPU while its child
computes, so Ray's CPU accounting stays exact. Like every "spawn" child, it imports the
calling process's main module as `__mp_main__`: Ray workers, the CLI and pytest guard theirs;
a script that runs the task function directly needs `if __name__ == "__main__":`.
"""
from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pandas as pd
from prefect import task

from tournament.config import TournamentConfig
from tournament.cube import WeightsCube
from tournament.simulators.base import Market, SimulationResult, failed_result
from tournament.simulators.resume import PathEnd
from tournament.stage2 import (merge_results, path_end_key, simulate_pair,
                               simulate_pair_continuing, simulator_instance, split_result)

from .common import injected_delay, locked_policy, log_execution
from .unit_store import UnitStore

# Backtests per child process, by simulator (the others run in the task's own process).
RECYCLE_AFTER = {"nautilus": 8}
_POOLS: dict[tuple[str, int], object] = {}


def backtests_per_process(simulator: str) -> int | None:
    """N for a recycled simulator (env TOURNAMENT_NAUTILUS_BACKTESTS_PER_PROCESS wins), else
    None (in-process)."""
    env = os.environ.get(f"TOURNAMENT_{simulator.upper()}_BACKTESTS_PER_PROCESS", "").strip()
    if env:
        n = int(env)
        if n < 1:
            raise ValueError(f"TOURNAMENT_{simulator.upper()}_BACKTESTS_PER_PROCESS must be >= 1")
        return n
    return RECYCLE_AFTER.get(simulator)


@task(cache_policy=locked_policy(), persist_result=True, retries=2, retry_delay_seconds=1,
      task_run_name="stage2 {chunk_name}")
def simulate_chunk(returns: np.ndarray, dates: pd.DatetimeIndex, cube: WeightsCube,
                   keys: list[tuple[str, str, str]], config: TournamentConfig, *,
                   rebalance: str, simulator: str, chunk_name: str, cache_key: str,
                   key_parts: dict, unit_keys: list[str]) -> dict:
    """The chunk's simulations, in `keys` order: each found under its own key (`unit_keys`)
    or simulated and stored (a path that a simulator can continue continues from its stored
    end when that is still valid: `continued`). Returns them merged, with how many ran, how
    many of those were continued and how many were reused."""
    injected_delay()
    units = UnitStore.of_running_task()
    found = {s: units.read(key) for s, key in enumerate(unit_keys)}
    missing = [s for s in range(len(keys)) if found[s] is None]
    workers: list[dict] = []
    continued = 0
    if missing:
        todo = [keys[s] for s in missing]
        per_process = backtests_per_process(simulator)
        if per_process:
            result, workers = simulate_recycled(returns, dates, cube, todo, rebalance=rebalance,
                                                simulator=simulator, config=config,
                                                per_process=per_process)
        elif simulator_instance(simulator).continues_paths():
            # Each path continues from the end the last run stored for it, when what that
            # end read is unchanged (a nightly run: only the new days are simulated).
            end_keys = [path_end_key(k, rebalance=rebalance, simulator=simulator, cube=cube,
                                     config=config)
                        for k in todo]
            previous = [_path_end(units.read(k)) for k in end_keys]
            result, ends, continued = simulate_pair_continuing(
                returns, dates, cube, todo, rebalance=rebalance, simulator=simulator,
                config=config, previous=previous)
            for key, end in zip(end_keys, ends):
                if end is not None:
                    units.write(key, end)
        else:
            result = simulate_pair(returns, dates, cube, todo, rebalance=rebalance,
                                   simulator=simulator, config=config)
        for s, one in zip(missing, split_result(result)):
            found[s] = one
            units.write(unit_keys[s], one)
    if missing:                           # a real execution, not a replay of stored units
        log_execution("stage2", cache_key, len(missing))
    result = merge_results([found[s] for s in range(len(keys))]) if keys else \
        simulate_pair(returns, dates, cube, keys, rebalance=rebalance, simulator=simulator,
                      config=config)
    result.keys = list(keys)          # a stored unit may come from identical weights
    return {"result": result, "computed": len(missing), "reused": len(keys) - len(missing),
            "continued": continued, "key_parts": key_parts, "workers": workers}


def _path_end(stored) -> PathEnd | None:
    return stored if isinstance(stored, PathEnd) else None


# ----------------------------------------------------------------------------- recycling
def _pool(simulator: str, per_process: int):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    key = (simulator, per_process)
    if key not in _POOLS:
        _POOLS[key] = ProcessPoolExecutor(max_workers=1, max_tasks_per_child=per_process,
                                          mp_context=multiprocessing.get_context("spawn"))
    return _POOLS[key]


def _drop_pool(simulator: str, per_process: int) -> None:
    pool = _POOLS.pop((simulator, per_process), None)
    if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)


def _backtest_in_child(simulator: str, market: Market, orders):
    """One strategy's backtest, in the recycled child. Returns (result, memory record)."""
    import psutil

    from tournament.simulators.base import run_simulator
    from tournament.stage2 import simulator_instance
    result = run_simulator(simulator_instance(simulator), market, orders)
    mb = 1024 * 1024
    return result, {"pid": os.getpid(), "rss_mb": psutil.Process().memory_info().rss / mb,
                    "peak_mb": _peak_rss_mb()}


def _peak_rss_mb() -> float:
    """This process's peak RSS since exec (VmHWM). Not ru_maxrss: on Linux that keeps the
    forked parent's size from before exec, so a spawn child would report its parent's RSS."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def simulate_recycled(returns: np.ndarray, dates: pd.DatetimeIndex, cube: WeightsCube,
                      keys: list[tuple[str, str, str]], *, rebalance: str, simulator: str,
                      config: TournamentConfig, per_process: int
                      ) -> tuple[SimulationResult, list[dict]]:
    """`simulate_pair`, one backtest per call in a child process replaced every
    `per_process` backtests. Returns the result and one memory record per backtest
    ({pid, rss_mb, peak_mb} of the child right after it)."""
    from concurrent.futures.process import BrokenProcessPool

    from tournament.simulators.orders import build_orders
    if not keys:
        return simulate_pair(returns, dates, cube, keys, rebalance=rebalance,
                             simulator=simulator, config=config), []
    orders = build_orders(cube, keys, dates=dates, returns=returns, rebalance=rebalance,
                          cost_rate=config.costs.rate, tolerance=config.tolerance)
    market = Market(returns, dates, cube.assets)
    parts, workers = [], []
    for s in range(len(keys)):
        one = replace(orders, keys=[orders.keys[s]], targets=orders.targets[s:s + 1],
                      trade=orders.trade[s:s + 1])
        try:
            part, info = _pool(simulator, per_process).submit(
                _backtest_in_child, simulator, market, one).result()
        except BrokenProcessPool as exc:     # the child died (OOM, segfault): this one fails
            _drop_pool(simulator, per_process)
            part = failed_result(simulator, one, market.horizon_dates(one),
                                 f"{simulator}: backtest process died ({exc})")
            info = {}
        parts.append(part)
        workers.append(info)
    return merge_results(parts), workers
