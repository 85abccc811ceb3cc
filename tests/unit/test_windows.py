"""tournament.windows: the walk-forward grid, counted by hand."""
from __future__ import annotations

import pytest

from tournament.config import WindowSpec
from tournament.errors import DataError
from tournament.windows import make_windows


def test_windows_are_rolling_and_complete():
    # 399 rows, 180/40/20: rebalances at rows 179, 199, ..., the last whose 40 test rows fit
    # (rebalance + 40 <= 398 -> 179 + 20k <= 358 -> k <= 8.95): 9 windows, the last at 339.
    windows = make_windows(399, WindowSpec(train=180, test=40, step=20))
    assert [w.rebalance for w in windows] == [179 + 20 * k for k in range(9)]
    assert [w.index for w in windows] == list(range(9))
    first, last = windows[0], windows[-1]
    assert (first.train_rows.start, first.train_rows.stop) == (0, 180)
    assert (first.test_rows.start, first.test_rows.stop) == (180, 220)
    assert last.rebalance == 339 and last.test_end == 379   # rows 380-398 are not tested
    # Point in time: a window's training slice ends on its rebalance day, the test starts after.
    assert all(w.train_rows.stop - 1 == w.rebalance == w.test_rows.start - 1 for w in windows)


def test_exactly_one_window_and_too_little_data():
    assert len(make_windows(220, WindowSpec(train=180, test=40, step=20))) == 1
    with pytest.raises(DataError, match="219 rows is fewer than one window"):
        make_windows(219, WindowSpec(train=180, test=40, step=20))
