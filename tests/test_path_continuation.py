"""Continuing stored paths (tournament.simulators.resume) gives the full simulation's numbers.

A nightly run continues each strategy's vectorbt path from the book stored by the night
before instead of simulating it again from the first rebalance day. The oracle is the full
simulation of the longer data by the same simulator (`simulate_pair`), on real data (the
bundled S&P 500 sample, 500 days x 20 stocks, anchored windows 252/21/21 as configured by
default, custom engine, 3 profiles x 2 selections + baseline), for each rebalance mode:
* appending 30 days (a new rebalance day inside them), 1 day (no new window) and 1 day that
  is itself a rebalance day;
* chaining: continuing a continued path;
* a corrected historical price, other costs, or changed targets: nothing is continued.
Measured: continued vs full differ by <= ~1e-16 in daily net returns (vectorbt rebuilds its
cash by sums when it re-creates the book); asserted <= 1e-12 absolute.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tournament.config import load_config
from tournament.cube import OK
from tournament.data import load_dataset
from tournament.stage1 import run_stage1
from tournament.stage2 import simulate_pair, simulate_pair_continuing

pytestmark = pytest.mark.timeout(600)
MODES = ("window", "daily", "tolerance")


def head(ds, n):
    return dataclasses.replace(ds, returns=ds.returns[:n].copy(), dates=ds.dates[:n],
                               benchmark=None if ds.benchmark is None else ds.benchmark[:n])


@pytest.fixture(scope="module")
def grid():
    ds = load_dataset("sp500")
    config = load_config(engines=["custom"], selections=["all", "momentum"],
                         profiles=["equal_weight", "min_variance", "max_sharpe"])
    cubes = {n: run_stage1(head(ds, n), config) for n in (440, 470, 498, 499, 500)}
    st = cubes[500].strategies()
    keys = [tuple(r) for r in st.loc[st["status"] == OK, ["selection", "engine", "profile"]]
            .itertuples(index=False)]
    assert len(keys) >= 6
    return ds, config, cubes, keys


def simulate(ds, n, config, cube, keys, mode, previous=None):
    data = head(ds, n)
    return simulate_pair_continuing(data.returns, data.dates, cube, keys, rebalance=mode,
                                    simulator="vectorbt", config=config,
                                    previous=previous or [None] * len(keys))


def full(ds, n, config, cube, keys, mode):
    data = head(ds, n)
    return simulate_pair(data.returns, data.dates, cube, keys, rebalance=mode,
                         simulator="vectorbt", config=config)


def assert_same(got, want):
    assert got.status == want.status == [OK] * len(want.keys)
    assert got.net_returns.shape == want.net_returns.shape
    for name in ("net_returns", "turnover", "costs"):
        np.testing.assert_allclose(getattr(got, name), getattr(want, name), rtol=0, atol=1e-12,
                                   err_msg=name)
    np.testing.assert_allclose(got.equity[:, -1], want.equity[:, -1], rtol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_a_continued_path_equals_the_full_simulation(grid, mode):
    ds, config, cubes, keys = grid
    # night 0: 440 days, nothing stored -> every path simulated in full, ends kept
    first, ends, continued = simulate(ds, 440, config, cubes[440], keys, mode)
    assert continued == 0 and all(e is not None for e in ends)
    assert_same(first, full(ds, 440, config, cubes[440], keys, mode))
    assert all(e.last_date == ds.dates[439] for e in ends)
    # night 1: +30 days, a new rebalance day among them (the cube has one more window)
    assert len(cubes[470].window_starts) > len(cubes[440].window_starts)
    second, ends2, continued = simulate(ds, 470, config, cubes[470], keys, mode, ends)
    assert continued == len(keys)
    assert_same(second, full(ds, 470, config, cubes[470], keys, mode))
    # night 2: +28 days, continuing a continued path; night 3: +1 day, no new window;
    # night 4: +1 day that is a rebalance day (its window opens on the path's last day)
    ends_n = ends2
    for n, new_window in ((498, True), (499, False), (500, True)):
        before = max(k for k in cubes if k < n)
        assert (len(cubes[n].window_starts) > len(cubes[before].window_starts)) == new_window
        got, ends_n, continued = simulate(ds, n, config, cubes[n], keys, mode, ends_n)
        assert continued == len(keys)
        assert_same(got, full(ds, n, config, cubes[n], keys, mode))
    # the stored days are really reused, not recomputed: the day before night 1's end is
    # night 0's numbers, bit for bit
    np.testing.assert_array_equal(second.net_returns[:, :first.net_returns.shape[1] - 1],
                                  first.net_returns[:, :-1])


def test_nothing_is_continued_when_what_the_prefix_read_changed(grid):
    ds, config, cubes, keys = grid
    mode = "daily"
    _, ends, _ = simulate(ds, 470, config, cubes[470], keys, mode)
    # a corrected price inside the stored prefix (after the first rebalance day)
    returns = ds.returns.copy()
    returns[400, 3] += 0.01
    corrected = dataclasses.replace(ds, returns=returns)
    got, _, continued = simulate(corrected, 500, config, cubes[500], keys, mode, ends)
    assert continued == 0
    assert_same(got, full(corrected, 500, config, cubes[500], keys, mode))
    # other costs
    dearer = load_config(engines=["custom"], selections=["all", "momentum"],
                         profiles=["equal_weight", "min_variance", "max_sharpe"],
                         commission_bps=9.0)
    got, _, continued = simulate(ds, 500, dearer, cubes[500], keys, mode, ends)
    assert continued == 0
    assert_same(got, full(ds, 500, dearer, cubes[500], keys, mode))
    # another strategy's end continues this one only when their targets are the same
    swapped = ends[1:] + ends[:1]
    got, _, continued = simulate(ds, 500, config, cubes[500], keys, mode, swapped)
    twins = sum(np.array_equal(cubes[470].schedule(keys[s]),
                               cubes[470].schedule(keys[(s + 1) % len(keys)]))
                for s in range(len(keys)))
    assert continued == twins < len(keys)
    assert_same(got, full(ds, 500, config, cubes[500], keys, mode))
    # the custom kernel is not continued (it is cheap): every path in full, no ends
    data = head(ds, 500)
    got, ends_custom, continued = simulate_pair_continuing(
        data.returns, data.dates, cubes[500], keys, rebalance=mode, simulator="custom",
        config=config, previous=ends)
    assert continued == 0 and ends_custom == [None] * len(keys)


# ----------------------------------------------------------------- through the flow
@pytest.mark.ray
def test_a_nightly_flow_run_continues_vectorbt_paths_and_matches_a_cold_run(ray_session,
                                                                             tmp_path):
    """The tournament flow, medium fidelity, on a prices file that grows by 25 days (one new
    window) between two runs on one result storage: the second run simulates every vectorbt
    path by continuing it (manifest `continued`), in one task per mode, the custom paths in
    full, and its results equal a cold run's on the longer file (separate storage)."""
    import importlib.util
    import json
    import shutil

    import pandas as pd

    from flows.tournament_flow import tournament
    from tests.conftest import REPO
    spec = importlib.util.spec_from_file_location("grow_prices",
                                                  REPO / "scripts" / "grow_prices.py")
    grow_prices = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(grow_prices)
    prices = tmp_path / "prices.parquet"
    grow_prices.grow(prices, init=280)
    start = str(pd.read_parquet(prices, columns=["date"])["date"].iloc[0].date())
    grid = {"engines": ["custom"], "selections": ["all", "momentum"],
            "profiles": ["equal_weight", "min_variance"], "rebalances": ["window", "daily"],
            "train": 180, "test": 40, "step": 20, "start": start}

    def run(data, name, storage):
        tournament(fidelity="medium", data=str(data), out=str(tmp_path / name),
                   result_storage=str(tmp_path / storage), overrides=grid)
        out = tmp_path / name
        return (json.loads((out / "manifest.json").read_text())["cache"]["stage2"],
                pd.read_parquet(out / "results.parquet"))

    run(prices, "night0", "store")
    grow_prices.grow(prices, append=25)
    longer = tmp_path / "longer.parquet"
    shutil.copy(prices, longer)
    night, got = run(prices, "night1", "store")
    cold, want = run(longer, "cold", "cold-store")
    n_vbt = int(((want.simulator == "vectorbt") & (want.status == OK)).sum())
    assert n_vbt == 2 * 5         # 2 modes x (2 selections x 2 profiles + the baseline)
    assert night["continued"] == n_vbt and night["computed"] == 2 * n_vbt
    assert cold["continued"] == 0 and cold["computed"] == 2 * n_vbt
    # Tasks: custom one per mode; vectorbt one per mode and selection when cold, one per
    # mode on the night (every path continues: flows.plan.continuing_pairs).
    assert cold["tasks"] == 2 + 2 * 2 and night["tasks"] == 2 + 2
    metrics = [c for c in want.columns if want[c].dtype.kind == "f" and c != "sim_seconds"]
    pd.testing.assert_frame_equal(got[metrics], want[metrics], rtol=1e-9, atol=1e-12)
    pd.testing.assert_frame_equal(got.drop(columns=metrics + ["sim_seconds"]),
                                  want.drop(columns=metrics + ["sim_seconds"]))
