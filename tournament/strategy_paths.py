"""One simulator's daily net-return paths of the distinct strategies (pure pandas/numpy).

Statistics that compare strategies (the DSR trial count, the model confidence set, SPA and
StepM) must count each *distinct strategy* once. A distinct strategy is a (selection,
engine, profile, rebalance) combination; the simulators are replicas of the same trial, so
their paths are not independent evidence. These helpers pick one simulator and return its
paths of every distinct strategy:

* ``reference_simulator(results)``: the lowest-fidelity simulator that ran every distinct
  strategy ok (custom < vectorbt < cvxportfolio < nautilus; unknown simulators rank above,
  by name). When no simulator covers every strategy (one failed on some), the one covering
  the most, lowest fidelity first, so a statistic is still defined for the strategies it ran;
  ``StrategyPaths.missing`` lists the others.
* ``strategy_paths(results, returns)``: that simulator's T x S matrix of daily net returns,
  one column per distinct strategy, dates = the union of its dates (NaN where a path has no
  value; callers that need a full matrix drop those rows).

The buy-and-hold benchmark (selection ``benchmark``) is a reference, not a strategy: it is
never a column. Rows that are not ``ok`` have no path.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .registry import FIDELITY_TIERS
from .schema import BENCHMARK_SELECTION, OK, PATH_KEYS

STRATEGY_KEYS = tuple(PATH_KEYS)   # a distinct strategy: weights x rebalance mode
# The "high" tier lists every built-in simulator in rising fidelity.
SIMULATOR_FIDELITY = FIDELITY_TIERS["high"]

__all__ = ["STRATEGY_KEYS", "StrategyPaths", "reference_simulator", "strategy_paths",
           "fidelity_rank"]


def fidelity_rank(simulator: str) -> tuple[int, str]:
    """Sort key, lowest fidelity first; unknown simulators after the known ones, by name."""
    try:
        return SIMULATOR_FIDELITY.index(simulator), simulator
    except ValueError:
        return len(SIMULATOR_FIDELITY), simulator


def _strategy_rows(results: pd.DataFrame) -> pd.DataFrame:
    """ok rows that are strategies (benchmark excluded)."""
    if results.empty or "status" not in results:
        return results.iloc[0:0]
    keep = (results["status"] == OK) & (results["selection"] != BENCHMARK_SELECTION)
    return results[keep]


def reference_simulator(results: pd.DataFrame) -> str | None:
    """The simulator whose paths represent every distinct strategy (see module docstring);
    None when no strategy ran ok."""
    rows = _strategy_rows(results)
    if rows.empty:
        return None
    keys = list(STRATEGY_KEYS)
    n_distinct = len(rows.drop_duplicates(keys))
    coverage = rows.drop_duplicates([*keys, "simulator"]).groupby("simulator").size()
    # Full coverage first, then the most strategies, then the lowest fidelity.
    best = min(coverage.index, key=lambda s: (coverage[s] < n_distinct, -coverage[s],
                                              fidelity_rank(s)))
    return str(best)


@dataclass(frozen=True)
class StrategyPaths:
    """Daily net returns of the distinct strategies under one simulator.

    Attributes
    ----------
    simulator : the simulator the paths come from (None when nothing ran ok)
    strategies : one row per column of ``returns``, columns STRATEGY_KEYS
    dates : (T,) datetime64 dates of the rows of ``returns``
    returns : (T, S) daily net returns; NaN where a path has no value on that date
    missing : distinct strategies (STRATEGY_KEYS) ok under some simulator but not this one
    """

    simulator: str | None
    strategies: pd.DataFrame
    dates: np.ndarray
    returns: np.ndarray
    missing: pd.DataFrame

    @property
    def labels(self) -> list[str]:
        """"selection/engine/profile/rebalance" per column."""
        return ["/".join(str(v) for v in row)
                for row in self.strategies[list(STRATEGY_KEYS)].itertuples(index=False)]


def strategy_paths(results: pd.DataFrame, returns: pd.DataFrame, *,
                   simulator: str | None = None) -> StrategyPaths:
    """The reference simulator's (or `simulator`'s) paths of every distinct strategy.

    `results`/`returns` are `stage2.results_frame`'s outputs (returns in long form: date,
    the five keys, net_return). Columns are in the order of `results`.
    """
    keys = list(STRATEGY_KEYS)
    rows = _strategy_rows(results)
    sim = simulator if simulator is not None else reference_simulator(results)
    if rows.empty:
        nothing = pd.DataFrame({k: pd.Series(dtype=str) for k in keys})
        return StrategyPaths(sim, nothing, np.array([], dtype="datetime64[ns]"),
                             np.full((0, 0), np.nan), nothing.copy())
    chosen = rows[rows["simulator"] == sim].drop_duplicates(keys)
    strategies = chosen[keys].astype(str).reset_index(drop=True)
    every = rows[keys].astype(str).drop_duplicates()
    missing = (every.merge(strategies, on=keys, how="left", indicator=True)
               .query("_merge == 'left_only'")[keys].reset_index(drop=True))
    n = len(strategies)
    if n == 0 or returns.empty:
        return StrategyPaths(sim, strategies, np.array([], dtype="datetime64[ns]"),
                             np.full((0, n), np.nan), missing)
    part = returns[returns["simulator"].astype(str) == str(sim)]
    col = pd.MultiIndex.from_frame(strategies).get_indexer(
        pd.MultiIndex.from_frame(part[keys].astype(str)))
    keep = col >= 0
    dates, row = np.unique(pd.to_datetime(part["date"]).to_numpy()[keep], return_inverse=True)
    mat = np.full((dates.size, n), np.nan)
    mat[row, col[keep]] = part["net_return"].to_numpy(dtype=float)[keep]
    return StrategyPaths(sim, strategies, dates, mat, missing)
