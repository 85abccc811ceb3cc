"""Stage 1: solve every (window, selection, engine, profile) cell once -> weights cube.

Pure functions, chunk-friendly: the orchestration layer splits `plan_cells` into chunks,
calls `solve_cells` on each (on any worker), and hands all results to `assemble_cube`.
Point-in-time: a cell sees only rows `window.train_rows` of the returns.

A cell that cannot produce valid weights (infeasible problem, solver error, a solver status
the acceptance rule rejects, invalid weights, a selection that fails or leaves no eligible
asset) is `failed` with its reason in `solve_cells`. `assemble_cube` then applies the
declared `on_infeasible` policy to those cells, per strategy in window order (it needs the
previous window, which may sit in another chunk): `hold` / `cash` turn them into `fallback`
cells with the policy's weights, `fail` leaves them failed. `unsupported` (declared by the
engine) is never resolved.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable

import numpy as np

from .config import TournamentConfig
from .acceptance import INEXACT, accept_status, optimality_residual
from .cube import Cell, CellResult, WeightsCube
from .schema import BASELINE_KEY, FAILED, FALLBACK, OK, UNSUPPORTED
from .data import Dataset
from .engines.base import Engine, EngineError, EngineOutput, EngineParams, check_weights
from .faults import active_faults, with_engine_faults
from .registry import get_engine
from .selection import SelectionError, select
from .windows import Window, windows_for

BASELINE = BASELINE_KEY      # raw-pool equal weight, solved like any cell

# Engines keep compiled cvxpy problems; one instance per process reuses them across chunks.
_ENGINE_INSTANCES: dict[str, Engine] = {}


def engine_instance(name: str) -> Engine:
    if name not in _ENGINE_INSTANCES:
        _ENGINE_INSTANCES[name] = get_engine(name)
    return _ENGINE_INSTANCES[name]


def plan_cells(config: TournamentConfig, windows: list[Window]) -> list[Cell]:
    """All cells of the grid plus the raw-pool equal-weight baseline, in a stable order."""
    cells = {Cell(w.index, s, e, p) for w in windows for s in config.selections
             for e in config.engines for p in config.profiles}
    cells |= {Cell(w.index, *BASELINE) for w in windows}
    return sorted(cells, key=lambda c: (c.strategy, c.window))


def engine_lookup() -> Callable[[Cell], Engine]:
    """Cell -> engine, chosen once per chunk. The process's shared instance; under
    TOURNAMENT_FAULTS (tests only) wrapped per cell, since rules target selections/windows."""
    if not active_faults():
        return lambda cell: engine_instance(cell.engine)
    return lambda cell: with_engine_faults(engine_instance(cell.engine), cell)


def solve_cells(returns: np.ndarray, windows: list[Window], cells: Iterable[Cell],
                config: TournamentConfig) -> list[CellResult]:
    """Solve a chunk of cells. Never raises for a cell: failures become `failed` results."""
    out: list[CellResult] = []
    selections: dict[tuple[int, str], np.ndarray | Exception] = {}
    n_assets = returns.shape[1]
    engine_for = engine_lookup()
    for cell in cells:
        window = windows[cell.window]
        engine = engine_for(cell)
        if not engine.supports(cell.profile):
            out.append(CellResult(cell, UNSUPPORTED, reason=f"engine {cell.engine!r} does not "
                                  f"implement profile {cell.profile!r}",
                                  weights=np.zeros(n_assets)))
            continue
        train = returns[window.train_rows]           # point-in-time: training rows only
        key = (cell.window, cell.selection)
        if key not in selections:
            # Inside the per-cell handling: a selection error fails its cells, not the chunk.
            try:
                selections[key] = select(cell.selection, train, top_k=config.top_k)
            except Exception as exc:  # noqa: BLE001 - recorded on every cell that needs it
                selections[key] = SelectionError(f"selection {cell.selection!r} failed: "
                                                 f"{type(exc).__name__}: {exc}")
        mask = selections[key]
        params = EngineParams(
            max_weight=config.max_weight if engine.applies_max_weight else 1.0,
            covariance=config.covariance, risk_free=config.risk_free)
        start = time.perf_counter()
        output: EngineOutput | None = None
        residual = np.nan
        try:
            if isinstance(mask, Exception):
                raise mask
            if not mask.any():
                raise SelectionError("selection left no eligible assets")
            x = np.ascontiguousarray(train[:, mask])
            output = engine.weights(x, profile=cell.profile, params=params)
            w_sel = check_weights(output.weights, n=int(mask.sum()),
                                  max_weight=params.max_weight)
            if output.solver_status in INEXACT:    # the one status rule (tournament.acceptance)
                residual = optimality_residual(x, cell.profile, w_sel, cap=params.max_weight,
                                               method=params.covariance,
                                               risk_free=params.risk_free)
            accept_status(output.solver_status, residual, cell.profile)
            weights = np.zeros(n_assets)
            weights[mask] = w_sel
            out.append(CellResult(cell, OK, solver=output.solver,
                                  solve_seconds=time.perf_counter() - start, weights=weights,
                                  solver_status=output.solver_status, residual=residual))
        except Exception as exc:  # noqa: BLE001 - every failure is recorded, never substituted
            solver, status = _solver_of(output, exc)
            out.append(CellResult(cell, FAILED, reason=f"{type(exc).__name__}: {exc}",
                                  solver=solver, solve_seconds=time.perf_counter() - start,
                                  weights=np.zeros(n_assets), solver_status=status,
                                  residual=residual))
    return out


def _solver_of(output: EngineOutput | None, exc: Exception) -> tuple[str, str]:
    """(solver, status) of a failed cell: the engine's output if it returned one (rejected
    afterwards), else what its EngineError names, else none (no solver was reached)."""
    if output is not None:
        return output.solver, output.solver_status
    if isinstance(exc, EngineError):
        return exc.solver, exc.solver_status
    return "", ""


def apply_infeasible_policy(results: list[CellResult], policy: str) -> list[CellResult]:
    """Resolve `failed` cells by the declared policy (module docstring). Pure: new objects.

    `hold` keeps the previous window's target (the resolved one, so a run of failed windows
    keeps the last solved target), or cash when the strategy's first window failed;
    `cash` holds the cash leg (zero weights); `fail` changes nothing."""
    if policy == "fail":
        return list(results)
    out: list[CellResult] = []
    previous: dict[tuple[str, str, str], np.ndarray] = {}
    for r in sorted(results, key=lambda r: (r.cell.strategy, r.cell.window)):
        if r.status == FAILED:
            prev = previous.get(r.cell.strategy)
            if policy == "hold" and prev is not None:
                weights, applied = prev.copy(), "hold"
            else:
                weights = np.zeros_like(r.weights)
                applied = "cash" if policy == "cash" else "hold (first window: cash)"
            r = dataclasses.replace(r, status=FALLBACK, weights=weights, policy=applied)
        if r.status in (OK, FALLBACK):
            previous[r.cell.strategy] = r.weights
        out.append(r)
    return out


def assemble_cube(dataset: Dataset, windows: list[Window], results: list[CellResult],
                  config: TournamentConfig) -> WeightsCube:
    """The cube of all cells, with `config.on_infeasible` applied to the failed ones."""
    starts = [dataset.dates[w.rebalance] for w in windows]
    ends = [dataset.dates[w.test_end] for w in windows]
    resolved = apply_infeasible_policy(results, config.on_infeasible)
    return WeightsCube.from_results(resolved, assets=dataset.assets, window_starts=starts,
                                    window_ends=ends)


def run_stage1(dataset: Dataset, config: TournamentConfig) -> WeightsCube:
    """Notebook entry point: the whole of Stage 1 in this process."""
    windows = windows_for(dataset, config.windows)
    results = solve_cells(dataset.returns, windows, plan_cells(config, windows), config)
    return assemble_cube(dataset, windows, results, config)
