"""Research correctness (issue 14): numbers a researcher would quote, checked by hand.

Gaps in prices, the declared policy for windows that cannot be solved, one solver-status
rule, the DSR trial count, selection inside per-cell failure handling, metric periods,
source lengths and the benchmark bought once.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tournament.data import (from_prices_frame, load_dataset, make_synthetic,
                             returns_from_prices)
from tournament.selection import select_all
from tournament.simulators.base import clean_returns
from tournament.simulators.custom import simulate_paths


# ----------------------------------------------------------------------------- 1. gaps
def test_gap_return_is_taken_from_the_last_known_price():
    prices = pd.DataFrame({"A": [100.0, 100.0, np.nan, 50.0, 50.0],
                           "B": [100.0, 110.0, 99.0, 99.0, 99.0]},
                          index=pd.bdate_range("2020-01-01", periods=5))
    r = returns_from_prices(prices)
    np.testing.assert_array_equal(r["A"].to_numpy(), [0.0, np.nan, -0.5, 0.0])
    ds = from_prices_frame(prices, source="gap")
    assert ds.available[:, 0].tolist() == [True, False, True, True]
    # Equal weight bought at the close of row 0 (A 100, B 110), held to the end (A 50, B 99):
    # 0.5 * 50 / 100 + 0.5 * 99 / 110 = 0.25 + 0.45 = 0.70.
    targets = np.full((1, 1, 2), 0.5)
    paths = simulate_paths(clean_returns(ds.returns), 0, targets, np.zeros(4, dtype=int),
                           trade=np.array([[True, False, False, False]]), cost_rate=0.0)
    assert np.prod(1 + paths.net_returns[0]) == pytest.approx(0.70, abs=1e-15)
    # Eligibility still sees the gap: a training slice holding row 1 leaves A out.
    assert select_all(ds.returns[0:3], top_k=1).tolist() == [False, True]
    assert select_all(ds.returns[1:4], top_k=1).tolist() == [False, True]
    assert select_all(ds.returns[2:4], top_k=1).tolist() == [True, False]   # B constant there


def test_gap_end_to_end_final_equity_equals_price_ratio():
    """5 assets, 200 days, equal weight, asset 0 halves across a one-day gap: the final
    equity of buy-and-hold is the mean price ratio, whatever happens in the gap."""
    rng = np.random.default_rng(5)
    prices = pd.DataFrame(100 * np.cumprod(1 + rng.normal(0.0003, 0.01, (201, 5)), axis=0),
                          index=pd.bdate_range("2020-01-01", periods=201),
                          columns=list("ABCDE"))
    prices.iloc[120:, 0] *= 0.5
    prices.iloc[119, 0] = np.nan                 # the gap day, then the halved price
    ds = from_prices_frame(prices, source="gap200")
    targets = np.full((1, 1, 5), 0.2)
    trade = np.zeros((1, 200), dtype=bool)
    trade[0, 0] = True
    paths = simulate_paths(clean_returns(ds.returns), 0, targets, np.zeros(200, dtype=int),
                           trade=trade, cost_rate=0.0)
    p = prices.to_numpy()
    expected = float(np.mean(p[-1] / p[1]))      # bought at the close of row 1 (returns row 0)
    assert np.prod(1 + paths.net_returns[0]) == pytest.approx(expected, rel=1e-12)
    # The old pct_change(fill_method=None) dropped the halving (0% on the day after the gap):
    # asset 0's leg ends at 0.2 (p118 / p1) (p_end / p120) instead of 0.2 p_end / p1.
    old = prices.pct_change(fill_method=None).iloc[1:].to_numpy()
    old_paths = simulate_paths(np.nan_to_num(old), 0, targets, np.zeros(200, dtype=int),
                               trade=trade, cost_rate=0.0)
    old_final = np.prod(1 + old_paths.net_returns[0])
    assert old_final - expected == pytest.approx(
        0.2 * p[-1, 0] / p[1, 0] * (p[118, 0] / p[120, 0] - 1), rel=1e-9)
    assert (round(expected, 4), round(float(old_final), 4)) == (0.9417, 1.0576)


# ----------------------------------------------------------------------------- 6. lengths
def test_synthetic_shape_means_what_it_says_and_days_trims_from_the_end():
    ds = load_dataset("synthetic:300x7")
    assert ds.returns.shape == (300, 7)
    trimmed = load_dataset("synthetic:300x7", days=120)
    assert trimmed.returns.shape == (120, 7)
    np.testing.assert_array_equal(trimmed.returns, ds.returns[-120:])   # trimmed, not regenerated
    np.testing.assert_array_equal(make_synthetic(300, 7).returns, ds.returns)
    assert load_dataset("sp500").n_days == 500 and load_dataset("sp500", days=0).n_days > 8000


# ----------------------------------------------------------------------------- 3. status rule
@pytest.fixture(scope="module")
def window0(sp500):
    from tournament.config import load_config
    from tournament.windows import make_windows
    cfg = load_config()
    return cfg, make_windows(sp500.n_days, cfg.windows)


def _solve_capped(sp500, window0, monkeypatch, engine, profile, max_iter):
    """Solve window 0 of `all/engine/profile` with Clarabel capped at `max_iter` iterations
    (a real solver option through the engine's own options dict; no status is mocked)."""
    import tournament.engines.custom as custom
    import tournament.engines.cvxportfolio_engine as cvxp
    import tournament.engines.skfolio_engine as skf
    from tournament.cube import Cell
    from tournament.stage1 import solve_cells
    module, name = {"custom": (custom, "SOLVER_OPTIONS"), "skfolio": (skf, "SOLVER_PARAMS"),
                    "cvxportfolio": (cvxp, "SOLVER_PARAMS")}[engine]
    monkeypatch.setitem(getattr(module, name), "max_iter", max_iter)
    cfg, windows = window0
    return solve_cells(sp500.returns, windows, [Cell(0, "all", engine, profile)], cfg)[0]


@pytest.mark.parametrize("engine,profile,max_iter,status,accepted", [
    # rejected: Clarabel calls it AlmostSolved, the residual says the weights are far off
    ("custom", "risk_parity", 8, "optimal_inaccurate", False),       # residual 4.25e-3
    ("skfolio", "min_variance", 10, "optimal_inaccurate", False),    # 1.50e-3
    ("cvxportfolio", "min_variance", 5, "optimal_inaccurate", False),  # 3.69e-3
    ("skfolio", "max_sharpe", 5, "user_limit", False),               # 2.36e-1
    # accepted: inaccurate status, but weights valid and residual under the tolerance
    ("custom", "risk_parity", 12, "optimal_inaccurate", True),       # 1.46e-4 <= 5e-4
    ("custom", "max_sharpe", 6, "optimal_inaccurate", True),         # 4.1e-8 <= 1e-5
    ("skfolio", "min_variance", 14, "optimal_inaccurate", True),     # 2.0e-6 <= 1e-5
    ("skfolio", "risk_parity", 12, "optimal_inaccurate", True),      # 8.7e-5 <= 5e-4
])
def test_one_status_rule_for_every_engine(sp500, window0, monkeypatch, engine, profile,
                                          max_iter, status, accepted):
    from tournament.acceptance import RESIDUAL_TOL
    r = _solve_capped(sp500, window0, monkeypatch, engine, profile, max_iter)
    assert r.solver_status == status
    assert np.isfinite(r.residual)
    assert (r.residual <= RESIDUAL_TOL[profile]) == accepted
    if accepted:
        assert r.status == "ok" and r.weights.sum() == pytest.approx(1.0, abs=1e-12)
    else:
        assert r.status == "failed" and "RejectedSolve" in r.reason and status in r.reason


def test_optimal_cells_record_their_status_and_no_residual(sp500, window0):
    from tournament.cube import Cell
    from tournament.stage1 import solve_cells
    cfg, windows = window0
    cells = [Cell(0, "all", e, p) for e, p in (("custom", "min_variance"),
                                               ("skfolio", "max_sharpe"),
                                               ("cvxportfolio", "min_variance"),
                                               ("skfolio", "hrp"))]
    out = solve_cells(sp500.returns, windows, cells, cfg)
    assert [r.solver_status for r in out] == ["optimal", "optimal", "optimal", ""]
    assert all(r.status == "ok" and np.isnan(r.residual) for r in out)


# ----------------------------------------------------------------------------- 6. metrics
def test_metric_periods_buy_in_is_day_0_and_statistics_use_held_days():
    import math
    from tournament.metrics import compute_metrics
    held = np.r_[np.full(126, 0.01), np.full(126, -0.005)]       # T = 252 held days
    r = np.r_[-0.0006, held]                                     # day 0: buy-in cost only
    to = np.r_[0.5, np.zeros(252)]
    costs = np.r_[0.0006, np.zeros(252)]
    m = compute_metrics(r, to, costs, window_starts=np.array([0]))
    final = 0.9994 * 1.01 ** 126 * 0.995 ** 126
    assert m["final_equity"] == pytest.approx(final, rel=1e-13)
    assert m["total_return"] == pytest.approx(final - 1, rel=1e-12)
    assert m["cagr"] == pytest.approx(final - 1, rel=1e-12)        # 252 held days = 1 year
    assert m["costs"] == pytest.approx(0.0006, rel=1e-15)
    sd = 0.0075 * math.sqrt(252 / 251)                             # two-point, ddof=1
    assert m["volatility"] == pytest.approx(sd * math.sqrt(252), rel=1e-12)
    assert m["sharpe"] == pytest.approx(0.0025 / sd * math.sqrt(252), rel=1e-12)
    downside = math.sqrt(126 * 0.005 ** 2 / 251)
    assert m["sortino"] == pytest.approx(0.0025 / downside * math.sqrt(252), rel=1e-12)
    assert m["var_95"] == pytest.approx(0.005) and m["cvar_95"] == pytest.approx(0.005)
    assert m["win_rate"] == 0.5 and m["n_days"] == 253


def test_benchmark_is_bought_once_and_held(sp500):
    from tournament.config import load_config
    from tournament.stage1 import run_stage1
    from tournament.stage2 import simulate_benchmark
    cfg = load_config(engines=["custom"], selections=["all"], profiles=["equal_weight"])
    cube = run_stage1(sp500, cfg)
    for mode in ("window", "daily", "tolerance"):
        sim = simulate_benchmark(sp500, cube, cfg, mode)
        assert sim.turnover[0, 0] == pytest.approx(0.5)            # buy-in from cash
        assert (sim.turnover[0, 1:] == 0).all() and (sim.costs[0, 1:] == 0).all()
        # held: 1.0 of the index and the buy-in cost owed in cash, so equity = P_t / P_0 - cost
        start = sp500.dates.get_loc(sim.dates[0])
        bench = sp500.benchmark[start + 1:start + sim.dates.size]
        np.testing.assert_allclose(np.cumprod(1 + sim.net_returns[0])[1:],
                                   np.cumprod(1 + bench) - cfg.costs.rate, rtol=1e-12)
        assert sim.net_returns[0, 0] == pytest.approx(-cfg.costs.rate, rel=1e-12)


# ----------------------------------------------------------------------------- 4. DSR trials
def test_dsr_trial_count_and_value_identical_across_fidelity_tiers(sp500):
    from tournament.config import load_config
    from tournament.overfitting import add_overfitting_columns
    from tournament.pipeline import run_tournament
    grid = dict(engines=["custom"], selections=["all", "momentum"],
                profiles=["equal_weight", "min_variance", "max_sharpe"],
                rebalances=["window", "daily"])
    boards = {}
    for tier in ("low", "medium"):
        run = run_tournament(sp500, load_config(fidelity=tier, **grid))
        out = add_overfitting_columns(run.results, run.returns)
        boards[tier] = out[(out.status == "ok") & (out.selection != "benchmark")]
    keys = ["selection", "engine", "profile", "rebalance"]
    # 2 selections x 3 profiles + the raw-pool baseline = 7 strategies, x 2 rebalance modes
    assert (boards["low"]["n_trials"] == 14).all() and (boards["medium"]["n_trials"] == 14).all()
    assert (boards["medium"]["stats_simulator"] == "custom").all()
    low = boards["low"].set_index(keys)[["dsr", "dsr_effective", "n_effective_trials"]]
    for sim, rows in boards["medium"].groupby("simulator"):
        med = rows.set_index(keys)[["dsr", "dsr_effective", "n_effective_trials"]]
        pd.testing.assert_frame_equal(med.loc[low.index], low, check_exact=True)


# ----------------------------------------------------------------------------- 2. policy
def _bear_dataset():
    """4 assets, 200 days: a rally, a 60-day crash in which every asset falls, a recovery."""
    from tournament.data import from_returns_frame
    rng = np.random.default_rng(11)
    drift = np.r_[np.full(80, 0.002), np.full(60, -0.006), np.full(60, 0.002)]
    r = drift[:, None] + rng.normal(0, 0.01, (200, 4))
    frame = pd.DataFrame(r, index=pd.bdate_range("2020-01-01", periods=200),
                         columns=list("ABCD"))
    return from_returns_frame(frame, source="bear")


def _policy_cube(policy):
    from tournament.config import load_config
    from tournament.stage1 import run_stage1
    ds = _bear_dataset()
    cfg = load_config(engines=["custom"], selections=["all"], profiles=["max_sharpe"],
                      train=40, test=20, step=20, on_infeasible=policy)
    return ds, cfg, run_stage1(ds, cfg)


def test_bear_window_under_each_policy():
    from tournament.windows import make_windows
    ds, cfg, hold = _policy_cube("hold")
    windows = make_windows(ds.n_days, cfg.windows)
    # By hand: max_sharpe is infeasible where no asset's training mean is above 0.
    infeasible = [w.index for w in windows if ds.returns[w.train_rows].mean(axis=0).max() <= 0]
    assert infeasible == [4, 5, 6]
    key = ("all", "custom", "max_sharpe")
    cells = hold.cells[hold.cells.profile == "max_sharpe"].reset_index(drop=True)
    assert list(cells.index[cells.status == "fallback"]) == infeasible
    assert (cells.loc[infeasible, "policy"] == "hold").all()
    assert cells.loc[infeasible, "reason"].str.contains("max_sharpe infeasible").all()
    sched = hold.schedule(key)
    np.testing.assert_array_equal(sched[4], sched[3])        # previous window's target
    np.testing.assert_array_equal(sched[6], sched[3])        # ... kept through the run
    st = hold.strategies().set_index(["selection", "engine", "profile"]).loc[key]
    assert st.status == "ok" and st.fallback_windows == 3

    _, _, cash = _policy_cube("cash")
    csched = cash.schedule(key)
    assert (csched[4:7] == 0).all()
    np.testing.assert_array_equal(csched[:4], sched[:4])
    # Simulated: from the move to cash until the next trade the strategy earns exactly 0.
    from tournament.stage2 import run_stage2
    sim = next(s for s in run_stage2(ds, cash, cfg) if s.rebalance == "window"
               and key in s.keys)
    s = sim.keys.index(key)
    start = windows[0].rebalance
    days = np.arange(windows[4].rebalance + 1, windows[7].rebalance) - start
    assert (sim.net_returns[s, days] == 0).all()

    _, _, fail = _policy_cube("fail")
    st = fail.strategies().set_index(["selection", "engine", "profile"]).loc[key]
    assert st.status == "failed" and "3/9 windows not ok" in st.reason


def test_hold_in_a_strategys_first_window_is_cash():
    from tournament.cube import CellResult, Cell, FAILED, OK
    from tournament.stage1 import apply_infeasible_policy
    w = np.array([0.5, 0.5])
    res = [CellResult(Cell(0, "all", "custom", "max_sharpe"), FAILED, reason="x", weights=np.zeros(2)),
           CellResult(Cell(1, "all", "custom", "max_sharpe"), OK, weights=w),
           CellResult(Cell(2, "all", "custom", "max_sharpe"), FAILED, reason="y", weights=np.zeros(2))]
    out = apply_infeasible_policy(res, "hold")
    assert [r.status for r in out] == ["fallback", "ok", "fallback"]
    assert out[0].policy == "hold (first window: cash)" and (out[0].weights == 0).all()
    np.testing.assert_array_equal(out[2].weights, w)
    assert [r.status for r in apply_infeasible_policy(res, "fail")] == ["failed", "ok", "failed"]


# ----------------------------------------------------------------------------- 5. selection
def test_constant_column_under_cluster_is_ineligible_and_never_crashes(sp500):
    from tournament.config import load_config
    from tournament.cube import Cell
    from tournament.stage1 import solve_cells
    from tournament.windows import make_windows
    frame = sp500.frame()
    frame.iloc[:, 3] = 0.0                     # a stale, forward-filled asset
    returns = np.ascontiguousarray(frame.to_numpy())
    cfg = load_config(top_k=5)
    windows = make_windows(returns.shape[0], cfg.windows)
    out = solve_cells(returns, windows, [Cell(0, "cluster", "custom", "equal_weight"),
                                         Cell(0, "cluster", "custom", "min_variance")], cfg)
    assert [r.status for r in out] == ["ok", "ok"]
    assert all(r.weights[3] == 0 and (r.weights > 0).sum() == 5 for r in out)
    # Every column constant: the selection leaves nothing, the cells fail (never the chunk).
    flat = np.zeros_like(returns)
    out = solve_cells(flat, windows, [Cell(0, "cluster", "custom", "equal_weight")], cfg)
    assert out[0].status == "failed" and "no eligible assets" in out[0].reason
