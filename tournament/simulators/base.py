"""The simulator interface and the one accounting convention all simulators share.

Convention (see README "Accounting"):
* returns row t is the simple return from close t-1 to close t (NaN gap -> 0%);
* a trade on day t happens at the close of day t; new holdings first earn row t+1;
* cost = cost_rate x sum |traded notional|, trade sizes from the pre-cost portfolio value,
  paid from an explicit cash leg (0% interest; may go slightly negative by the cost);
* holdings carry across windows; a strategy is ONE continuous path from the first rebalance
  day to the end of the last test window (no date twice);
* one-way turnover = sum |traded notional| / (2 x pre-trade value).

Every simulator receives the same `Orders` (which days trade, to which target) built once in
`orders.py`, so rebalance modes mean the same everywhere.
"""
from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pandas as pd

from ..cube import FAILED, OK
from ..faults import simulator_fault


@dataclass(frozen=True)
class Orders:
    """What every simulator executes, for S strategies over the horizon rows [start, end]."""
    keys: list[tuple[str, str, str]]     # strategy identities (selection, engine, profile)
    rebalance: str                       # rebalance mode name
    start: int                           # first row (first rebalance day)
    end: int                             # last row (inclusive)
    targets: np.ndarray                  # S x K x N target weights per rebalance date
    target_index: np.ndarray             # H (= end-start+1) -> index k of the current target
    trade: np.ndarray                    # S x H bool: trade to the current target at close
    cost_rate: float

    @property
    def horizon(self) -> int:
        return self.end - self.start + 1

    def target_path(self, s: int) -> np.ndarray:
        """H x N current target of strategy s on each horizon day."""
        return self.targets[s][self.target_index]


@dataclass
class SimulationResult:
    """Per-strategy daily outputs of one simulator under one rebalance mode."""
    simulator: str
    rebalance: str
    keys: list[tuple[str, str, str]]
    dates: pd.DatetimeIndex              # H horizon dates
    net_returns: np.ndarray              # S x H (day 0 = -initial cost)
    turnover: np.ndarray                 # S x H one-way turnover
    costs: np.ndarray                    # S x H cost as a fraction of pre-trade value
    status: list[str] = field(default_factory=list)
    reason: list[str] = field(default_factory=list)
    seconds: np.ndarray | None = None    # S wall seconds per strategy (batched: share)

    @property
    def equity(self) -> np.ndarray:
        return np.cumprod(1 + self.net_returns, axis=1)


@dataclass
class StrategyPath:
    """What a one-strategy-at-a-time simulator returns for a strategy."""
    net_returns: np.ndarray
    turnover: np.ndarray
    costs: np.ndarray


class Simulator:
    name: ClassVar[str]
    code_version: ClassVar[str] = "1"

    def simulate(self, returns: np.ndarray, dates: pd.DatetimeIndex, orders: Orders,
                 assets: tuple[str, ...] = ()) -> SimulationResult:
        """Default: loop over strategies with `simulate_one`, each failure isolated."""
        S, H = len(orders.keys), orders.horizon
        out = _empty_result(self.name, orders, dates)
        for s in range(S):
            t0 = time.perf_counter()
            try:
                fault = simulator_fault(self.name, orders.keys[s])   # tests only; None normally
                if fault == "raise":
                    raise RuntimeError("injected simulator failure")
                path = self.simulate_one(returns, orders, s, assets)
                if fault == "short":
                    path = StrategyPath(path.net_returns[:-1], path.turnover[:-1], path.costs[:-1])
                _check_path(path, H)
                out.net_returns[s], out.turnover[s], out.costs[s] = (
                    path.net_returns, path.turnover, path.costs)
                out.status[s], out.reason[s] = OK, ""
            except Exception as exc:  # noqa: BLE001 - recorded, never replaced by another sim
                out.status[s] = FAILED
                out.reason[s] = f"{self.name}: {type(exc).__name__}: {exc}"
                out.net_returns[s] = np.nan
                if not str(exc):
                    out.reason[s] += " " + traceback.format_exc(limit=2)
            out.seconds[s] = time.perf_counter() - t0
        return out

    def simulate_one(self, returns: np.ndarray, orders: Orders, s: int,
                     assets: tuple[str, ...]) -> StrategyPath:
        raise NotImplementedError


def _empty_result(name: str, orders: Orders, dates: pd.DatetimeIndex) -> SimulationResult:
    S, H = len(orders.keys), orders.horizon
    return SimulationResult(name, orders.rebalance, list(orders.keys),
                            pd.DatetimeIndex(dates[orders.start:orders.end + 1]),
                            np.zeros((S, H)), np.zeros((S, H)), np.zeros((S, H)),
                            [FAILED] * S, ["not simulated"] * S, np.zeros(S))


def _check_path(path: StrategyPath, horizon: int) -> None:
    for name in ("net_returns", "turnover", "costs"):
        arr = np.asarray(getattr(path, name))
        if arr.shape != (horizon,):
            raise RuntimeError(f"returned {arr.shape[0] if arr.ndim else 0} days of {name}, "
                               f"expected {horizon}")
    if not np.isfinite(path.net_returns).all():
        raise RuntimeError("non-finite net returns")


def clean_returns(returns: np.ndarray) -> np.ndarray:
    """Gaps earn 0% (held at last price), per the data policy."""
    return np.nan_to_num(returns, nan=0.0)
