"""The simulator protocol and the one accounting convention all simulators share.

Protocol: a simulator is told everything per call and keeps nothing per call on `self`
(warm imports and caches of immutable things are fine). It gets a `Market` (the returns,
dates and asset names) and the `Orders` (which days trade, to which target; built once in
`orders.py`, so rebalance modes mean the same everywhere), and is one of two kinds:

* `BatchSimulator.simulate(market, orders) -> Paths`: all S strategies at once (S x H arrays).
  A failure fails the whole batch, with its reason.
* `PerStrategySimulator.prepare(market, orders) -> ctx` (what the strategies share, e.g. a
  market frame), then `simulate_one(ctx, s) -> StrategyPath` (H arrays) for each strategy s.
  A failure fails that strategy only; a failed `prepare` fails every strategy.

`run_simulator(simulator, market, orders)` is the one place that times, checks shapes and
finiteness, records failures as values (never replaced by another simulator) and builds the
`SimulationResult`. A new simulator is one file here (a class with `name`, `code_version`
and the methods of its kind) plus one `register("simulator", ...)` line in
`tournament/registry.py`.

Convention (see README "Accounting"):
* returns row t is the simple return from close t-1 to close t (NaN gap -> 0%);
* a trade on day t happens at the close of day t; new holdings first earn row t+1;
* cost = cost_rate x sum |traded notional|, trade sizes from the pre-cost portfolio value,
  paid from an explicit cash leg (0% interest; may go slightly negative by the cost);
* holdings carry across windows; a strategy is ONE continuous path from the first rebalance
  day to the end of the last test window (no date twice);
* one-way turnover = sum |traded notional| / (2 x pre-trade value).
"""
from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from ..cube import FAILED, OK


@dataclass(frozen=True, eq=False)
class Market:
    """What every simulator reads: T x N returns (NaN = gap, never written), T dates and the
    N asset names (for simulators that label instruments)."""
    returns: np.ndarray
    dates: pd.DatetimeIndex
    assets: tuple[str, ...] = ()

    def __post_init__(self):
        if len(self.dates) != self.returns.shape[0]:
            raise ValueError(f"{len(self.dates)} dates for {self.returns.shape[0]} return rows")

    @property
    def available(self) -> np.ndarray:
        """T x N availability mask: True where the asset has a price that day."""
        return np.isfinite(self.returns)

    def horizon_dates(self, orders: Orders) -> pd.DatetimeIndex:
        return pd.DatetimeIndex(self.dates[orders.start:orders.end + 1])


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
    end_state: Any = None                # batched book before the last day (continuable sims)

    @property
    def equity(self) -> np.ndarray:
        return np.cumprod(1 + self.net_returns, axis=1)


@dataclass(frozen=True)
class Paths:
    """What a batched simulator returns: S x H arrays, and (a simulator that can continue
    paths) its book at the close of the second-to-last day, batched over the S strategies."""
    net_returns: np.ndarray
    turnover: np.ndarray
    costs: np.ndarray
    end_state: Any = None


@dataclass(frozen=True)
class StrategyPath:
    """What a per-strategy simulator returns for one strategy: H arrays."""
    net_returns: np.ndarray
    turnover: np.ndarray
    costs: np.ndarray


class Simulator:
    name: ClassVar[str]
    code_version: ClassVar[str] = "1"
    # Libraries imported lazily by the simulator, imported by a Ray worker's warm-up.
    warm_imports: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def continues_paths(cls) -> bool:
        """Whether the simulator can continue a stored path (only a batch simulator that
        overrides `simulate_from` can); every other simulator simulates whole paths."""
        return False


class BatchSimulator(Simulator):
    def simulate(self, market: Market, orders: Orders) -> Paths:
        raise NotImplementedError

    # A simulator that can continue paths overrides `simulate_from` and returns its book in
    # `Paths.end_state` (a dataclass of arrays with the S strategies first, see
    # tournament.simulators.resume): `simulate_from(market, orders, state)` simulates the
    # horizon of `orders` starting from `state`, the book at the close of the day before
    # orders.start, and must give that horizon's days as a full path would.
    def simulate_from(self, market: Market, orders: Orders, state: Any) -> Paths:
        raise NotImplementedError(f"{self.name} cannot continue a path")

    @classmethod
    def continues_paths(cls) -> bool:
        return cls.simulate_from is not BatchSimulator.simulate_from


class PerStrategySimulator(Simulator):
    def prepare(self, market: Market, orders: Orders) -> Any:
        """What the strategies of one call share (default: the market and the orders)."""
        return market, orders

    def simulate_one(self, ctx: Any, s: int) -> StrategyPath:
        raise NotImplementedError


def run_simulator(simulator: Simulator, market: Market, orders: Orders, *,
                  state: Any = None) -> SimulationResult:
    """Simulate every strategy of `orders`; failures are recorded per strategy, with reasons.
    With `state` (a batch simulator that continues paths), from that book."""
    out = failed_result(simulator.name, orders, market.horizon_dates(orders), "not simulated")
    if not orders.keys:
        return out
    if state is not None:
        if not (isinstance(simulator, BatchSimulator) and simulator.continues_paths()):
            raise TypeError(f"{simulator.name} cannot continue a path")
        _run_batch(simulator, market, orders, out, state=state)
    elif isinstance(simulator, BatchSimulator):
        _run_batch(simulator, market, orders, out)
    elif isinstance(simulator, PerStrategySimulator):
        _run_each(simulator, market, orders, out)
    else:
        raise TypeError(f"{type(simulator).__name__} is neither a BatchSimulator nor a "
                        "PerStrategySimulator")
    return out


def _run_batch(simulator: BatchSimulator, market: Market, orders: Orders,
               out: SimulationResult, *, state: Any = None) -> None:
    shape = (len(orders.keys), orders.horizon)

    def call():
        paths = (simulator.simulate(market, orders) if state is None
                 else simulator.simulate_from(market, orders, state))
        return _check_shapes(paths, shape)
    ok, paths, _ = _for_all(simulator, out, call)
    if not ok:
        return
    out.end_state = paths.end_state
    finite = np.isfinite(paths.net_returns).all(axis=1)
    for s in range(shape[0]):
        if finite[s]:
            _record(out, s, paths.net_returns[s], paths.turnover[s], paths.costs[s])
        else:
            out.reason[s] = f"{simulator.name}: non-finite net returns"


def _run_each(simulator: PerStrategySimulator, market: Market, orders: Orders,
              out: SimulationResult) -> None:
    ok, ctx, shared = _for_all(simulator, out, lambda: simulator.prepare(market, orders))
    if not ok:
        return
    for s in range(len(orders.keys)):
        t0 = time.perf_counter()
        try:
            path = simulator.simulate_one(ctx, s)
            _check_shapes(path, (orders.horizon,))
            if not np.isfinite(path.net_returns).all():
                raise RuntimeError("non-finite net returns")
            _record(out, s, path.net_returns, path.turnover, path.costs)
        except Exception as exc:  # noqa: BLE001 - isolated to this strategy
            out.reason[s] = _reason(simulator.name, exc)
        out.seconds[s] = shared + time.perf_counter() - t0      # + its share of prepare


def _for_all(simulator: Simulator, out: SimulationResult, call) -> tuple[bool, Any, float]:
    """`call()` on behalf of every strategy: (ok, its value, seconds per strategy). Each
    strategy is charged an equal share of the time; on an exception each fails with it."""
    S = len(out.keys)
    t0 = time.perf_counter()
    try:
        value, ok = call(), True
    except Exception as exc:  # noqa: BLE001 - recorded, never replaced by another sim
        value, ok = None, False
        out.reason[:] = [_reason(simulator.name, exc)] * S
    out.seconds[:] = (time.perf_counter() - t0) / S
    return ok, value, float(out.seconds[0])


def _record(out: SimulationResult, s: int, net, turnover, costs) -> None:
    out.net_returns[s], out.turnover[s], out.costs[s] = net, turnover, costs
    out.status[s], out.reason[s] = OK, ""


def _reason(name: str, exc: Exception) -> str:
    reason = f"{name}: {type(exc).__name__}: {exc}"
    return reason if str(exc) else reason + " " + traceback.format_exc(limit=2)


def _check_shapes(paths: Paths | StrategyPath, shape: tuple[int, ...]) -> Paths | StrategyPath:
    for name in ("net_returns", "turnover", "costs"):
        got = np.shape(getattr(paths, name))
        if got != shape:
            other = "" if got[:-1] == shape[:-1] else f" (shape {got}, expected {shape})"
            raise RuntimeError(f"returned {got[-1] if got else 0} days of {name}, expected "
                               f"{shape[-1]}{other}")
    return paths


def failed_result(simulator: str, orders: Orders, dates: pd.DatetimeIndex,
                  reason: str) -> SimulationResult:
    """Every strategy of `orders` failed with `reason` (NaN returns); filled in on success."""
    S, H = len(orders.keys), orders.horizon
    net_returns = np.zeros((S, H))
    net_returns[:] = np.nan
    return SimulationResult(simulator=simulator, rebalance=orders.rebalance,
                            keys=list(orders.keys), dates=pd.DatetimeIndex(dates),
                            net_returns=net_returns, turnover=np.zeros((S, H)),
                            costs=np.zeros((S, H)), status=[FAILED] * S, reason=[reason] * S,
                            seconds=np.zeros(S))


def clean_returns(returns: np.ndarray) -> np.ndarray:
    """Gaps earn 0% (held at last price), per the data policy."""
    return np.nan_to_num(returns, nan=0.0)
