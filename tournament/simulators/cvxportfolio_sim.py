"""cvxportfolio simulator: one `MarketSimulator` back-test per strategy, on user data only.

Mapping to the shared convention:
* cvxportfolio's returns row t is the return from t to t+1 (ours: t-1 to t), so it gets our
  returns shifted by -1 over the horizon, plus one extra zero-return row after the last day
  (so the last horizon day is a full trading period). NaN gaps earn 0%.
* An own zero-return cash column (`cash_key`): no download of a rate series, ever. No
  universe strings, no StockMarketSimulator. `min_history=0` (default: a year late).
* Costs: `TransactionCost(a=cost_rate, b=None)` = cost_rate x sum |traded notional|, debited
  from cash; trades are sized from the pre-trade value (cvxportfolio's `v`), no holding cost.
* A small policy returns the scheduled target (cash weight = 1 - sum) on trade days and the
  current weights otherwise (FixedWeights is ~2x slower on sparse schedules).
* cvxportfolio's `turnover` is sum |u| / (2 v): already one-way, like ours.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .base import Market, Orders, PerStrategySimulator, StrategyPath, clean_returns

CASH = "_CASH_"
INITIAL_VALUE = 1.0e6


def _import_cvx():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        import cvxportfolio as cvx
    logging.getLogger("cvxportfolio").setLevel(logging.WARNING)
    return cvx


def _schedule_policy_class(cvx):
    class ScheduleWeights(cvx.policies.Policy):
        """Trade to `targets[t]` (N + cash weights) on scheduled days, else hold."""

        def __init__(self, targets: dict):
            self.targets = targets

        def values_in_time(self, t, current_weights, **kwargs):  # noqa: ARG002
            target = self.targets.get(t)
            if target is None:
                return current_weights
            return pd.Series(target, index=current_weights.index)

    return ScheduleWeights


def market_returns(market: Market, orders: Orders, *, shift: bool = True) -> pd.DataFrame:
    """Horizon returns in cvxportfolio's convention (row t earns t -> t+1), with cash column.

    `shift=False` feeds our unshifted rows (a one-day look-ahead; used only to show that
    parity catches it).
    """
    R = clean_returns(market.returns)
    start, end, H = orders.start, orders.end, orders.horizon
    N = R.shape[1]
    rows = np.zeros((H + 1, N))
    if shift:
        nxt = R[start + 1:end + 1]                # rows earned after each horizon day
        rows[:nxt.shape[0]] = nxt
    else:
        rows[:H] = R[start:end + 1]
    index = market.horizon_dates(orders)
    extra = index[-1] + (index[-1] - index[-2] if H > 1 else pd.Timedelta(days=1))
    index = index.append(pd.DatetimeIndex([extra]))
    names = list(market.assets) if len(market.assets) == N else [f"A{i}" for i in range(N)]
    frame = pd.DataFrame(rows, index=index, columns=names)
    frame[CASH] = 0.0
    return frame


def make_market_simulator(frame: pd.DataFrame, cost_rate: float):
    cvx = _import_cvx()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        md = cvx.UserProvidedMarketData(returns=frame, cash_key=CASH,
                                        min_history=pd.Timedelta(0))
        return cvx.MarketSimulator(market_data=md,
                                   costs=[cvx.TransactionCost(a=cost_rate, b=None)])


def run_one(sim, frame: pd.DataFrame, orders: Orders, s: int) -> StrategyPath:
    cvx = _import_cvx()
    H = orders.horizon
    index = frame.index
    targets = orders.target_path(s)
    schedule = {}
    for i in np.flatnonzero(orders.trade[s]):
        w = np.asarray(targets[i], dtype=float)
        schedule[index[i]] = np.append(w, 1.0 - w.sum())
    policy = _schedule_policy_class(cvx)(schedule)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        res = sim.backtest(policy, start_time=index[0], end_time=index[-1],
                           initial_value=INITIAL_VALUE)
    v = res.v.reindex(index[:H]).to_numpy(dtype=float)           # pre-trade values
    u = res.u.reindex(index[:H])
    traded = np.abs(u.drop(columns=[CASH]).to_numpy(dtype=float)).sum(axis=1)
    cost = res.costs["TransactionCost"].reindex(index[:H]).to_numpy(dtype=float)
    if len(res.v) != H + 1 or not np.isfinite(v).all():
        raise RuntimeError(f"cvxportfolio simulated {len(res.v) - 1} of {H} days")
    after = v - cost                                              # post-trade values
    prev = np.concatenate([[INITIAL_VALUE], after[:-1]])
    return StrategyPath(net_returns=after / prev - 1.0, turnover=traded / (2.0 * v),
                        costs=cost / v)


@dataclass(frozen=True)
class Prepared:
    """What the strategies of one call share: the market frame and its MarketSimulator."""
    frame: pd.DataFrame
    market_simulator: object
    orders: Orders


class CvxportfolioSimulator(PerStrategySimulator):
    name = "cvxportfolio"
    warm_imports = ("cvxportfolio",)
    code_version = "1"
    shift_returns: bool = True     # False only to demonstrate the look-ahead (tests)

    def prepare(self, market: Market, orders: Orders) -> Prepared:
        frame = market_returns(market, orders, shift=self.shift_returns)
        return Prepared(frame, make_market_simulator(frame, orders.cost_rate), orders)

    def simulate_one(self, ctx: Prepared, s: int) -> StrategyPath:
        return run_one(ctx.market_simulator, ctx.frame, ctx.orders, s)
