"""The whole tournament in one process, without Prefect or Ray (notebooks, tests, legacy).

`run_tournament` is the two-stage design executed serially; the Prefect flows run the same
functions in parallel chunks. `run_legacy` is the old sequential loop, kept as the honest
baseline for speed claims: it re-solves every optimisation for every simulator.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import pandas as pd

from .config import TournamentConfig
from .cube import OK, Cell, WeightsCube
from .data import Dataset, validate_for_config
from .simulators.base import SimulationResult
from .stage1 import BASELINE, assemble_cube, plan_cells, run_stage1, solve_cells
from .stage2 import benchmark_simulations, results_frame, run_stage2, simulate_pair
from .windows import windows_for


@dataclass
class TournamentResult:
    cube: WeightsCube
    simulations: list[SimulationResult]
    results: pd.DataFrame
    returns: pd.DataFrame
    timings: dict[str, float] = field(default_factory=dict)


def run_tournament(dataset: Dataset, config: TournamentConfig) -> TournamentResult:
    validate_for_config(dataset, config)
    t0 = time.perf_counter()
    cube = run_stage1(dataset, config)
    t1 = time.perf_counter()
    sims = run_stage2(dataset, cube, config)
    t2 = time.perf_counter()
    results, returns = results_frame(sims, cube, dataset, config)
    return TournamentResult(cube, sims, results, returns,
                            {"stage1": t1 - t0, "stage2": t2 - t1})


def run_legacy(dataset: Dataset, config: TournamentConfig, *, progress=None) -> TournamentResult:
    """for rebalance, for selection, for engine, for profile: optimise every window, then for
    each simulator re-solve and simulate that one strategy (the spec's legacy loop)."""
    validate_for_config(dataset, config)
    windows = windows_for(dataset, config.windows)
    t0 = time.perf_counter()
    strategies = sorted({c.strategy for c in plan_cells(config, windows)})
    sims: list[SimulationResult] = []
    all_cells = []
    for rebalance in config.rebalances:
        for key in strategies:
            for simulator in config.simulators:
                cells = [Cell(w.index, *key) for w in windows]
                results = solve_cells(dataset.returns, windows, cells, config)  # re-solved
                all_cells.extend(results)
                cube = assemble_cube(dataset, windows, results, config)
                if cube.strategies()["status"].iloc[0] != OK:
                    continue
                sims.append(simulate_pair(dataset.returns, dataset.dates, cube, [key],
                                          rebalance=rebalance, simulator=simulator,
                                          config=config))
                if progress:
                    progress()
    # One cube for the outputs (every cell once; the loop above solved each many times).
    unique = {r.cell: r for r in all_cells}
    cube = assemble_cube(dataset, windows, list(unique.values()), config)
    sims.extend(benchmark_simulations(dataset, cube, config, config.rebalances))
    t1 = time.perf_counter()
    results, returns = results_frame(sims, cube, dataset, config)
    return TournamentResult(cube, sims, results, returns, {"legacy": t1 - t0})


__all__ = ["TournamentResult", "run_tournament", "run_legacy", "BASELINE"]
