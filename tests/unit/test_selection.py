"""tournament.selection on hand-made training slices whose answer is known by construction."""
from __future__ import annotations

import numpy as np
import pytest

from tournament.errors import ConfigError
from tournament.selection import eligible, select


@pytest.fixture(scope="module")
def train():
    rng = np.random.default_rng(3)
    # 6 assets, 120 days; drifts and volatilities chosen so the orderings are unambiguous.
    drift = np.array([0.002, -0.001, 0.0005, 0.003, 0.0, 0.001])
    vol = np.array([0.02, 0.005, 0.01, 0.03, 0.002, 0.015])
    return drift + vol * rng.standard_normal((120, 6))


def test_eligible_drops_gaps_and_constant_columns(train):
    x = train.copy()
    x[50, 1] = np.nan                 # a gap inside the slice
    x[:, 4] = 0.0                     # a stale price: constant (zero) returns
    assert eligible(x).tolist() == [True, False, True, True, False, True]
    assert select("all", x, top_k=2).tolist() == [True, False, True, True, False, True]


def test_momentum_keeps_the_top_k_compounded_returns(train):
    growth = np.prod(1 + train, axis=0)
    expected = set(np.argsort(-growth)[:3])
    assert set(np.flatnonzero(select("momentum", train, top_k=3))) == expected


def test_low_vol_keeps_the_k_lowest_volatilities(train):
    expected = set(np.argsort(train.std(axis=0))[:2])
    assert set(np.flatnonzero(select("low_vol", train, top_k=2))) == expected == {1, 4}


def test_ties_are_broken_by_asset_order():
    x = np.tile(np.array([[0.01, 0.01, 0.01, 0.02]]), (30, 1))
    x[::2] *= -1                       # same volatility for 0-2, not constant
    assert np.flatnonzero(select("low_vol", x, top_k=2)).tolist() == [0, 1]


def test_an_ineligible_asset_is_never_selected_even_if_it_scores_best(train):
    x = train.copy()
    x[10, 3] = np.nan                 # asset 3 has the best drift, but a gap
    assert not select("momentum", x, top_k=3)[3]


def test_cluster_keeps_the_best_sharpe_of_each_correlated_group():
    rng = np.random.default_rng(11)
    base = rng.standard_normal((200, 3)) * 0.01
    # Three groups of two near-identical assets; inside each group the second has the higher
    # mean at the same volatility (the better Sharpe).
    cols = []
    for g in range(3):
        noise = rng.standard_normal(200) * 1e-4
        cols += [base[:, g] + noise, base[:, g] + noise + 0.001]
    x = np.column_stack(cols)
    assert np.flatnonzero(select("cluster", x, top_k=3)).tolist() == [1, 3, 5]


def test_cluster_survives_a_constant_column():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((80, 8)) * 0.01
    x[:, 2] = 0.0                      # would make the correlation NaN if it were kept
    mask = select("cluster", x, top_k=3)
    assert mask.sum() == 3 and not mask[2]


def test_unknown_mode_lists_the_valid_ones(train):
    with pytest.raises(ConfigError, match="momentum") as err:
        select("momentom", train, top_k=3)
    assert "cluster" in str(err.value) and "low_vol" in str(err.value)
