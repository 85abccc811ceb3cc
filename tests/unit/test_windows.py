"""tournament.windows: the walk-forward grid, counted by hand."""
from __future__ import annotations

import pandas as pd
import pytest

from tournament.config import WindowSpec
from tournament.data import make_synthetic
from tournament.errors import DataError
from tournament.windows import first_row, make_windows, windows_for

SPEC = WindowSpec(train=180, test=40, step=20)


def test_windows_roll_through_the_newest_day():
    # 399 rows, 180/40/20: a window opens on every rebalance day in the data, rows 179, 199,
    # ..., 379 (179 + 20k <= 398 -> k <= 10): 11 windows. Complete ones up to row 339; then
    # the test slices run to the end of the data: 359 -> 39 rows, 379 -> 19 rows.
    windows = make_windows(399, SPEC)
    assert [w.rebalance for w in windows] == [179 + 20 * k for k in range(11)]
    assert [w.test for w in windows] == [40] * 9 + [39, 19]
    first, last = windows[0], windows[-1]
    assert (first.train_rows.start, first.train_rows.stop) == (0, 180)
    assert (first.test_rows.start, first.test_rows.stop) == (180, 220)
    assert last.test_end == 398                       # the newest day is simulated
    # Point in time: a window's training slice ends on its rebalance day, the test starts after.
    assert all(w.train_rows.stop - 1 == w.rebalance == w.test_rows.start - 1 for w in windows)


def test_a_rebalance_on_the_newest_day_opens_an_empty_window():
    windows = make_windows(380, SPEC)                 # last row 379 = a rebalance day
    assert windows[-1].rebalance == 379 and windows[-1].test == 0
    assert windows[-1].test_end == 379


def test_appending_days_only_adds_windows():
    short, longer = make_windows(399, SPEC), make_windows(420, SPEC)
    assert [w.rebalance for w in longer[:len(short)]] == [w.rebalance for w in short]
    assert [w.rebalance for w in longer[len(short):]] == [399, 419]


def test_start_anchors_the_grid_on_a_date():
    data = make_synthetic(n_days=400, n_assets=3, seed=1)
    start = str(data.dates[30].date())
    assert first_row(data.dates, start) == 30
    windows = windows_for(data, WindowSpec(start=start, train=180, test=40, step=20))
    assert windows[0].train_rows == slice(30, 210) and windows[0].rebalance == 209
    # A start that is no trading day means the next trading day.
    gap = next(i for i in range(1, 100) if (data.dates[i] - data.dates[i - 1]).days > 1)
    day_before = str((data.dates[gap] - pd.Timedelta(days=1)).date())   # a weekend day
    assert first_row(data.dates, day_before) == gap
    with pytest.raises(DataError, match="after the last date"):
        first_row(data.dates, "2100-01-01")


def test_too_little_data_for_one_training_window():
    assert len(make_windows(180, SPEC)) == 1          # rebalance on the last row, empty test
    with pytest.raises(DataError, match="179 rows is fewer than one training window"):
        make_windows(179, SPEC)


def test_start_and_days_are_one_or_the_other():
    from flows.inputs import anchored_days
    from tournament.config import load_config
    from tournament.errors import ConfigError
    anchored = load_config(start="2020-06-01")
    assert anchored_days(anchored, None) == 0          # the whole history: the grid stays put
    assert anchored_days(load_config(), 300) == 300
    with pytest.raises(ConfigError, match=r"either --days 300 .* or \[windows\] start / "
                                          r"--start 2020-06-01"):
        anchored_days(anchored, 300)
