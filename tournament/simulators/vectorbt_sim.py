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
from dataclasses import dataclass

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


@dataclass(frozen=True)
class VectorbtBook:
    """S strategies' vectorbt book at the close of one day (after its trades): units held of
    each column (S x M: the N assets, then the loan), vectorbt cash (S), the N asset prices
    (S x N, the path's cumprod(1 + R), equal across strategies) and the value (S). A path
    continues from the book of the day before its stored last day (`simulate_from`)."""
    units: np.ndarray
    cash: np.ndarray
    close: np.ndarray
    value: np.ndarray


def run_vectorbt(returns: np.ndarray, orders: Orders, *, init_cash: float = INIT_CASH,
                 borrow: bool = True, book: VectorbtBook | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, VectorbtBook | None]:
    """(net_returns, turnover, costs), each S x H, from one batched vectorbt call, and the book
    at the close of the horizon's second-to-last day (None when H < 2).

    With `book` (the close of the day before orders.start), the path continues from it: one
    extra bar before the horizon re-creates the book with fee-free orders (TargetAmount of
    each column at the book's prices), and every horizon day is simulated as in a full path,
    its first day's return included. The result matches the full path's days to rounding
    (~1e-15 relative: vectorbt's cash is rebuilt by sums, not copied)."""
    vbt = _import_vectorbt()
    S, H = len(orders.keys), orders.horizon
    N = orders.targets.shape[2]
    growth = 1.0 + clean_returns(returns)[orders.start:orders.end + 1]
    if growth.shape[0] != H:
        raise ValueError(f"returns have {growth.shape[0]} horizon rows, orders need {H}")
    M = N + 1 if borrow else N
    lead = 0 if book is None else 1          # the extra bar that re-creates the book
    B = H + lead
    if book is None:
        growth[0] = 1.0                     # bar 0 = first rebalance day; its own return is
        close = np.cumprod(growth, axis=0)  # earned before the path starts
    else:
        if not borrow or book.units.shape != (S, M):
            raise ValueError(f"book of shape {book.units.shape} for {S} strategies x {M} columns")
        # The same sequential product as the full path's, continued from the book's prices.
        close = np.cumprod(np.vstack([book.close[:1], growth]), axis=0)
    # size: B x S x M target weights on trade days, NaN otherwise. One extra column per
    # strategy, the "loan" (price 1, no fees), is shorted once on bar 0 so vectorbt's cash can
    # pay fees beyond a fully invested target, as the convention's cash leg does (0% interest).
    # Built day-major (B x S x M), the layout vectorbt takes, so no S x B x M copy is made.
    size = np.full((B, S, M), np.nan)
    paths = orders.targets[:, orders.target_index].transpose(1, 0, 2)    # H x S x N
    size[lead:, :, :N] = np.where(orders.trade.T[:, :, None], paths, np.nan)
    prices = np.ones((B, M))
    prices[:, :N] = close
    from vectorbt.portfolio.enums import SizeType
    types = np.full((B, M), SizeType.TargetPercent, dtype=np.int64)
    fees = np.full((B, M), float(orders.cost_rate))
    if borrow:
        types[:, N] = SizeType.TargetAmount
        fees[:, N] = 0.0
    if book is None:
        cash0 = np.full(S, float(init_cash))
        if borrow:
            size[0, :, N] = -float(init_cash)        # short the loan once: cash += init_cash
    else:
        size[0] = book.units                         # re-create the book, fee-free
        types[0] = SizeType.TargetAmount
        fees[0] = 0.0
        # cash before those orders: the book's cash, less the loan's proceeds, plus the
        # assets' cost, i.e. the book's value
        cash0 = book.value.astype(float)
    size = size.reshape(B, S * M)
    columns = pd.MultiIndex.from_product([range(S), range(M)], names=["strategy", "asset"])
    index = pd.RangeIndex(B)
    close_df = pd.DataFrame(np.tile(prices, (1, S)), index=index, columns=columns)
    size_df = pd.DataFrame(size, index=index, columns=columns)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        pf = vbt.Portfolio.from_orders(
            close=close_df, size=size_df, size_type=np.tile(types, (1, S)), price=close_df,
            fees=np.tile(fees, (1, S)), init_cash=cash0, cash_sharing=True,
            group_by="strategy", call_seq="auto", freq="1D")
        value = np.asarray(pf.value(), dtype=float).reshape(B, S).T       # S x B, post-trade
        rec = pf.orders.values
        end_book = None
        if H >= 2 and borrow:
            last = B - 2                 # the close of the horizon's second-to-last day
            units = np.asarray(pf.assets(), dtype=float)[last].reshape(S, M)
            cash = np.asarray(pf.cash(), dtype=float)[last].reshape(S)
            end_book = VectorbtBook(units=units, cash=cash,
                                    close=np.tile(close[last], (S, 1)), value=value[:, last])
    rec = rec[(np.asarray(rec["col"]) % M < N) & (np.asarray(rec["idx"]) >= lead)]
    col = np.asarray(rec["col"], dtype=np.int64)
    day = np.asarray(rec["idx"], dtype=np.int64) - lead
    notional = np.abs(np.asarray(rec["size"]) * np.asarray(rec["price"]))
    paid_fees = np.asarray(rec["fees"], dtype=float)
    strat = col // M
    traded = np.zeros((S, H))
    paid = np.zeros((S, H))
    np.add.at(traded, (strat, day), notional)
    np.add.at(paid, (strat, day), paid_fees)
    value = value[:, lead:]
    # trades at the close price change value only by the fees: pre-trade value = post + fees
    pre = value + paid
    first = np.full((S, 1), float(init_cash)) if book is None else book.value[:, None]
    prev = np.concatenate([first, value[:, :-1]], axis=1)
    net = value / prev - 1.0
    return net, traded / (2.0 * pre), paid / pre, end_book


class VectorbtSimulator(BatchSimulator):
    name = "vectorbt"
    code_version = "1"

    def simulate(self, market: Market, orders: Orders) -> Paths:
        net, turnover, costs, book = run_vectorbt(market.returns, orders)
        return Paths(net_returns=net, turnover=turnover, costs=costs, end_state=book)

    def simulate_from(self, market: Market, orders: Orders, state: VectorbtBook) -> Paths:
        net, turnover, costs, book = run_vectorbt(market.returns, orders, book=state)
        return Paths(net_returns=net, turnover=turnover, costs=costs, end_state=book)
