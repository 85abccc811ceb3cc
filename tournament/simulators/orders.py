"""Rebalance modes -> orders, built in ONE place so every simulator executes the same trades.

* window:    trade at the close of each window's rebalance day; drift in between.
* daily:     trade back to the current target at every close (except the last day, where a
             trade could only cost money).
* tolerance: trade at the first rebalance day, then whenever the one-way drift
             0.5 * sum_i |w_i - target_i| exceeds the threshold (default 5%). The drift path
             depends on returns and costs, so the trade days are found once by the reference
             numpy kernel and handed to every simulator as explicit orders.
The current target on a day is the weights of the latest rebalance day on or before it: each
rebalance date's weights apply until the next one (the last until the end of its test window).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..cube import WeightsCube
from ..errors import ConfigError, unknown_name
from ..registry import REBALANCE_MODES
from .base import Orders, clean_returns


def horizon_rows(cube: WeightsCube, dates: pd.DatetimeIndex) -> tuple[np.ndarray, int]:
    """Row of each rebalance day in `dates`, and the last row of the last test window."""
    rows = dates.get_indexer(cube.window_starts)
    end = dates.get_indexer(cube.window_ends[-1:])[0]
    if (rows < 0).any() or end < 0:
        raise ValueError("cube dates are not in the returns index (cube from other data?)")
    return rows.astype(np.int64), int(end)


def build_orders(cube: WeightsCube, keys: list[tuple[str, str, str]], *, dates: pd.DatetimeIndex,
                 returns: np.ndarray, rebalance: str, cost_rate: float,
                 tolerance: float = 0.05) -> Orders:
    if rebalance not in REBALANCE_MODES:
        raise ConfigError(unknown_name("rebalance mode", rebalance, REBALANCE_MODES))
    rows, end = horizon_rows(cube, dates)
    targets = (np.stack([cube.schedule(k) for k in keys]) if keys
               else np.zeros((0, len(rows), len(cube.assets))))
    return orders_from_schedule(targets, rows, end, keys=keys, returns=returns,
                                rebalance=rebalance, cost_rate=cost_rate, tolerance=tolerance)


def orders_from_schedule(targets: np.ndarray, rebalance_rows: np.ndarray, end: int, *, keys,
                         returns: np.ndarray, rebalance: str, cost_rate: float,
                         tolerance: float = 0.05) -> Orders:
    """Orders from raw arrays (S x K x N targets traded at `rebalance_rows`, path to `end`)."""
    start = int(rebalance_rows[0])
    horizon_days = np.arange(start, end + 1)
    target_index = np.searchsorted(rebalance_rows, horizon_days, side="right") - 1
    S, H = targets.shape[0], horizon_days.size
    if rebalance == "window":
        trade = np.broadcast_to(np.isin(horizon_days, rebalance_rows), (S, H)).copy()
    elif rebalance == "daily":
        trade = np.ones((S, H), dtype=bool)
        trade[:, -1] = False
    elif rebalance == "tolerance":
        from .custom import simulate_paths
        trade = simulate_paths(clean_returns(returns), start, targets, target_index,
                               trade=None, tolerance=tolerance, cost_rate=cost_rate).trade
    else:
        raise ConfigError(unknown_name("rebalance mode", rebalance, REBALANCE_MODES))
    return Orders(list(keys), rebalance, start, end, targets, target_index, trade, cost_rate)
