"""nautilus_trader simulator: one real `BacktestEngine` (orders, fills, fees) per strategy path.

Mapping to the shared convention (verified on nautilus_trader 1.221.0):
* One `Equity` instrument per asset (price precision 6, maker/taker fee = cost rate, so a
  fill pays cost_rate x |fill notional| from the account, like our cash leg), on one venue
  with a NETTING order book and a MARGIN account at leverage 1 and a 1e8 starting balance
  (whole-share rounding then moves results by < 1e-6). The risk engine is bypassed.
* Prices = cumprod(1 + R) over the horizon (NaN gaps -> 0%), rescaled to start at 100.
  Horizon day i (returns row orders.start + i) is one daily bar per asset with
  O = H = L = C = that day's close and a huge volume, so market orders fill at the close.
* The strategy receives bars one instrument at a time; once all N bars of a timestamp have
  arrived it records the pre-trade NAV (= account balance + unrealized PnL at the close) and,
  when `orders.trade[s][i]`, submits market orders to round(w x NAV / close) shares,
  sells first. The fills (notional and commission) are recorded from `OrderFilled` events.
* From those records: value after trade = NAV - fees of the day; net return day 0 =
  value_after[0] / initial - 1 (= -initial cost), then value_after[i] / value_after[i-1] - 1;
  one-way turnover = sum |fill notional| / (2 NAV); costs = fees / NAV.
* A run that simulates fewer (or more) days than the horizon raises (never a short path).
* Memory grows per backtest in one process even after `dispose()` (measured at 20 assets x
  321 days: ~3.4 MB window mode, ~27 MB daily mode; ~14 MB at 50 assets per the notes): run many
  backtests in recycled worker processes (e.g. Ray `max_calls`), see
  benchmarks/nautilus_memory.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import numpy as np
import pandas as pd

from .base import Market, Orders, PerStrategySimulator, StrategyPath, clean_returns

INITIAL_BALANCE = 1.0e8
START_PRICE = 100.0
PRICE_PRECISION = 6
BAR_VOLUME = 1.0e12
VENUE_NAME = "SIM"
SECONDS_AFTER_MIDNIGHT = 20 * 3600          # bars stamped at 20:00 UTC of each date


def horizon_prices(returns: np.ndarray, orders: Orders) -> np.ndarray:
    """H x N closes: cumprod(1 + R) over the horizon rows, day 0 = START_PRICE."""
    R = clean_returns(returns)[orders.start:orders.end + 1].astype(float).copy()
    R[0] = 0.0                                   # day 0 is the first close we trade at
    return START_PRICE * np.cumprod(1.0 + R, axis=0)


def _timestamps(dates: pd.DatetimeIndex) -> np.ndarray:
    """Nanosecond timestamps of the horizon days (unique, increasing)."""
    idx = pd.DatetimeIndex(dates)
    if idx.tz is not None:
        idx = idx.tz_convert("UTC").tz_localize(None)
    ts = idx.normalize().asi8 + SECONDS_AFTER_MIDNIGHT * 10**9
    if not (np.diff(ts) > 0).all():
        raise ValueError("horizon dates are not strictly increasing")
    return ts.astype(np.int64)


def _strategy_class():
    from nautilus_trader.model.enums import OrderSide
    from nautilus_trader.model.objects import Price, Quantity
    from nautilus_trader.trading.strategy import Strategy

    class ScheduleStrategy(Strategy):
        """Records pre-trade NAV at each close and trades to the scheduled targets."""

        def __init__(self, instrument_ids, bar_types, targets, trade, venue, currency):
            super().__init__()
            self.iids = list(instrument_ids)
            self.bar_types = list(bar_types)
            self.pos_of = {iid: j for j, iid in enumerate(self.iids)}
            self.targets = targets              # H x N
            self.trade = trade                  # H bool
            self.venue = venue
            self.currency = currency
            self.N = len(self.iids)
            self.H = len(trade)
            self.closes = np.zeros(self.N)
            self.seen = 0
            self.current_ts = None
            self.day = -1                       # horizon day being processed
            self.nav = []                       # pre-trade NAV per completed day
            self.fees = np.zeros(self.H)
            self.notional = np.zeros(self.H)
            self.fills = 0
            self.fill_days_out_of_range = 0
            self.errors: list[str] = []

        def on_start(self):
            for bt in self.bar_types:
                self.subscribe_bars(bt)

        def on_bar(self, bar):
            ts = bar.ts_event
            if ts != self.current_ts:
                if self.current_ts is not None and self.seen != self.N:
                    self.errors.append(f"timestamp {self.current_ts}: {self.seen}/{self.N} bars")
                self.current_ts = ts
                self.seen = 0
            self.closes[self.pos_of[bar.bar_type.instrument_id]] = bar.close.as_double()
            self.seen += 1
            if self.seen == self.N:
                self._on_close()

        def _nav(self) -> float:
            account = self.portfolio.account(self.venue)
            nav = account.balance_total(self.currency).as_double()
            for position in self.cache.positions_open(venue=self.venue):
                j = self.pos_of[position.instrument_id]
                px = Price(self.closes[j], PRICE_PRECISION)
                nav += position.unrealized_pnl(px).as_double()
            return nav

        def _on_close(self):
            self.day += 1
            i = self.day
            nav = self._nav()
            self.nav.append(nav)
            if i >= self.H or not self.trade[i]:
                return
            held = np.array([float(self.portfolio.net_position(iid)) for iid in self.iids])
            want = np.rint(self.targets[i] * nav / self.closes)
            delta = want - held
            sells = [(j, -d) for j, d in enumerate(delta) if d < 0]
            buys = [(j, d) for j, d in enumerate(delta) if d > 0]
            for side, legs in ((OrderSide.SELL, sells), (OrderSide.BUY, buys)):
                for j, qty in legs:
                    order = self.order_factory.market(
                        instrument_id=self.iids[j], order_side=side,
                        quantity=Quantity(qty, 0))
                    self.submit_order(order)

        def on_order_filled(self, event):
            i = self.day
            if not 0 <= i < self.H:
                self.fill_days_out_of_range += 1
                return
            self.fills += 1
            self.notional[i] += event.last_qty.as_double() * event.last_px.as_double()
            if event.commission is not None:
                self.fees[i] += event.commission.as_double()

    return ScheduleStrategy


def run_backtest(prices: np.ndarray, targets: np.ndarray, trade: np.ndarray,
                 timestamps: np.ndarray, cost_rate: float,
                 names: tuple[str, ...] = ()) -> dict:
    """One BacktestEngine run; returns raw per-day records (nav, fees, notional)."""
    from nautilus_trader.backtest.engine import BacktestEngine, BacktestEngineConfig
    from nautilus_trader.config import LoggingConfig, RiskEngineConfig
    from nautilus_trader.model.currencies import USD
    from nautilus_trader.model.data import Bar, BarType
    from nautilus_trader.model.enums import AccountType, OmsType
    from nautilus_trader.model.identifiers import InstrumentId, Symbol, TraderId, Venue
    from nautilus_trader.model.instruments import Equity
    from nautilus_trader.model.objects import Money, Price, Quantity

    H, N = prices.shape
    venue = Venue(VENUE_NAME)
    fee = Decimal(repr(float(cost_rate)))
    symbols = [f"A{j}" for j in range(N)]
    if len(names) == N:     # the tickers when alphanumeric and unique ('_' means a spread)
        clean = ["".join(c for c in str(n) if c.isalnum()).upper()[:20] for n in names]
        if all(clean) and len(set(clean)) == N:
            symbols = clean
    instruments = [Equity(instrument_id=InstrumentId(Symbol(sym), venue), raw_symbol=Symbol(sym),
                          currency=USD, price_precision=PRICE_PRECISION,
                          price_increment=Price(10.0 ** -PRICE_PRECISION, PRICE_PRECISION),
                          lot_size=Quantity.from_int(1), ts_event=0, ts_init=0,
                          maker_fee=fee, taker_fee=fee) for sym in symbols]
    bar_types = [BarType.from_str(f"{inst.id}-1-DAY-LAST-EXTERNAL") for inst in instruments]

    engine = BacktestEngine(config=BacktestEngineConfig(
        trader_id=TraderId("BACKTESTER-001"),
        logging=LoggingConfig(log_level="ERROR"),
        risk_engine=RiskEngineConfig(bypass=True)))
    try:
        engine.add_venue(venue=venue, oms_type=OmsType.NETTING, account_type=AccountType.MARGIN,
                         base_currency=USD, starting_balances=[Money(INITIAL_BALANCE, USD)],
                         default_leverage=Decimal(1), bar_execution=True)
        volume = Quantity(BAR_VOLUME, 0)
        for j, (inst, bt) in enumerate(zip(instruments, bar_types)):
            engine.add_instrument(inst)
            bars = []
            for i in range(H):
                px = Price(float(prices[i, j]), PRICE_PRECISION)
                t = int(timestamps[i])
                bars.append(Bar(bt, px, px, px, px, volume, t, t))
            engine.add_data(bars, sort=(j == N - 1))
        strategy = _strategy_class()(
            [inst.id for inst in instruments], bar_types, targets, trade, venue, USD)
        engine.add_strategy(strategy)
        try:
            engine.run()
        except BaseException:
            _end_quietly(engine)    # else dispose() logs RUNNING -> DISPOSE state errors
            raise
        if strategy.errors:
            raise RuntimeError("; ".join(strategy.errors[:3]))
        return {"nav": np.array(strategy.nav), "fees": strategy.fees.copy(),
                "notional": strategy.notional.copy(), "fills": strategy.fills,
                "late_fills": strategy.fill_days_out_of_range}
    finally:
        engine.dispose()


def _end_quietly(engine) -> None:
    try:
        engine.end()
    except Exception:  # noqa: BLE001 - already failing; the original error is raised
        pass


def path_from_records(rec: dict, horizon: int) -> StrategyPath:
    nav, fees, notional = rec["nav"], rec["fees"], rec["notional"]
    if nav.shape[0] != horizon:
        raise RuntimeError(f"nautilus simulated {nav.shape[0]} days, expected {horizon}")
    if rec.get("late_fills"):
        raise RuntimeError(f"{rec['late_fills']} fills outside the horizon days")
    value_after = nav - fees
    prev = np.concatenate([[INITIAL_BALANCE], value_after[:-1]])
    net = value_after / prev - 1.0
    turnover = notional / (2.0 * nav)
    costs = fees / nav
    return StrategyPath(net_returns=net, turnover=turnover, costs=costs)


@dataclass(frozen=True)
class Prepared:
    """What the strategies of one call share: the bars' prices and timestamps."""
    prices: np.ndarray            # H x N closes
    timestamps: np.ndarray        # H bar timestamps (ns)
    assets: tuple[str, ...]
    orders: Orders


class NautilusSimulator(PerStrategySimulator):
    name = "nautilus"
    warm_imports = ("nautilus_trader.backtest.engine", "nautilus_trader.model.instruments")
    code_version = "1"

    def prepare(self, market: Market, orders: Orders) -> Prepared:
        return Prepared(horizon_prices(market.returns, orders),
                        _timestamps(market.horizon_dates(orders)), tuple(market.assets), orders)

    def simulate_one(self, ctx: Prepared, s: int) -> StrategyPath:
        orders = ctx.orders
        H = orders.horizon
        targets = np.nan_to_num(orders.target_path(s).astype(float), nan=0.0)
        trade = np.asarray(orders.trade[s], dtype=bool)
        if trade.shape[0] != H:
            raise ValueError(f"trade has {trade.shape[0]} days, horizon {H}")
        rec = run_backtest(ctx.prices, targets, trade, ctx.timestamps, orders.cost_rate,
                           ctx.assets)
        return path_from_records(rec, H)
