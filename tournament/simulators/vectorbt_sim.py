"""vectorbt simulator: every strategy of an `Orders` in ONE `Portfolio.from_orders` call.

Columns are (strategy, asset) pairs grouped by strategy with cash sharing, so each group is
one portfolio with its own cash leg. Bar 0 is the horizon's first day (orders.start): the
first trade happens at its close, exactly like the reference kernel. Prices are
cumprod(1 + R) over the horizon (NaN gaps earn 0%), orders are target percents of the group
value on trade days (NaN = no order = drift), fees = orders.cost_rate.

vectorbt sizes every order of a bar from the group value before the bar's trades
(`update_value=False`, its default) and values positions at the order price (= close), which
is the shared convention. vectorbt cannot let cash go negative to pay fees: with a fully
invested target it would shrink the last buy by about the cost (measured 3e-4 relative
final-equity difference on concentrated portfolios, 4e-5 in daily mode). So each strategy
also holds a "loan" column (price 1, no fees, never returns anything), shorted once on bar 0
by `init_cash`: cash then stays positive while the net value and the exposure to the real
assets are exactly the convention's (its cash leg is vectorbt cash - loan; 0% interest). This
is exact while the portfolio grows less than 1 / (2 x cost_rate)-fold (833x at 6 bps).
Remaining difference ~1e-10: vectorbt snaps positions within rel 1e-9 of zero (solver-noise
weights ~1e-11). Turnover and costs come from the order records of the real assets only.

Outputs are plain numpy arrays; no Portfolio object leaves this module (not picklable).
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from .base import BatchSimulator, Market, Orders, Paths, clean_returns

INIT_CASH = 1.0e6   # large, so vectorbt's absolute tolerances are negligible; results are ratios


def _import_vectorbt():
    with warnings.catch_warnings():
        # vectorbt / its dependencies emit Deprecation/Future warnings on import.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"vectorbt.*")
        import vectorbt as vbt
    return vbt


def run_vectorbt(returns: np.ndarray, orders: Orders, *, init_cash: float = INIT_CASH,
                 borrow: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(net_returns, turnover, costs), each S x H, from one batched vectorbt call."""
    vbt = _import_vectorbt()
    S, H = len(orders.keys), orders.horizon
    N = orders.targets.shape[2]
    growth = 1.0 + clean_returns(returns)[orders.start:orders.end + 1]
    if growth.shape[0] != H:
        raise ValueError(f"returns have {growth.shape[0]} horizon rows, orders need {H}")
    growth[0] = 1.0                         # bar 0 = first rebalance day; its own return is
    close = np.cumprod(growth, axis=0)      # earned before the path starts
    # size: S x H x N target weights on trade days, NaN otherwise. One extra column per
    # strategy, the "loan" (price 1, no fees), is shorted once on bar 0 so vectorbt's cash can
    # pay fees beyond a fully invested target, as the convention's cash leg does (0% interest).
    # Built day-major (H x S x M), the layout vectorbt takes, so no S x H x M copy is made.
    M = N + 1 if borrow else N
    size = np.full((H, S, M), np.nan)
    paths = orders.targets[:, orders.target_index].transpose(1, 0, 2)    # H x S x N
    size[:, :, :N] = np.where(orders.trade.T[:, :, None], paths, np.nan)
    prices = np.ones((H, M))
    prices[:, :N] = close
    fees = np.full(M, float(orders.cost_rate))
    if borrow:
        size[0, :, N] = -float(init_cash)            # short the loan once: cash += init_cash
        fees[N] = 0.0
    size = size.reshape(H, S * M)
    columns = pd.MultiIndex.from_product([range(S), range(M)], names=["strategy", "asset"])
    index = pd.RangeIndex(H)
    close_df = pd.DataFrame(np.tile(prices, (1, S)), index=index, columns=columns)
    size_df = pd.DataFrame(size, index=index, columns=columns)
    from vectorbt.portfolio.enums import SizeType
    types = np.full(M, SizeType.TargetPercent, dtype=np.int64)
    if borrow:
        types[N] = SizeType.TargetAmount
    types = np.tile(types, S)[None, :]
    fee_row = np.tile(fees, S)[None, :]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        pf = vbt.Portfolio.from_orders(
            close=close_df, size=size_df, size_type=types, price=close_df,
            fees=fee_row, init_cash=init_cash, cash_sharing=True,
            group_by="strategy", call_seq="auto", freq="1D")
        value = np.asarray(pf.value(), dtype=float).reshape(H, S).T       # S x H, post-trade
        rec = pf.orders.values
    rec = rec[np.asarray(rec["col"]) % M < N]        # real assets only (not the loan)
    col = np.asarray(rec["col"], dtype=np.int64)
    day = np.asarray(rec["idx"], dtype=np.int64)
    notional = np.abs(np.asarray(rec["size"]) * np.asarray(rec["price"]))
    fees = np.asarray(rec["fees"], dtype=float)
    strat = col // M
    traded = np.zeros((S, H))
    paid = np.zeros((S, H))
    np.add.at(traded, (strat, day), notional)
    np.add.at(paid, (strat, day), fees)
    # trades at the close price change value only by the fees: pre-trade value = post + fees
    pre = value + paid
    prev = np.concatenate([np.full((S, 1), float(init_cash)), value[:, :-1]], axis=1)
    net = value / prev - 1.0
    return net, traded / (2.0 * pre), paid / pre


class VectorbtSimulator(BatchSimulator):
    name = "vectorbt"
    code_version = "1"

    def simulate(self, market: Market, orders: Orders) -> Paths:
        net, turnover, costs = run_vectorbt(market.returns, orders)
        return Paths(net_returns=net, turnover=turnover, costs=costs)
