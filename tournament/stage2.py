"""Stage 2: simulate the cube's strategies for each (rebalance mode, simulator) pair.

Pure functions. The orchestration layer calls `simulate_pair` per (pair, strategy chunk) on
workers; `results_frame` turns the simulations into the leaderboard rows and daily returns.
Strategies that are not `ok` in the cube are never simulated: they appear in the results with
the cube's status and reason, under every pair. Every row carries `fallback_windows`, the
number of the strategy's windows resolved by the `on_infeasible` policy (0 for the benchmark),
and `sharpe_0bps`, the Sharpe ratio of the same strategy, rebalance mode and trades at zero
costs (custom kernel), from which the leaderboard's `friction_decay` is measured.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .config import TournamentConfig
from .cube import WeightsCube
from .schema import BENCHMARK_KEY, FAILED, OK, RESULT_KEYS, STRATEGY_KEYS  # noqa: F401 (re-exported)
from .data import Dataset
from .faults import active_faults
from .metrics import SCALAR_METRICS, compute_metrics, sharpe_ratio
from .registry import get_simulator
from .simulators.base import (BatchSimulator, Market, Orders, SimulationResult, clean_returns,
                              failed_result, run_simulator)
from .simulators.resume import PathEnd, prefix_digest, returns_digest, stack_states, state_row
from .simulators.custom import simulate_paths
from .simulators.orders import build_orders, horizon_rows, orders_from_schedule


# Simulator instances per process (nautilus/cvxportfolio keep imports warm), keyed by name
# and the fault rules in force (tests only) so an instance never outlives its rules.
_SIMULATORS: dict[tuple[str, str], object] = {}


def simulator_instance(name: str):
    key = (name, active_faults())
    if key not in _SIMULATORS:
        _SIMULATORS[key] = get_simulator(name)
    return _SIMULATORS[key]


def simulation_pairs(config: TournamentConfig) -> list[tuple[str, str]]:
    return [(r, s) for r in config.rebalances for s in config.simulators]


def ok_strategies(cube: WeightsCube) -> list[tuple[str, str, str]]:
    st = cube.strategies()
    return [tuple(x) for x in st.loc[st["status"] == OK, STRATEGY_KEYS].itertuples(index=False)]


def simulate_pair(returns: np.ndarray, dates: pd.DatetimeIndex, cube: WeightsCube,
                  keys: list[tuple[str, str, str]], *, rebalance: str, simulator: str,
                  config: TournamentConfig) -> SimulationResult:
    """Simulate `keys` (a chunk of ok strategies) under one rebalance mode and simulator."""
    orders = build_orders(cube, keys, dates=dates, returns=returns, rebalance=rebalance,
                          cost_rate=config.costs.rate, tolerance=config.tolerance)
    return run_simulator(simulator_instance(simulator), Market(returns, dates, cube.assets),
                         orders)


def simulate_pair_continuing(returns: np.ndarray, dates: pd.DatetimeIndex, cube: WeightsCube,
                             keys: list[tuple[str, str, str]], *, rebalance: str,
                             simulator: str, config: TournamentConfig,
                             previous: list[PathEnd | None]
                             ) -> tuple[SimulationResult, list[PathEnd | None], int]:
    """`simulate_pair`, continuing each path from its stored end (`previous[s]`, or None)
    when what the path read up to that end is unchanged (tournament.simulators.resume).
    Returns the result, each ok path's new end (None for the rest, and for simulators that
    cannot continue paths) and how many paths were continued. Same days, same numbers as
    `simulate_pair` (to rounding; tests/test_path_continuation.py)."""
    from dataclasses import replace

    from .keys import simulator_code_version
    sim = simulator_instance(simulator)
    orders = build_orders(cube, keys, dates=dates, returns=returns, rebalance=rebalance,
                          cost_rate=config.costs.rate, tolerance=config.tolerance)
    market = Market(returns, dates, cube.assets)
    S = len(keys)
    if not S or not (isinstance(sim, BatchSimulator) and sim.continues_paths()):
        return run_simulator(sim, market, orders), [None] * S, 0
    rows, end = horizon_rows(cube, dates)
    settings = (rebalance, simulator, simulator_code_version(simulator), orders.cost_rate,
                config.tolerance if rebalance == "tolerance" else None)
    fingerprints: dict[int, str] = {}

    def prefix(s: int, last: int) -> str:
        if last not in fingerprints:
            fingerprints[last] = returns_digest(returns, dates, cube.assets, orders.start, last)
        return prefix_digest(targets=orders.targets[s], rebalance_rows=rows, last=last,
                             dates=dates, returns_fp=fingerprints[last], settings=settings)

    def continues_at(s: int) -> int | None:
        prev = previous[s]
        if prev is None or prev.last_date not in dates:
            return None
        j = int(dates.get_loc(prev.last_date))
        if not orders.start < j < orders.end or len(prev.net_returns) != j - orders.start:
            return None
        return j if prev.prefix == prefix(s, j) else None

    def subset(members: list[int]) -> Orders:
        return replace(orders, keys=[orders.keys[s] for s in members],
                       targets=orders.targets[members], trade=orders.trade[members])

    out = failed_result(simulator, orders, market.horizon_dates(orders), "not simulated")
    groups: dict[int | None, list[int]] = {}
    for s in range(S):
        groups.setdefault(continues_at(s), []).append(s)
    ends: list[PathEnd | None] = [None] * S
    for j, members in groups.items():
        if j is None:
            part, done = run_simulator(sim, market, subset(members)), None
        else:
            o = subset(members)
            segment = replace(o, start=j, target_index=o.target_index[j - o.start:],
                              trade=o.trade[:, j - o.start:])
            part = run_simulator(sim, market, segment,
                                 state=stack_states([previous[s].state for s in members]))
            done = [previous[s] for s in members]
        for i, s in enumerate(members):
            out.status[s], out.reason[s] = part.status[i], part.reason[i]
            out.seconds[s] = part.seconds[i]
            if part.status[i] != OK:
                continue
            arrays = [part.net_returns[i], part.turnover[i], part.costs[i]]
            if done is not None:
                arrays = [np.concatenate([a, b]) for a, b in
                          zip((done[i].net_returns, done[i].turnover, done[i].costs), arrays)]
            out.net_returns[s], out.turnover[s], out.costs[s] = arrays
            if part.end_state is not None:
                ends[s] = PathEnd(last_date=dates[end], prefix=prefix(s, end),
                                  state=state_row(part.end_state, i),
                                  net_returns=arrays[0][:-1].copy(),
                                  turnover=arrays[1][:-1].copy(), costs=arrays[2][:-1].copy())
    return out, ends, sum(len(m) for j, m in groups.items() if j is not None)


def path_end_key(key: tuple[str, str, str], *, rebalance: str, simulator: str,
                 cube: WeightsCube, config: TournamentConfig) -> str:
    """Where a strategy's latest PathEnd is kept: one per strategy, mode, simulator, first
    rebalance day and costs (each run overwrites it; whether it can be continued is decided
    by its prefix digest, never by this key)."""
    from .config import digest_of
    return "s2end-" + digest_of([list(key), rebalance, simulator, str(cube.window_starts[0]),
                                 [config.costs.slippage_bps, config.costs.commission_bps],
                                 config.tolerance if rebalance == "tolerance" else None])


def simulate_benchmark(dataset: Dataset, cube: WeightsCube, config: TournamentConfig,
                       rebalance: str) -> SimulationResult | None:
    """Buy-and-hold of the benchmark over the same horizon (custom kernel, 1 asset): bought
    once at the first rebalance's close and never traded again, whatever the mode."""
    if dataset.benchmark is None:
        return None
    rows, end = horizon_rows(cube, dataset.dates)
    bench = dataset.benchmark.reshape(-1, 1)
    targets = np.ones((1, len(rows), 1))
    orders = orders_from_schedule(targets, rows, end, keys=[BENCHMARK_KEY], returns=bench,
                                  rebalance="window", cost_rate=config.costs.rate)
    buy_once = np.zeros_like(orders.trade)
    buy_once[:, 0] = True
    paths = simulate_paths(np.nan_to_num(bench), orders.start, targets, orders.target_index,
                           trade=buy_once, cost_rate=config.costs.rate)
    return SimulationResult(simulator="custom", rebalance=rebalance, keys=[BENCHMARK_KEY],
                            dates=pd.DatetimeIndex(dataset.dates[orders.start:end + 1]),
                            net_returns=paths.net_returns, turnover=paths.turnover,
                            costs=paths.costs, status=[OK], reason=[""], seconds=np.zeros(1))


def merge_results(parts: list[SimulationResult]) -> SimulationResult:
    """Concatenate strategy chunks of the same (rebalance, simulator) pair."""
    first = parts[0]
    return SimulationResult(simulator=first.simulator, rebalance=first.rebalance,
                            keys=[k for p in parts for k in p.keys], dates=first.dates,
                            net_returns=np.vstack([p.net_returns for p in parts]),
                            turnover=np.vstack([p.turnover for p in parts]),
                            costs=np.vstack([p.costs for p in parts]),
                            status=[s for p in parts for s in p.status],
                            reason=[r for p in parts for r in p.reason],
                            seconds=np.concatenate([p.seconds for p in parts]))


def split_result(result: SimulationResult) -> list[SimulationResult]:
    """One SimulationResult per strategy (the units result storage keeps one by one);
    `merge_results` of them is `result` again."""
    return [SimulationResult(simulator=result.simulator, rebalance=result.rebalance,
                             keys=[key], dates=result.dates,
                             net_returns=result.net_returns[s:s + 1].copy(),
                             turnover=result.turnover[s:s + 1].copy(),
                             costs=result.costs[s:s + 1].copy(), status=[result.status[s]],
                             reason=[result.reason[s]],
                             seconds=None if result.seconds is None
                             else result.seconds[s:s + 1].copy())
            for s, key in enumerate(result.keys)]


def frictionless_sharpe(cube: WeightsCube, dataset: Dataset, config: TournamentConfig
                        ) -> dict[tuple[str, str, str, str], float]:
    """Sharpe (held days) of every ok strategy x rebalance mode with the SAME trades at 0 bps.

    The trade days are the configured run's (tolerance mode finds them with the configured
    costs), so the difference to the reported Sharpe is the costs alone."""
    keys = ok_strategies(cube)
    out: dict[tuple[str, str, str, str], float] = {}
    if not keys:
        return out
    returns = clean_returns(dataset.returns)
    for rebalance in config.rebalances:
        orders = build_orders(cube, keys, dates=dataset.dates, returns=dataset.returns,
                              rebalance=rebalance, cost_rate=config.costs.rate,
                              tolerance=config.tolerance)
        paths = simulate_paths(returns, orders.start, orders.targets, orders.target_index,
                               trade=orders.trade, cost_rate=0.0)
        for s, key in enumerate(keys):
            out[(*key, rebalance)] = sharpe_ratio(paths.net_returns[s, 1:],
                                                  periods=config.annualization,
                                                  risk_free=config.risk_free)
    return out


def results_frame(sims: list[SimulationResult], cube: WeightsCube, dataset: Dataset,
                  config: TournamentConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(results: one row per strategy x rebalance x simulator, returns: long daily frame)."""
    rows, _ = horizon_rows(cube, dataset.dates)
    window_starts = rows - rows[0]
    records, returns_parts = [], []
    for sim in sims:
        for s, key in enumerate(sim.keys):
            rec = dict(zip(RESULT_KEYS, (*key, sim.rebalance, sim.simulator)))
            rec.update(status=sim.status[s], reason=sim.reason[s],
                       sim_seconds=float(sim.seconds[s]) if sim.seconds is not None else np.nan)
            if sim.status[s] == OK:
                rec.update(compute_metrics(sim.net_returns[s], sim.turnover[s], sim.costs[s],
                                           window_starts=window_starts,
                                           periods=config.annualization,
                                           risk_free=config.risk_free))
                part = pd.DataFrame({"date": sim.dates, "net_return": sim.net_returns[s]})
                for col, val in zip(RESULT_KEYS, (*key, sim.rebalance, sim.simulator)):
                    part[col] = val
                returns_parts.append(part)
            records.append(rec)
    # Strategies the cube could not produce: listed under every pair, never simulated.
    st = cube.strategies()
    for row in st[st["status"] != OK].itertuples(index=False):
        for rebalance, simulator in simulation_pairs(config):
            records.append({"selection": row.selection, "engine": row.engine,
                            "profile": row.profile, "rebalance": rebalance,
                            "simulator": simulator, "status": row.status, "reason": row.reason})
    results = pd.DataFrame.from_records(records)
    for col in ("status", "reason", "sim_seconds", *SCALAR_METRICS):
        if col not in results:
            results[col] = np.nan
    zero_cost = frictionless_sharpe(cube, dataset, config)
    results["sharpe_0bps"] = [zero_cost.get(k, np.nan) for k in
                              zip(*(results[c] for c in RESULT_KEYS[:4]))]
    fallbacks = st.set_index(STRATEGY_KEYS)["fallback_windows"]
    results["fallback_windows"] = [int(fallbacks.get(k, 0)) for k in
                                   zip(results["selection"], results["engine"], results["profile"])]
    results = results[[*RESULT_KEYS, "status", "reason", "fallback_windows", *SCALAR_METRICS,
                       "sharpe_0bps", "sim_seconds"]]
    results = results.sort_values(RESULT_KEYS, kind="stable").reset_index(drop=True)
    long = (pd.concat(returns_parts, ignore_index=True) if returns_parts else
            pd.DataFrame(columns=["date", "net_return", *RESULT_KEYS]))
    long = long[["date", *RESULT_KEYS, "net_return"]]
    return results, long


def run_stage2(dataset: Dataset, cube: WeightsCube, config: TournamentConfig
               ) -> list[SimulationResult]:
    """Notebook entry point: every pair, every ok strategy, in this process."""
    keys = ok_strategies(cube)
    sims = []
    for rebalance, simulator in simulation_pairs(config):
        if keys:
            sims.append(simulate_pair(dataset.returns, dataset.dates, cube, keys,
                                      rebalance=rebalance, simulator=simulator, config=config))
    return sims + benchmark_simulations(dataset, cube, config, config.rebalances)


def benchmark_simulations(dataset: Dataset, cube: WeightsCube, config: TournamentConfig,
                          rebalances) -> list[SimulationResult]:
    """The benchmark's buy-and-hold rows, one per rebalance mode in `rebalances` (none when
    the data has no benchmark): the one place every runner (serial, legacy, race, flows)
    adds them, after the strategies' simulations."""
    sims = [simulate_benchmark(dataset, cube, config, rebalance) for rebalance in rebalances]
    return [s for s in sims if s is not None]
