"""Parity of the nautilus_trader simulator against the reference numpy kernel, on real data.

Data: the bundled S&P 500 sample (500 days x 20 stocks), a cube from `run_stage1` with the
custom engine (selection "all", profiles min_variance + equal_weight, plus the equal-weight
baseline = 3 ok strategies, 17 windows, horizon 321 days), cost rate 6 bps.

Measured on this data (nautilus_trader 1.221.0, 1e8 starting balance, prices from 100,
2 cores), |nautilus final equity / custom final equity - 1| over the 3 strategies:
* window ~3e-7 to 7e-7, daily ~1.4e-7 to 2e-7, tolerance ~6e-8 to 3e-7 -> asserted < 1e-4
  (whole-share rounding, price precision 1e-6, commissions rounded to cents);
  max along the equity curve < 1e-6. Turnover and cost totals agree to ~1e-5 relative.
* Trading one day late (orders and targets shifted by a day) moves the equity curve by far
  more than 10 x the tolerance (see test_one_day_late_breaks_parity).
Per backtest: ~0.12 s window / ~0.1-0.2 s tolerance / ~0.6-1.0 s daily (320 trade days).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tournament.config import load_config
from tournament.cube import FAILED, OK
from tournament.data import load_dataset
from tournament.simulators import nautilus_sim
from tournament.simulators.base import Market, run_simulator
from tournament.simulators.custom import CustomSimulator
from tournament.simulators.nautilus_sim import NautilusSimulator
from tournament.simulators.orders import build_orders
from tournament.stage1 import run_stage1

pytestmark = pytest.mark.timeout(600)

MODES = ("window", "daily", "tolerance")
COST_RATE = 0.0006
TOL = 1e-4                 # final equity, relative
TURNOVER_TOL = 1e-4        # turnover / cost totals, relative


@pytest.fixture(scope="module")
def setup():
    ds = load_dataset("sp500")
    config = load_config(engines=["custom"], selections=["all"],
                         profiles=["min_variance", "equal_weight"])
    cube = run_stage1(ds, config)
    st = cube.strategies()
    keys = [tuple(r) for r in st.loc[st["status"] == OK, ["selection", "engine", "profile"]]
            .itertuples(index=False)]
    assert 2 <= len(keys) <= 4
    orders = {m: build_orders(cube, keys, dates=ds.dates, returns=ds.returns, rebalance=m,
                              cost_rate=COST_RATE) for m in MODES}
    market = Market(ds.returns, ds.dates, ds.assets)
    custom = {m: run_simulator(CustomSimulator(), market, orders[m]) for m in MODES}
    return market, keys, orders, custom


@pytest.fixture(scope="module")
def nautilus_results(setup):
    market, _, orders, _ = setup
    return {m: run_simulator(NautilusSimulator(), market, orders[m]) for m in MODES}


def _rel(a, b):
    return np.abs(np.asarray(a) / np.asarray(b) - 1.0)


@pytest.mark.parametrize("mode", MODES)
def test_final_equity_parity(setup, nautilus_results, mode):
    _, keys, orders, custom = setup
    res, ref = nautilus_results[mode], custom[mode]
    assert res.status == [OK] * len(keys), res.reason
    H = orders[mode].horizon
    assert res.net_returns.shape == (len(keys), H)
    assert len(res.dates) == H
    final = _rel(res.equity[:, -1], ref.equity[:, -1])
    print(f"\n{mode}: final rel diff {final}, seconds {res.seconds}")
    assert final.max() < TOL
    # the whole curve, not just the end point
    assert _rel(res.equity, ref.equity).max() < TOL
    # day 0 is -initial cost, like the reference
    np.testing.assert_allclose(res.net_returns[:, 0], ref.net_returns[:, 0], rtol=1e-3)
    assert (res.net_returns[:, 0] < 0).all()
    # turnover and costs only on trade days, totals close to the reference
    trade = orders[mode].trade
    assert (res.turnover[~trade] == 0).all() and (res.costs[~trade] == 0).all()
    assert _rel(res.turnover.sum(axis=1), ref.turnover.sum(axis=1)).max() < TURNOVER_TOL
    assert _rel(res.costs.sum(axis=1), ref.costs.sum(axis=1)).max() < TURNOVER_TOL
    # commissions are rounded to cents per fill: ~1e-10 of a 1e8 account per day
    np.testing.assert_allclose(res.costs, COST_RATE * 2 * res.turnover, rtol=1e-4, atol=1e-9)


def _one_day_late(orders):
    """The same orders executed one day late (day-0 trade on day 1, and so on)."""
    trade = np.zeros_like(orders.trade)
    trade[:, 1:] = orders.trade[:, :-1]
    target_index = orders.target_index.copy()
    target_index[1:] = orders.target_index[:-1]
    return dataclasses.replace(orders, trade=trade, target_index=target_index)


def test_one_day_late_breaks_parity(setup):
    market, keys, orders, custom = setup
    late = _one_day_late(orders["window"])
    res = run_simulator(NautilusSimulator(), market, late)
    assert res.status == [OK] * len(keys), res.reason
    ref = custom["window"]
    final = _rel(res.equity[:, -1], ref.equity[:, -1])
    curve = _rel(res.equity, ref.equity).max(axis=1)
    print(f"\none day late: final rel diff {final}, max curve diff {curve}")
    assert (curve > 10 * TOL).all()
    assert np.median(final) > 10 * TOL
    # and nautilus still agrees with the reference on the late orders themselves
    ref_late = run_simulator(CustomSimulator(), market, late)
    assert _rel(res.equity[:, -1], ref_late.equity[:, -1]).max() < TOL


def test_short_run_is_failed_with_reason(setup, monkeypatch):
    market, keys, orders, _ = setup
    real = nautilus_sim.horizon_prices

    def fewer_days(returns, o):
        return real(returns, o)[:-1]          # the engine then simulates H - 1 days

    monkeypatch.setattr(nautilus_sim, "horizon_prices", fewer_days)
    res = run_simulator(NautilusSimulator(), market, orders["window"])
    H = orders["window"].horizon
    assert res.status == [FAILED] * len(keys)
    for reason in res.reason:
        assert reason.startswith("nautilus: ")
        assert f"simulated {H - 1} days, expected {H}" in reason
    assert np.isnan(res.net_returns).all()


def test_error_inside_engine_is_failed_and_next_run_works(setup, monkeypatch):
    market, keys, orders, custom = setup
    o = dataclasses.replace(orders["window"], keys=keys[:1])
    real = nautilus_sim._strategy_class

    def broken_class():
        base = real()

        class Broken(base):
            def _on_close(self):
                if self.day == 9:
                    raise ZeroDivisionError("boom on day 10")
                super()._on_close()
        return Broken

    monkeypatch.setattr(nautilus_sim, "_strategy_class", broken_class)
    res = run_simulator(NautilusSimulator(), market, o)
    assert res.status == [FAILED]
    assert res.reason[0].startswith("nautilus: ")
    monkeypatch.setattr(nautilus_sim, "_strategy_class", real)
    # a later, valid run in the same process still works
    res = run_simulator(NautilusSimulator(), market, o)
    assert res.status == [OK], res.reason
    assert _rel(res.equity[0, -1], custom["window"].equity[0, -1]) < TOL


def test_three_consecutive_backtests_in_one_process(setup):
    market, keys, orders, custom = setup
    sim = NautilusSimulator()
    o = orders["tolerance"]
    ctx = sim.prepare(market, o)
    paths = [sim.simulate_one(ctx, 0) for _ in range(3)]
    ref = custom["tolerance"].equity[0, -1]
    for p in paths:
        assert p.net_returns.shape == (o.horizon,)
        assert abs(np.prod(1 + p.net_returns) / ref - 1) < TOL
    for p in paths[1:]:
        np.testing.assert_array_equal(p.net_returns, paths[0].net_returns)
