"""tournament.metrics against independent computations: skfolio's risk measures, pandas,
and hand-worked examples (no tournament code on the expected side)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import skfolio.measures as sk

from tournament import metrics


@pytest.fixture(scope="module")
def daily():
    return np.random.default_rng(7).normal(0.0004, 0.011, 753)


@pytest.mark.parametrize("beta", [0.9, 0.95, 0.99])
def test_var_and_cvar_match_skfolio(daily, beta):
    # skfolio: historical VaR/CVaR as positive losses, Rockafellar-Uryasev CVaR.
    assert metrics.value_at_risk(daily, beta) == pytest.approx(sk.value_at_risk(daily, beta),
                                                              rel=1e-12)
    assert metrics.conditional_value_at_risk(daily, beta) == pytest.approx(
        sk.cvar(daily, beta), rel=1e-12)


def test_cvar_worked_example_with_fractional_atom():
    # 10 returns, beta 0.95: tail mass 0.5 of the single worst return -> CVaR = -(-0.08) = 0.08;
    # beta 0.85: tail 1.5 = worst (0.08) + half of the second worst (0.05) -> 0.105/1.5 = 0.07.
    r = np.array([0.01, -0.08, 0.02, -0.05, 0.0, 0.03, -0.01, 0.04, 0.005, -0.02])
    assert metrics.conditional_value_at_risk(r, 0.95) == pytest.approx(0.08)
    assert metrics.conditional_value_at_risk(r, 0.85) == pytest.approx((0.08 + 0.5 * 0.05) / 1.5)
    assert metrics.value_at_risk(r, 0.85) == pytest.approx(0.05)


def test_max_drawdown_hand_example_and_skfolio():
    r = np.array([0.1, -0.2, 0.05, 0.1, -0.3, 0.5])
    equity = np.cumprod(1 + r)                       # 1.1, 0.88, 0.924, 1.0164, 0.71148, 1.06722
    assert metrics.max_drawdown(r) == pytest.approx(1 - 0.71148 / 1.1, abs=1e-12)
    # A first-day loss counts from the starting equity 1.0.
    assert metrics.max_drawdown(np.array([-0.1, 0.05])) == pytest.approx(0.1)
    dd = sk.get_drawdowns(r, compounded=True)         # fractions below the running peak
    assert metrics.max_drawdown(r) == pytest.approx(-dd.min(), rel=1e-12)
    assert equity[-1] == pytest.approx(1.06722)


def test_sharpe_and_sortino_match_pandas(daily):
    s = pd.Series(daily)
    expected = s.mean() / s.std(ddof=1) * math.sqrt(252)
    assert metrics.sharpe_ratio(daily) == pytest.approx(expected, rel=1e-12)
    rf = 0.0001
    assert metrics.sharpe_ratio(daily, risk_free=rf) == pytest.approx(
        (s - rf).mean() / (s - rf).std(ddof=1) * math.sqrt(252), rel=1e-12)
    downside = math.sqrt((np.minimum(daily, 0) ** 2).sum() / (daily.size - 1))
    assert metrics.sortino_ratio(daily) == pytest.approx(s.mean() / downside * math.sqrt(252),
                                                         rel=1e-12)
    assert math.isnan(metrics.sharpe_ratio(np.full(10, 0.001)))   # zero dispersion -> NaN
    assert math.isnan(metrics.sharpe_ratio(np.array([0.01])))


def test_cagr_is_geometric_and_nan_below_half_a_year():
    r = np.full(252, (1.21) ** (1 / 252) - 1)       # +21% over one year of 252 days
    assert metrics.cagr(r) == pytest.approx(0.21, rel=1e-10)
    assert metrics.cagr(r[:504 // 4]) == pytest.approx(0.21, rel=1e-10)   # 126 days: annualised
    assert math.isnan(metrics.cagr(r[:125]))


def test_window_stats_segments_start_the_day_after_each_rebalance():
    r = np.array([-0.001, 0.01, 0.02, -0.01, 0.03, 0.0, 0.01])
    rets, _ = metrics.window_stats(r, np.array([0, 3]))
    # segments [1, 3] and [4, 6]
    assert rets[0] == pytest.approx(1.01 * 1.02 * 0.99 - 1)
    assert rets[1] == pytest.approx(1.03 * 1.0 * 1.01 - 1)


def test_compute_metrics_treats_day_zero_as_the_buy_in_cost_only(daily):
    n = 300
    r = daily[:n].copy()
    r[0] = -0.0006                                   # buy-in cost only
    turnover = np.zeros(n)
    turnover[0] = 0.5                                # buy-in from cash (not counted)
    turnover[[40, 80, 120]] = [0.1, 0.2, 0.3]
    costs = np.where(turnover > 0, turnover * 0.0012, 0.0)
    m = metrics.compute_metrics(r, turnover, costs, window_starts=np.array([0, 40, 80, 120]))
    held = pd.Series(r[1:])
    assert m["n_days"] == n
    assert m["total_return"] == pytest.approx(np.prod(1 + r) - 1, rel=1e-12)
    assert m["final_equity"] == pytest.approx(np.prod(1 + r), rel=1e-12)
    assert m["volatility"] == pytest.approx(held.std(ddof=1) * math.sqrt(252), rel=1e-12)
    assert m["sharpe"] == pytest.approx(held.mean() / held.std(ddof=1) * math.sqrt(252),
                                        rel=1e-12)
    assert m["win_rate"] == pytest.approx((held > 0).mean())
    assert m["n_rebalances"] == 3
    assert m["turnover_per_rebalance"] == pytest.approx(0.2)
    assert m["turnover"] == pytest.approx(0.6 / (n - 1) * 252)
    assert m["costs"] == pytest.approx(costs.sum())
    assert m["cagr"] == pytest.approx(np.prod(1 + r) ** (252 / (n - 1)) - 1, rel=1e-12)
    assert m["calmar"] == pytest.approx(m["cagr"] / m["max_drawdown"], rel=1e-12)
    assert set(m) == set(metrics.SCALAR_METRICS)
