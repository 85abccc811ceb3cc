"""The simulator protocol (tournament/simulators/base.py): simulators keep no per-call state,
`run_simulator` does the status / timing / shape bookkeeping once, and TOURNAMENT_FAULTS
simulator rules are injected by wrapping the simulator the registry returns. Small synthetic
data (40 days x 3 assets), so every simulator runs in seconds."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tournament import registry
from tournament.cube import FAILED, OK
from tournament.simulators.base import (BatchSimulator, Market, Paths, PerStrategySimulator,
                                        StrategyPath, run_simulator)
from tournament.simulators.orders import orders_from_schedule

pytestmark = pytest.mark.timeout(300)

KEYS = [("all", "toy", "a"), ("all", "toy", "b")]


def _market(seed: int) -> Market:
    rng = np.random.default_rng(seed)
    returns = rng.normal(0.0005, 0.01, (40, 3))
    returns[5, 1] = np.nan                                    # a gap earns 0%
    return Market(returns, pd.bdate_range("2022-01-03", periods=40), ("AAA", "BBB", "CCC"))


def _orders(market: Market, keys=KEYS):
    two = np.array([[[0.5, 0.3, 0.2], [0.2, 0.3, 0.5]], [[0.4, 0.4, 0.2], [0.1, 0.6, 0.3]]])
    targets = two[np.arange(len(keys)) % 2]                   # S x K x N
    return orders_from_schedule(targets, np.array([10, 25]), 39, keys=keys,
                                returns=market.returns, rebalance="window", cost_rate=6e-4)


def test_market_checks_dates_against_rows():
    with pytest.raises(ValueError, match="3 dates for 4 return rows"):
        Market(np.zeros((4, 2)), pd.bdate_range("2022-01-03", periods=3))


@pytest.mark.parametrize("name", list(registry.SIMULATORS))
def test_one_instance_on_two_markets_equals_fresh_instances(name):
    """No hidden state: interleaved calls on one instance give what fresh instances give,
    bit for bit, and the instance holds nothing afterwards."""
    one, two = _market(1), _market(2)
    sim = registry.get_simulator(name)
    first = run_simulator(sim, one, _orders(one))
    second = run_simulator(sim, two, _orders(two))
    for market, got in ((one, first), (two, second)):
        want = run_simulator(registry.get_simulator(name), market, _orders(market))
        assert got.status == [OK, OK], got.reason
        for field in ("net_returns", "turnover", "costs"):
            np.testing.assert_array_equal(getattr(got, field), getattr(want, field))
    assert vars(sim) == {}
    assert not np.array_equal(first.net_returns, second.net_returns)


class _Toy(PerStrategySimulator):
    name = "toy"

    def prepare(self, market, orders):
        if market.returns.shape[1] == 0:
            raise ValueError("no assets")
        return orders.horizon

    def simulate_one(self, ctx, s):
        if s == 1:
            raise KeyError("strategy 1 breaks")
        return StrategyPath(net_returns=np.zeros(ctx), turnover=np.zeros(ctx),
                            costs=np.zeros(ctx))


class _ShortBatch(BatchSimulator):
    name = "short_batch"

    def simulate(self, market, orders):
        z = np.zeros((len(orders.keys), orders.horizon - 1))
        return Paths(net_returns=z, turnover=z, costs=z)


def test_per_strategy_failure_is_isolated_and_prepare_failure_fails_all():
    market = _market(0)
    res = run_simulator(_Toy(), market, _orders(market))
    assert res.status == [OK, FAILED]
    assert res.reason[1].startswith("toy: KeyError: ") and "strategy 1 breaks" in res.reason[1]
    assert np.isnan(res.net_returns[1]).all() and (res.net_returns[0] == 0).all()
    assert res.seconds.shape == (2,) and (res.seconds >= 0).all()
    empty = Market(np.zeros((40, 0)), market.dates)
    res = run_simulator(_Toy(), empty, _orders(market))
    assert res.status == [FAILED, FAILED]
    assert res.reason == ["toy: ValueError: no assets"] * 2


def test_batched_wrong_shape_fails_the_whole_batch_with_reason():
    market = _market(0)
    orders = _orders(market)
    res = run_simulator(_ShortBatch(), market, orders)
    assert res.status == [FAILED, FAILED]
    assert res.reason == [f"short_batch: RuntimeError: returned {orders.horizon - 1} days of "
                          f"net_returns, expected {orders.horizon}"] * 2
    assert res.net_returns.shape == (2, orders.horizon) and np.isnan(res.net_returns).all()


def test_no_strategies_is_an_empty_result():
    market = _market(0)
    res = run_simulator(_ShortBatch(), market, _orders(market, keys=[]))
    assert res.keys == [] and res.status == [] and res.net_returns.shape == (0, 30)


def test_registry_wraps_simulators_only_under_simulator_fault_rules(monkeypatch):
    market = _market(0)
    orders = _orders(market)
    monkeypatch.setenv("TOURNAMENT_FAULTS", "engine:custom/min_variance:raise")
    assert type(registry.get_simulator("custom")).__name__ == "CustomSimulator"
    monkeypatch.setenv("TOURNAMENT_FAULTS", "simulator:custom/all/toy/b:raise")
    res = run_simulator(registry.get_simulator("custom"), market, orders)
    assert res.status == [FAILED, FAILED]          # a batched simulator fails as a whole
    assert res.reason[0] == "custom: RuntimeError: injected simulator failure"
    monkeypatch.setenv("TOURNAMENT_FAULTS", "simulator:custom/all/toy/b:short")
    res = run_simulator(registry.get_simulator("custom"), market, orders)
    assert res.status == [FAILED, FAILED] and "returned 29 days" in res.reason[0]


def test_per_strategy_fault_rules_touch_only_their_strategy(monkeypatch):
    from tournament.faults import with_simulator_faults
    market = _market(0)
    orders = _orders(market, keys=[KEYS[0], KEYS[0][:2] + ("c",), KEYS[1]])
    monkeypatch.setenv("TOURNAMENT_FAULTS", "simulator:toy/all/toy/a:short")
    res = run_simulator(with_simulator_faults(_Toy()), market, orders)
    assert res.status == [FAILED, FAILED, OK]      # a: short; s == 1 raises in _Toy itself
    assert "returned 29 days of net_returns, expected 30" in res.reason[0]
    assert "strategy 1 breaks" in res.reason[1]
