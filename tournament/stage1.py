"""Stage 1: solve every (window, selection, engine, profile) cell once -> weights cube.

Pure functions, chunk-friendly: the orchestration layer splits `plan_cells` into chunks,
calls `solve_cells` on each (on any worker), and hands all results to `assemble_cube`.
Point-in-time: a cell sees only rows `window.train_rows` of the returns.
"""
from __future__ import annotations

import time
from collections.abc import Iterable

import numpy as np

from .config import TournamentConfig
from .cube import FAILED, OK, UNSUPPORTED, Cell, CellResult, WeightsCube
from .data import Dataset
from .engines.base import EngineError, EngineParams, check_weights
from .faults import engine_fault
from .registry import get_engine
from .selection import select
from .windows import Window, make_windows

BASELINE = ("all", "baseline", "equal_weight")

# Engines keep compiled cvxpy problems; one instance per process reuses them across chunks.
_ENGINE_INSTANCES: dict[str, object] = {}


def engine_instance(name: str):
    if name not in _ENGINE_INSTANCES:
        _ENGINE_INSTANCES[name] = get_engine(name)
    return _ENGINE_INSTANCES[name]


def plan_cells(config: TournamentConfig, windows: list[Window]) -> list[Cell]:
    """All cells of the grid plus the raw-pool equal-weight baseline, in a stable order."""
    cells = {Cell(w.index, s, e, p) for w in windows for s in config.selections
             for e in config.engines for p in config.profiles}
    cells |= {Cell(w.index, *BASELINE) for w in windows}
    return sorted(cells, key=lambda c: (c.strategy, c.window))


def solve_cells(returns: np.ndarray, windows: list[Window], cells: Iterable[Cell],
                config: TournamentConfig) -> list[CellResult]:
    """Solve a chunk of cells. Never raises for a cell: failures become `failed` results."""
    out: list[CellResult] = []
    selections: dict[tuple[int, str], np.ndarray] = {}
    n_assets = returns.shape[1]
    for cell in cells:
        window = windows[cell.window]
        engine = engine_instance(cell.engine)
        if not engine.supports(cell.profile):
            out.append(CellResult(cell, UNSUPPORTED, reason=f"engine {cell.engine!r} does not "
                                  f"implement profile {cell.profile!r}",
                                  weights=np.zeros(n_assets)))
            continue
        train = returns[window.train_rows]           # point-in-time: training rows only
        key = (cell.window, cell.selection)
        if key not in selections:
            selections[key] = select(cell.selection, train, top_k=config.top_k)
        mask = selections[key]
        params = EngineParams(max_weight=1.0 if cell.engine == "baseline" else config.max_weight,
                              covariance=config.covariance, risk_free=config.risk_free)
        start = time.perf_counter()
        try:
            if not mask.any():
                raise RuntimeError("selection left no eligible assets")
            engine.solver_ = ""
            fault = engine_fault(cell)            # tests only (tournament.faults); None normally
            if fault == "raise":
                raise EngineError("injected solver failure")
            raw = np.full(int(mask.sum()), np.nan) if fault == "nan" else engine.weights(
                np.ascontiguousarray(train[:, mask]), profile=cell.profile, params=params)
            w_sel = check_weights(raw, n=int(mask.sum()), max_weight=params.max_weight)
            weights = np.zeros(n_assets)
            weights[mask] = w_sel
            out.append(CellResult(cell, OK, solver=engine.solver_,
                                  solve_seconds=time.perf_counter() - start, weights=weights))
        except Exception as exc:  # noqa: BLE001 - every failure is recorded, never substituted
            out.append(CellResult(cell, FAILED, reason=f"{type(exc).__name__}: {exc}",
                                  solver=getattr(engine, "solver_", ""),
                                  solve_seconds=time.perf_counter() - start,
                                  weights=np.zeros(n_assets)))
    return out


def assemble_cube(dataset: Dataset, windows: list[Window], results: list[CellResult]) -> WeightsCube:
    starts = [dataset.dates[w.rebalance] for w in windows]
    ends = [dataset.dates[w.test_end] for w in windows]
    return WeightsCube.from_results(results, assets=dataset.assets, window_starts=starts,
                                    window_ends=ends)


def run_stage1(dataset: Dataset, config: TournamentConfig) -> WeightsCube:
    """Notebook entry point: the whole of Stage 1 in this process."""
    windows = make_windows(dataset.n_days, config.windows)
    results = solve_cells(dataset.returns, windows, plan_cells(config, windows), config)
    return assemble_cube(dataset, windows, results)
