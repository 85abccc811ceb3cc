"""Custom simulator: a numpy kernel vectorised across all strategies at once.

It is the fast path (one loop over days, each step an S x N array operation) and the oracle
the other simulators are checked against.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import BatchSimulator, Market, Orders, Paths, clean_returns


@dataclass(frozen=True)
class KernelPaths(Paths):
    trade: np.ndarray = None  # S x H bool (the trades actually made)


def simulate_paths(returns: np.ndarray, start: int, targets: np.ndarray, target_index: np.ndarray,
                   *, trade: np.ndarray | None, cost_rate: float,
                   tolerance: float | None = None) -> KernelPaths:
    """Simulate S strategies over H = len(target_index) days starting at row `start`.

    Either `trade` (S x H explicit orders) or `tolerance` (decide trades from drift) is given.
    Holdings `h` and cash are in currency units; the path starts with 1.0 in cash.
    """
    S, H = targets.shape[0], target_index.size
    N = targets.shape[2]
    h = np.zeros((S, N))
    cash = np.ones(S)
    value_after = np.ones(S)
    net = np.empty((S, H))
    turnover = np.zeros((S, H))
    costs = np.zeros((S, H))
    made = np.zeros((S, H), dtype=bool)
    growth = 1.0 + returns[start:start + H]
    current_k, W, W_sum = -1, None, None
    for i in range(H):
        if i:
            h *= growth[i]
        value = h.sum(axis=1) + cash
        if target_index[i] != current_k:
            current_k = target_index[i]
            W = targets[:, current_k, :]
            W_sum = W.sum(axis=1)
        if tolerance is None:
            m = trade[:, i]
        elif i == 0:
            m = np.ones(S, dtype=bool)
        elif i == H - 1:
            m = np.zeros(S, dtype=bool)
        else:
            drift = 0.5 * np.abs(h / value[:, None] - W).sum(axis=1)
            m = drift > tolerance
        if m.any():
            desired = W * value[:, None]
            traded = np.abs(desired - h).sum(axis=1) * m
            cost = cost_rate * traded
            h = np.where(m[:, None], desired, h)
            cash = np.where(m, value * (1.0 - W_sum) - cost, cash)
            turnover[:, i] = traded / (2.0 * value)
            costs[:, i] = cost / value
            new_value_after = value - cost
        else:
            new_value_after = value
        net[:, i] = new_value_after / value_after - 1.0
        value_after = new_value_after
        made[:, i] = m
    return KernelPaths(net_returns=net, turnover=turnover, costs=costs, trade=made)


class CustomSimulator(BatchSimulator):
    name = "custom"
    code_version = "1"

    def simulate(self, market: Market, orders: Orders) -> KernelPaths:
        return simulate_paths(clean_returns(market.returns), orders.start, orders.targets,
                              orders.target_index, trade=orders.trade,
                              cost_rate=orders.cost_rate)
